"""torchfit in one minute: a small CNN on scikit-learn's 8x8 digits (bundled, no download).

    python examples/demo.py --out demo_output        # what `make demo` runs

Prints the layer table, the per-step dicts and epoch tables of fit, the evaluation
and a few predictions, then writes OUT/history.csv and OUT/history.png.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchfit


def make_net() -> nn.Module:
    # A classic two-conv MNIST CNN, kernels and padding sized for 8x8 images instead of 28x28.
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3, padding=1),   # 32 x 8 x 8
        nn.MaxPool2d(2),                              # 32 x 4 x 4
        nn.Conv2d(32, 64, kernel_size=3, padding=1),  # 64 x 4 x 4
        nn.MaxPool2d(2),                              # 64 x 2 x 2
        nn.Dropout2d(0.1),
        nn.AdaptiveMaxPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def digits_loaders(batch_size: int = 32, seed: int = 0):
    digits = load_digits()
    X = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # N x 1 x 8 x 8, in [0, 1]
    y = torch.tensor(digits.target, dtype=torch.long)
    train_rows, val_rows = torchfit.inputs.split_indices(len(X), 0.2, seed=seed)
    ds_train = TensorDataset(X[train_rows], y[train_rows])
    ds_val = TensorDataset(X[val_rows], y[val_rows])
    dl_train = DataLoader(ds_train, batch_size=batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(seed))
    dl_val = DataLoader(ds_val, batch_size=batch_size)
    return dl_train, dl_val


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="torchfit demo: a CNN on scikit-learn's digits")
    parser.add_argument("--out", default="demo_output", help="folder for history.csv and history.png")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: this net is too small to gain from more, "
                             "and on a busy machine extra threads spin and cost several times the run time)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    dl_train, dl_val = digits_loaders()

    model = torchfit.Model(make_net())
    model.summary(input_shape=(1, 8, 8))
    model.compile(loss=nn.CrossEntropyLoss(),
                  optimizer=torch.optim.Adam(model.parameters(), lr=3e-3),
                  metrics=["accuracy"], device="cpu")
    history = model.fit(args.epochs, dl_train, dl_val, log_step_freq=15)

    print("\nevaluate:", model.evaluate(dl_val))  # exact floats, shown through torchfit's formatter
    x_val, y_val = next(iter(dl_val))
    predicted = model.predict(x_val[:10]).argmax(dim=1)
    print("predict: ", predicted.tolist())
    print("truth:   ", y_val[:10].tolist())

    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "history.csv")
    png_path = os.path.join(args.out, "history.png")
    history.to_csv(csv_path, index=False)
    model.plot_history().savefig(png_path, dpi=110)
    print(f"\nwrote {csv_path} and {png_path} ({time.perf_counter() - start:.1f} s in all)")


if __name__ == "__main__":
    main()
