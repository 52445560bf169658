"""A "kernel" that starts fit(num_processes=2) and is then SIGKILLed by tests/test_distributed_notebook.py:
its workers must not outlive it. Each worker writes its pid to OUT_DIR/worker<rank>.pid."""
import os
import sys
import time

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scenarios as sc  # noqa: E402

import torchfit  # noqa: E402
from torchfit import distributed  # noqa: E402


def main(out: str) -> None:
    torch.set_num_threads(1)

    def begin(logs):
        with open(os.path.join(out, f"worker{distributed.rank()}.pid"), "w") as f:
            f.write(str(os.getpid()))

    model = sc.compiled(sc.mlp(seed=0))
    model.fit(1000, DataLoader(sc.data(64, 1), batch_size=8), verbose=0, num_processes=2,
              callbacks=[torchfit.LambdaCallback(on_train_begin=begin,
                                                 on_train_batch_end=lambda batch, logs: time.sleep(0.05))])


if __name__ == "__main__":
    main(sys.argv[1])
