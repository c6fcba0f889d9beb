"""Run `crate_mae.training.pretrain` on a fixed random-tensor dataset (used by the subprocess / torchrun tests of
tests/training and tests/engine, which the engine drives with pretraining as its task).

    python _pretrain_tensors.py KEY=VALUE ...      (dotted config overrides)

Set NAN_AT=i to poison sample i with NaN pixels. tests/processes.py has the environment and port for the tests that
start such runs in subprocesses.
"""

import os
import sys

import torch
from tiny import TINY as TINY_KWARGS  # tests/ (this file's folder, on sys.path when it runs as a script)
from tiny import model_overrides
from torch.utils.data import TensorDataset

from crate_mae.training import load_config, pretrain

TINY = model_overrides(TINY_KWARGS)  # the YAML of model.overrides=


def dataset(n: int = 48) -> TensorDataset:
    g = torch.Generator().manual_seed(1234)
    x = torch.rand(n, 3, 32, 32, generator=g)
    x = x + torch.linspace(0, 1, 32).view(1, 1, 1, 32)  # a learnable gradient on top of noise
    if "NAN_AT" in os.environ:
        x[int(os.environ["NAN_AT"])] = float("nan")
    return TensorDataset(x)


def config(overrides: list[str]):
    base = [
        "model.name=crate_mae_tiny",
        f"model.overrides={TINY}",
        "data.demo=true",
        "data.img_size=32",
        "data.num_workers=0",
        "optim.batch_size=8",
        "optim.epochs=2",
        "optim.warmup_epochs=1",
        "optim.blr=1e-2",
        "run.log_every=1",
        "run.vis_every_epochs=0",
        "run.progress=false",
        "run.deterministic=true",
    ]
    return load_config(None, base + overrides)


if __name__ == "__main__":
    torch.set_num_threads(1)  # identical float arithmetic in every process / run
    import json

    cfg = config(sys.argv[1:])
    summary = pretrain(cfg, dataset=dataset(), device="cpu")  # gloo, even on a machine with fewer GPUs than ranks
    rank = os.environ.get("RANK", "0")
    with open(os.path.join(cfg.run.output_dir, f"summary_rank{rank}.json"), "w") as f:
        json.dump(summary, f)
