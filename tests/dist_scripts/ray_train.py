"""The docs' Ray Train recipe: torchfit's fit inside a TorchTrainer worker function (tests/test_distributed_ray.py)."""
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scenarios as sc  # noqa: E402


def train_func(config):
    import ray.train
    from ray.train.torch import get_device

    import torchfit
    from torchfit import distributed

    torch.set_num_threads(1)
    net = sc.mlp(seed=0)
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
                                        ["accuracy"], device=get_device())
    history = model.fit(2, DataLoader(sc.data(64, 1), batch_size=8), DataLoader(sc.data(32, 2), batch_size=8),
                        verbose=0)
    torch.save({"net": model.net.state_dict(), "history": history.to_dict("records"),
                "world": distributed.world_size()}, os.path.join(config["out"], f"rank{distributed.rank()}.pt"))
    ray.train.report({"val_loss": float(history["val_loss"].iloc[-1])})


def main(out: str) -> None:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    ray.init(num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([root, here]), "OMP_NUM_THREADS": "1"}})
    try:
        TorchTrainer(train_func, train_loop_config={"out": out},
                     scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.5}),
                     run_config=RunConfig(storage_path=os.path.join(out, "ray"))).fit()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
