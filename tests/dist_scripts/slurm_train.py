"""The docs' Slurm recipe trains this (tests/test_distributed_notebook.py runs it with a fake srun)."""
import os
import sys

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scenarios as sc  # noqa: E402

from torchfit import distributed  # noqa: E402


def main(out: str) -> None:
    torch.set_num_threads(1)
    model = sc.compiled(sc.mlp(seed=0))
    history = model.fit(1, DataLoader(sc.data(64, 1), batch_size=8), verbose=0)
    torch.save({"world": distributed.world_size(), "slurm_procid": os.environ["SLURM_PROCID"],
                "loss": float(history["loss"].iloc[0]), "net": model.net.state_dict()},
               os.path.join(out, f"rank{distributed.rank()}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
