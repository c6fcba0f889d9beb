"""The Runner-Task contract, on a task the engine has never heard of (a linear regression): the task is built from
the config and the process's DistInfo, its hooks get a frozen TaskContext and report through it, it never holds the
Runner; TrainState serialises itself and reads the training_state.pt of earlier versions."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import torch
import torch.nn as nn

from crate_mae.engine.config import Checks, OptimConfig, RunConfig, plain
from crate_mae.engine.distributed import DistInfo
from crate_mae.engine.optim import build_optimizer
from crate_mae.engine.run_state import find_latest_run_state, load_training_state
from crate_mae.engine.runner import Runner, Task, TaskContext, TrainState, run
from crate_mae.engine.sampling import SeededSamples
from crate_mae.models import Capabilities, ModelConfig


@dataclass
class ToyData:
    num_workers: int = 0


@dataclass
class ToyConfig:
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(batch_size=4, epochs=2, warmup_epochs=1, lr=0.05))
    run: RunConfig = field(default_factory=lambda: RunConfig(progress=False, log_every=1, deterministic=True))
    data: ToyData = field(default_factory=ToyData)

    def validate(self) -> ToyConfig:
        check = Checks()
        check.optim(self.optim)
        check.run(self.run)
        if check.errors:
            raise ValueError("; ".join(check.errors))
        return self

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))


@dataclass(frozen=True)
class ToyLinearConfig(ModelConfig):
    architecture: ClassVar[str] = "toy"


class ToyLinear(Capabilities, nn.Linear):
    """y = x @ w as a model of the contract (what save_pretrained writes into config.json)."""

    config_class = ToyLinearConfig

    def __init__(self) -> None:
        nn.Linear.__init__(self, 4, 1)
        self.init_contract(ToyLinearConfig())


class Regression(Task):
    """y = x @ w on 16 random points; the hooks record what they were given."""

    name = "regression"

    def __init__(self, cfg: ToyConfig, info: DistInfo, seen: list):
        super().__init__(cfg, info)
        self.seen = seen
        self.model = ToyLinear()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(16, 4, generator=g)
        self.train_set = SeededSamples(
            torch.utils.data.TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0])), cfg.run.seed
        )
        self.extra = {"task": "regression"}

    def make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        return build_optimizer(self.model, lr, 0.0, self.cfg.optim.betas)

    def loss(self, net: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return ((net(x.to(self.device)).squeeze(1) - y.to(self.device)) ** 2).mean()

    def start(self, ctx: TaskContext) -> None:
        self.seen.append(("start", ctx, ctx.elapsed()))

    def end_epoch(self, ctx: TaskContext, epoch: int, train_loss: float) -> dict[str, dict[str, float]]:
        self.seen.append(("end_epoch", ctx, ctx.elapsed()))
        ctx.log({"event": "toy", "epoch": epoch}, {"toy/epoch": float(epoch)}, epoch)
        return {"half": {"loss": train_loss / 2}}

    def finish(self, ctx: TaskContext, stopped: str) -> dict[str, Any]:
        self.seen.append(("finish", ctx, ctx.elapsed()))
        ctx.say(f"toy done after {ctx.state.step} steps")
        return {"stopped": stopped, "steps": ctx.state.step, "lr": ctx.lr, "elapsed": ctx.elapsed()}


def train(out, seen: list, **run_kw) -> dict[str, Any]:
    cfg = ToyConfig()
    cfg.run = dataclasses.replace(cfg.run, output_dir=str(out), **run_kw)
    return run(cfg, lambda cfg, info: Regression(cfg, info, seen), device="cpu")


def test_a_task_is_built_from_config_and_dist_info_and_hooks_get_a_frozen_context(tmp_path, capsys):
    seen: list = []
    out = tmp_path / "run"
    result = train(out, seen)
    assert [name for name, _, _ in seen] == ["start", "end_epoch", "end_epoch", "finish"]
    assert result == {"stopped": "completed", "steps": 8, "lr": 0.05, "elapsed": pytest.approx(result["elapsed"])}
    start, epoch1, epoch2, finish = (ctx for _, ctx, _ in seen)
    assert all(isinstance(c, TaskContext) for c in (start, epoch1, epoch2, finish))
    assert (start.state.step, epoch1.state.step, epoch2.state.step, finish.state.step) == (0, 4, 8, 8)
    assert (epoch1.state.epoch, epoch2.state.epoch) == (1, 2)
    assert len(epoch1.state.history) == 4 and len(finish.state.history) == 8  # snapshots, not the live state
    clock = [t for _, _, t in seen]
    assert clock[0] == 0.0 and 0.0 < clock[1] <= clock[2] <= clock[3]  # the run's clock, from the start of training
    assert finish.out == out and finish.device == torch.device("cpu") and finish.amp_dtype is None
    assert (finish.lr, finish.effective_batch, finish.images_seen, finish.plan) == (0.05, 4, 32, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        finish.lr = 1.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r.get("event") == "toy"] == [1, 2]
    assert [r["epoch"] for r in rows if r.get("event") == "half"] == [1, 2]
    assert "toy done after 8 steps" in capsys.readouterr().out


def test_the_task_never_holds_the_runner(tmp_path, monkeypatch):
    """One way only: nothing the task holds, and no value it is given, is the Runner (it reports through the
    context's log / say callables)."""
    tasks = []
    real = Runner.__init__

    def spy(self, cfg, info, make_task):
        real(self, cfg, info, lambda c, i: tasks.append(make_task(c, i)) or tasks[-1])

    monkeypatch.setattr(Runner, "__init__", spy)
    seen: list = []
    train(tmp_path / "run", seen)
    (task,) = tasks
    held = [*vars(task).values(), *(v for _, ctx, _ in seen for v in vars(ctx).values())]
    assert held and not any(isinstance(v, Runner) for v in held)


def test_train_state_serialises_itself():
    st = TrainState(epoch=3, step=41, iter_in_epoch=5, loss_sum=1.5, loss_steps=2, history=[0.1, 0.2])
    saved = st.state_dict()
    assert saved == {"epoch": 3, "step": 41, "iter_in_epoch": 5, "loss_sum": 1.5, "loss_steps": 2}  # no history
    back = TrainState.from_state_dict({**saved, "optimizer": {}, "rng": []})  # the file's other keys are ignored
    assert back == dataclasses.replace(st, history=[])


def test_train_state_reads_a_state_written_before_it_serialised_itself(tmp_path):
    """training_state.pt as earlier versions wrote it: the fields at the top level, built by hand; the oldest lack
    the epoch's loss sums."""
    old = {
        "step": 7,
        "epoch": 1,
        "iter_in_epoch": 3,
        "optimizer": {"state": {}, "param_groups": []},
        "scaler": None,
        "schedule": {},
        "rng": [],
        "world_size": 1,
        "config": {},
        "task": {},
    }
    assert TrainState.from_state_dict(old) == TrainState(epoch=1, step=7, iter_in_epoch=3)
    assert TrainState.from_state_dict({**old, "loss_sum": 2.0, "loss_steps": 3}).loss_steps == 3


def test_a_saved_toy_run_resumes_where_it_stopped(tmp_path):
    seen: list = []
    out = tmp_path / "run"
    assert train(out, seen, max_steps=3, ckpt_every_steps=1)["steps"] == 3
    state = load_training_state(find_latest_run_state(out))
    assert {k: state[k] for k in ("step", "epoch", "iter_in_epoch")} == {"step": 3, "epoch": 0, "iter_in_epoch": 3}
    seen.clear()
    assert train(out, seen, resume="auto")["steps"] == 8
    assert seen[0][1].state.step == 3  # start() sees the resumed state
