"""Collective behaviour of the run engine, run under ``torchrun --nproc_per_node=2`` on CPU (gloo).

    python -m torch.distributed.run --nproc_per_node=2 _engine_ranks.py OUT_DIR

One process group serves several short runs (the engine leaves a caller's group alone). Each rank writes
``OUT_DIR/rank{r}.json`` with, per scenario, what it observed: all-reduce calls, DDP gradient all-reduces (a
counting comm hook), DDP's broadcast_buffers, how the run stopped, and the error it raised.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: tests/_pretrain_tensors.py
from _pretrain_tensors import config as pretrain_config  # noqa: E402
from _pretrain_tensors import dataset as tensor_dataset  # noqa: E402

from crate_mae.engine import runner as engine  # noqa: E402
from crate_mae.evaluation.finetune import finetune  # noqa: E402
from crate_mae.evaluation.finetune_config import load_finetune_config  # noqa: E402
from crate_mae.training import pretrain  # noqa: E402

OUT = sys.argv[1]
RANK = int(os.environ["RANK"])
counts = {"all_reduce": 0, "grad_all_reduce": 0}
observed: dict[str, dict] = {}

real_all_reduce = dist.all_reduce


def counting_all_reduce(*args, **kwargs):
    counts["all_reduce"] += 1
    return real_all_reduce(*args, **kwargs)


real_wrap = engine.wrap_model


def counting_wrap(model, info, compile=False):
    net = real_wrap(model, info, compile)
    counts["broadcast_buffers"] = (
        net.forward_sync_buffers if hasattr(net, "forward_sync_buffers") else net.broadcast_buffers
    )

    def hook(state, bucket):
        counts["grad_all_reduce"] += 1
        return default_hooks.allreduce_hook(state, bucket)

    net.register_comm_hook(None, hook)
    return net


dist.all_reduce = counting_all_reduce
engine.wrap_model = counting_wrap


class Labelled(torch.utils.data.TensorDataset):
    classes = ["a", "b"]


def labelled(n, nan_at=None):
    g = torch.Generator().manual_seed(7)
    x, y = torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % 2
    if nan_at is not None:
        x[nan_at] = float("nan")
    return Labelled(x, y)


def scenario(name, fn, *overrides):
    counts.update(all_reduce=0, grad_all_reduce=0)
    entry = {}
    try:
        result = fn(f"{OUT}/{name}", list(overrides))
        entry["stopped"] = result["stopped"] if "stopped" in result else result["details"]["stopped"]
        entry["steps"] = result["steps"] if "steps" in result else result["details"]["steps"]
    except Exception as e:  # noqa: BLE001 -- the scenario records what each rank raised
        entry["error"] = f"{type(e).__name__}: {e}"
    entry.update(counts)
    observed[name] = entry


def run_pretrain(out, overrides):
    return pretrain(
        pretrain_config([f"run.output_dir={out}", "optim.batch_size=4", *overrides]),
        dataset=tensor_dataset(),
        device="cpu",
    )


def run_finetune(out, overrides, nan_at=None):
    base = [
        "data.path=in-memory",
        "data.num_workers=0",
        "run.progress=false",
        "run.log_every=1000",
        "model.overrides={img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4}",
        "aug.rand_augment=null",
        "aug.mixup=0",
        "aug.cutmix=0",
        "aug.reprob=0",
        "optim.batch_size=4",
        "optim.epochs=1",
        "optim.warmup_epochs=0",
        f"run.output_dir={out}",
    ]
    return finetune(load_finetune_config(None, base + overrides), labelled(48, nan_at), labelled(8), device="cpu")


class RacingClock:
    """On this rank every reading is ``step`` seconds later than the one before: any budget runs out at once."""

    def __init__(self, step):
        self.step, self.n, self.real = step, 0, engine.clock

    def __call__(self):
        self.n += 1
        return self.real() + self.step * self.n


if __name__ == "__main__":
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    for task, fn in (("pretrain", run_pretrain), ("finetune", run_finetune)):
        for accum in (1, 2):  # 3 optimizer steps either way
            scenario(
                f"{task}_accum{accum}", fn, f"optim.accum_iter={accum}", "run.max_steps=3", "run.ckpt_every_steps=0"
            )
    real_clock = engine.clock
    engine.clock = RacingClock(10_000.0 if RANK == 1 else 0.0)  # only rank 0's clock may stop the run
    scenario("rank1_late_clock", run_pretrain, "run.max_minutes=60", "run.max_steps=4")
    engine.clock = RacingClock(10_000.0 if RANK == 0 else 0.0)
    scenario("rank0_late_clock", run_pretrain, "run.max_minutes=60", "run.ckpt_every_steps=0")
    engine.clock = real_clock
    from crate_mae.engine.sampling import EpochSampler

    first_on_rank1 = next(iter(EpochSampler(48, 4, seed=0, rank=1, world_size=2)))[0][1]
    scenario("finetune_nan_on_rank1", lambda out, o: run_finetune(out, o, nan_at=first_on_rank1), "run.max_steps=2")
    with open(f"{OUT}/rank{RANK}.json", "w") as f:
        json.dump(observed, f)
    dist.destroy_process_group()
