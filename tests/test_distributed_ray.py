"""fit inside Ray Train's TorchTrainer worker function: torchfit uses the process group Ray made
(skipped where Ray Train is not installed: pip install "ray[train]", the `ray` extra)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "dist_scripts")
sys.path.insert(0, SCRIPTS)
import scenarios as sc  # noqa: E402

pytest.importorskip("ray.train.torch")


@pytest.mark.slow
def test_fit_in_a_torchtrainer_worker_trains_like_ddp(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    env.update(PYTHONPATH=os.pathsep.join([ROOT, SCRIPTS]), OMP_NUM_THREADS="1", RAY_DEDUP_LOGS="0")
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, "ray_train.py"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["world"] == r1["world"] == 2  # the fit ran on Ray's 2-process group, not alone in each worker
    ref = sc.compiled(sc.mlp(seed=0), metrics=["accuracy"])
    history = ref.fit(2, DataLoader(sc.data(64, 1), batch_size=16), DataLoader(sc.data(32, 2), batch_size=16),
                      verbose=0)
    for k, v in ref.net.state_dict().items():
        torch.testing.assert_close(r0["net"][k], v, rtol=1e-5, atol=1e-6)
        assert torch.equal(r0["net"][k], r1["net"][k])
    assert [row["val_loss"] for row in r0["history"]] == pytest.approx(list(history["val_loss"]), rel=1e-5)
