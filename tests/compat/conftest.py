"""Offline stand-ins for the data the ported tutorials download, with the same shapes and dtypes.

Each maker is small (the ports run in seconds on 2 CPU cores) and seeded. Where a tutorial reads
files (CSV, TSV, an image folder) the maker writes files of the same layout under ``tmp_path``,
so the tutorial's own reading code runs unchanged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits


def _digits_28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits upsampled to MNIST's 28x28, as uint8 0..255 like MNIST."""
    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    big = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False).squeeze(1)
    return (big.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), d.target.astype(np.uint8)


@pytest.fixture
def mnist_arrays():
    """What ``keras.datasets.mnist.load_data()`` returns, smaller: uint8 (N, 28, 28) and uint8 labels."""
    x, y = _digits_28()
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


@pytest.fixture
def mnist_datasets():
    """Stand-ins for ``torchvision.datasets.MNIST(train=True/False, transform=ToTensor())``:
    items are a float (1, 28, 28) image in [0, 1] and an int64 label."""
    x, y = _digits_28()
    images = torch.tensor(x, dtype=torch.float32).unsqueeze(1) / 255.0
    labels = torch.tensor(y, dtype=torch.long)
    train = torch.utils.data.TensorDataset(images[:256], labels[:256])
    valid = torch.utils.data.TensorDataset(images[1400:1528], labels[1400:1528])
    return train, valid


@pytest.fixture
def titanic_dir(tmp_path: Path) -> Path:
    """``data/titanic/train.csv`` and ``test.csv`` with Kaggle's columns, values and missing cells.

    712 + 179 rows, as in the chapter; survival depends on sex, class and age so a net can learn it.
    """
    rng = np.random.default_rng(0)

    def frame(n: int, start: int) -> pd.DataFrame:
        pclass = rng.choice([1, 2, 3], size=n, p=[0.25, 0.2, 0.55])
        sex = rng.choice(["male", "female"], size=n, p=[0.65, 0.35])
        age = rng.uniform(1, 70, size=n).round(1)
        age[rng.random(n) < 0.2] = np.nan
        logit = 1.5 * (sex == "female") - 0.8 * (pclass - 2) - 0.02 * np.nan_to_num(age, nan=30) + 0.3
        survived = (rng.random(n) < 1 / (1 + np.exp(-2 * logit))).astype(int)
        cabin = np.where(rng.random(n) < 0.75, None, [f"C{k}" for k in rng.integers(1, 150, size=n)])
        embarked = rng.choice(["S", "C", "Q", None], size=n, p=[0.7, 0.18, 0.1, 0.02])
        return pd.DataFrame({
            "PassengerId": np.arange(start, start + n), "Survived": survived, "Pclass": pclass,
            "Name": [f"Passenger {k}" for k in range(start, start + n)], "Sex": sex, "Age": age,
            "SibSp": rng.integers(0, 4, size=n), "Parch": rng.integers(0, 3, size=n),
            "Ticket": [f"T{k}" for k in rng.integers(1000, 9999, size=n)],
            "Fare": rng.gamma(2.0, 15.0, size=n).round(4), "Cabin": cabin, "Embarked": embarked,
        })

    folder = tmp_path / "data" / "titanic"
    folder.mkdir(parents=True)
    frame(712, 1).to_csv(folder / "train.csv", index=False)
    frame(179, 713).to_csv(folder / "test.csv", index=False)
    return tmp_path / "data"


@pytest.fixture
def cifar2_dir(tmp_path: Path) -> Path:
    """``data/cifar2/{train,test}/{0_airplane,1_automobile}/*.png``: 32x32 RGB images whose class
    shows in the colour balance (blue-ish planes, red-ish cars) plus noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "data" / "cifar2"
    for split, n in (("train", 60), ("test", 20)):
        for label, name in enumerate(("0_airplane", "1_automobile")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(n):
                img = rng.integers(0, 120, size=(32, 32, 3))
                img[..., 2 - 2 * label] += 120  # blue for planes, red for cars
                Image.fromarray(img.astype(np.uint8)).save(folder / f"{k}.png")
    return tmp_path / "data"


@pytest.fixture
def covid_tsv(tmp_path: Path) -> Path:
    """``data/covid-19.csv`` (tab-separated): ``date`` and the cumulative ``confirmed_num``,
    ``cured_num``, ``dead_num`` of 46 days, as in the chapter."""
    days = pd.date_range("2020-01-24", periods=47).strftime("%Y-%m-%d")
    t = np.arange(47)
    confirmed = (80000 / (1 + np.exp(-(t - 18) / 4))).round()
    cured = (60000 / (1 + np.exp(-(t - 32) / 5))).round()
    dead = (3000 / (1 + np.exp(-(t - 22) / 5))).round()
    path = tmp_path / "data" / "covid-19.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame({"date": days, "confirmed_num": confirmed, "cured_num": cured, "dead_num": dead}).to_csv(
        path, sep="\t", index=False
    )
    return path


@pytest.fixture
def imdb_loaders():
    """``dl_train`` / ``dl_test`` of chapter 5-1's imdb pipeline: batches of int64 token ids
    (N, 200) from a 10,000-word vocabulary (0 unknown, 1 padding) and float labels (N, 1).
    Positive reviews use more words from one half of the vocabulary."""
    g = torch.Generator().manual_seed(0)

    def dataset(n: int) -> torch.utils.data.TensorDataset:
        labels = torch.randint(0, 2, (n, 1), generator=g).float()
        ids = torch.randint(2, 10000, (n, 200), generator=g)
        lean = torch.randint(2, 5000, (n, 200), generator=g) + 5000 * labels.long()
        ids = torch.where(torch.rand(n, 200, generator=g) < 0.3, lean.clamp(max=9999), ids)
        ids[:, 150:] = 1  # the tail is padding, as after pad_sequence to MAX_LEN
        return torch.utils.data.TensorDataset(ids, labels)

    dl_train = torch.utils.data.DataLoader(dataset(120), batch_size=20, shuffle=True, generator=g)
    dl_test = torch.utils.data.DataLoader(dataset(60), batch_size=20)
    return dl_train, dl_test
