"""The run engine shared by pretraining and fine-tuning.

facebookresearch/mae writes each task twice over: a ``main_*.py`` that sets up and an ``engine_*.py`` with the
epoch loop. Here the split is done once. :func:`run` and :class:`Runner` own everything around the training step:

- the process group (joined under torchrun, torn down only if :func:`run` created it), determinism flags
  (restored afterwards), autocast and the fp16 grad scaler, activation checkpointing (``run.grad_checkpointing``);
- the output-folder lock (one run per folder), the data order (:class:`~.sampling.EpochSampler`) and loader;
- the optimizer step: gradient accumulation with DDP gradient sync only on the last micro-batch (forward *and*
  backward under ``no_sync``), clipping, and the NaN guard: one all-reduce and one host sync per optimizer step
  carry the loss, the gradient norm and rank 0's stop decision, so every rank raises or stops at the same step;
- checkpoints: atomic, with every rank's RNG state, never of non-finite weights; resume with a config check and a
  fall-back past damaged checkpoints; ``metrics.jsonl`` / TensorBoard truncated to the resumed step;
- stop conditions (``run.max_steps``, ``run.max_minutes`` on rank 0's clock, never before ``run.min_steps``) and
  progress reporting;
- with ``run.fit_to_minutes``, the length of the run fitted to a time budget from the measured speed of its own
  steps, again and again as it trains (:meth:`Runner.refit`); with ``run.threads: auto``, the number of CPU compute
  threads chosen by timing the first steps under each (:meth:`Runner.try_threads`).

A :class:`Task` supplies the model, the data, the optimizer and the loss of one micro-batch, plus optional hooks
(start, end of epoch, final summary). The contract is one-way: a task is built from the config and the process's
:class:`~.distributed.DistInfo` (``make_task(cfg, info)``), never from the Runner, and its hooks receive what they may
read of the run (step, lr, output folder, clock) and the two ways to report (a metrics row, a console line) as a
frozen :class:`TaskContext`. Pretraining (:mod:`crate_mae.training.pretrain`) and fine-tuning
(:mod:`crate_mae.evaluation.finetune`) are the two tasks.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.profiler import record_function
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.loader import resolve_num_workers
from ..io import load_exact, save_pretrained
from ..models.base import Capabilities
from ..utils import NoSpaceError, amp_dtype, atomic_write, writing
from ..utils.progress import Progress
from .config import config_changes, save_config
from .distributed import DistInfo, agree, all_reduce_sum, cleanup_distributed, init_distributed, wrap_model
from .optim import WarmupCosine, effective_lr
from .run_lock import RunLock
from .run_state import (
    DamagedRunStateError,
    capture_rng,
    find_latest_run_state,
    read_run_state,
    restore_rng,
    resume_candidates,
    save_run_state,
)
from .sampling import EpochSampler, SeededSamples

if TYPE_CHECKING:  # imported where it is used: tensorboard is slow to import
    from torch.utils.tensorboard import SummaryWriter

clock: Callable[[], float] = time.perf_counter  # the run's stopwatch; tests replace it to control run.max_minutes


class NonFiniteLossError(RuntimeError):
    """The loss, the gradient norm or the weights became NaN/inf; nothing was saved after the last good checkpoint."""


@dataclass
class TrainState:
    """Where training stands. ``step`` counts optimizer steps over the whole run; ``iter_in_epoch`` counts the
    data iterations (micro-batches) of the current epoch already consumed; ``loss_sum`` / ``loss_steps`` sum the
    step losses of the current epoch (checkpointed, so an epoch mean spans a resume)."""

    epoch: int = 0
    step: int = 0
    iter_in_epoch: int = 0
    loss_sum: float = 0.0
    loss_steps: int = 0
    history: list[float] = field(default_factory=list)  # loss of each optimizer step of this process's run

    def state_dict(self) -> dict[str, Any]:
        """The fields a run resumes from, as plain numbers (``training_state.pt`` holds them at its top level);
        ``history`` is this process's own and is not saved."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "history"}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TrainState:
        """The state :meth:`state_dict` saved; keys an older ``training_state.pt`` lacks (the epoch's loss sums)
        take their defaults. Other keys of the file (optimizer, RNG, ...) are ignored."""
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name != "history" and f.name in state})


@dataclass(frozen=True)
class TaskContext:
    """What a :class:`Task` hook may read of the run and how it reports; built by the Runner for each hook call.

    ``state`` is a copy of the run's :class:`TrainState` at the call; ``lr`` the peak learning rate (after the
    batch-size scaling), ``effective_batch`` the images per optimizer step over all processes, ``images_seen`` the
    images trained on by this process's run, ``plan`` the fitted length (``run.fit_to_minutes``) or None.
    ``elapsed()`` reads the run's clock (seconds since training started; 0 before). ``log(row, scalars, step)``
    appends a metrics.jsonl row and TensorBoard scalars, ``say(msg)`` prints a line; both on rank 0 only."""

    state: TrainState
    lr: float
    effective_batch: int
    images_seen: int
    plan: dict[str, Any] | None
    out: Path
    device: torch.device
    amp_dtype: torch.dtype | None
    elapsed: Callable[[], float]
    log: Callable[..., None]
    say: Callable[[str], None]


class Task:
    """What a run trains. ``make_task(cfg, info)`` builds it from the config and the process's
    :class:`~.distributed.DistInfo`; ``__init__`` builds, on ``info.device``:

    - ``model``: the module run states save (the runner wraps it for DDP / compile);
    - ``train_set``: a Dataset indexed by ``(epoch, index)`` (:class:`~.sampling.SeededSamples`);
    - ``extra``: entries merged into every saved ``config.json``;

    and implements :meth:`make_optimizer` and :meth:`loss`. The hooks get a :class:`TaskContext`; a task never holds
    the Runner. ``guarded`` are the config key prefixes that a resume may not change (they alter the model, data
    order or schedule), except ``unguarded`` ones."""

    name = "training"
    title = ""  # what is trained, for the run's first line (a model name, a checkpoint)
    guarded: tuple[str, ...] = ("model.", "data.", "optim.", "run.seed")
    unguarded: tuple[str, ...] = ("data.num_workers", "data.strict", "data.cache")
    model: nn.Module
    train_set: SeededSamples
    extra: dict[str, Any]

    def __init__(self, cfg: Any, info: DistInfo):
        self.cfg, self.info, self.device = cfg, info, info.device

    def make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        raise NotImplementedError

    def loss(self, net: nn.Module, batch: Any) -> torch.Tensor:
        """Scalar loss of one micro-batch (as the loader yields it, on the CPU), computed with ``net``; called
        under the run's autocast. No host sync here: the runner checks the loss once per optimizer step."""
        raise NotImplementedError

    def config_defaults(self) -> dict[str, Any]:
        """Flat ``{dotted key: default}`` for keys an older saved config may lack."""
        return {}

    def start(self, ctx: TaskContext) -> None:
        """Before the first step (after a resume has restored the weights)."""

    def end_epoch(self, ctx: TaskContext, epoch: int, train_loss: float) -> dict[str, dict[str, float]]:
        """After epoch ``epoch`` (1-based) on every rank: evaluation, pictures. Returns ``{group: {name: value}}``
        logged as ``{"event": group, ...}`` rows and ``group/name`` TensorBoard scalars."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Task state for checkpoints: plain containers only (loaded with ``weights_only=True``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def finish(self, ctx: TaskContext, stopped: str) -> dict[str, Any]:
        """After the last step (``stopped``: 'completed' | 'max_steps' | 'max_minutes'); returns the run's result."""
        raise NotImplementedError


def run(
    cfg: Any, make_task: Callable[[Any, DistInfo], Task], device: torch.device | str | None = None
) -> dict[str, Any]:
    """Validate ``cfg`` (sections ``optim``, ``run``, ``data``; see :mod:`.config`), join the process group, lock
    ``cfg.run.output_dir``, train ``make_task(cfg, info)`` and return its :meth:`Task.finish` result. A process group
    the caller created is left alone; determinism flags are restored."""

    cfg.validate()
    out = Path(cfg.run.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"run.output_dir = {str(out)!r} is a file, not a folder")
    owns_group = not (dist.is_available() and dist.is_initialized())
    flags = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, torch.get_num_threads()
    info = init_distributed(device)
    lock = RunLock(out) if info.is_main else None
    try:
        note = error = None
        try:
            note = lock.acquire() if lock is not None else None
        except ValueError as e:
            error = str(e)
        error = agree(error, info)
        if error is not None:
            lock = None
            raise ValueError(error)
        runner = Runner(cfg, info, make_task)
        if note:
            runner.say(note)
        try:
            return runner.fit()
        finally:
            runner.close()
    finally:
        if lock is not None:
            lock.release()
        torch.use_deterministic_algorithms(flags[0])
        torch.backends.cudnn.benchmark = flags[1]
        torch.set_num_threads(flags[2])
        if owns_group:
            cleanup_distributed()


class Runner:
    """One training run, built by :func:`run`. It drives its Task; the Task sees it only through the
    :class:`TaskContext` its hooks receive (:meth:`context`)."""

    def __init__(self, cfg: Any, info: DistInfo, make_task: Callable[[Any, DistInfo], Task]):
        r, o = cfg.run, cfg.optim
        self.cfg, self.info, self.device, self.out = cfg, info, info.device, Path(r.output_dir)
        if r.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS reads it at handle creation
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        self.amp_dtype = amp_dtype(r.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.writer: SummaryWriter | None = None

        torch.manual_seed(r.seed)  # identical initialisation on every rank
        self.task = make_task(cfg, info)
        if r.grad_checkpointing:
            assert isinstance(self.task.model, Capabilities)  # every model keeps the contract of models/base.py
            self.task.model.set_grad_checkpointing(True)
        seed_all(r.seed + info.rank)  # then rank-specific streams for drop path and mixup

        self.sampler = EpochSampler(len(self.task.train_set), o.batch_size, r.seed, info.rank, info.world_size)
        self.steps_per_epoch = self.sampler.steps_per_epoch // o.accum_iter
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"one epoch has {self.sampler.steps_per_epoch} batches, fewer than optim.accum_iter = "
                f"{o.accum_iter}; use a larger dataset or smaller batch/accumulation"
            )
        self.iters_per_epoch = self.steps_per_epoch * o.accum_iter
        workers = resolve_num_workers(cfg.data.num_workers, self.device)
        self.loader = DataLoader(
            self.task.train_set,
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(r.seed),
        )  # keeps seeding off the global RNG

        self.effective_batch = o.batch_size * o.accum_iter * info.world_size
        self.lr = effective_lr(o.blr, o.batch_size, o.accum_iter, info.world_size, o.lr)
        total = o.epochs * self.steps_per_epoch
        warmup = min(total, round(o.warmup_epochs * self.steps_per_epoch))
        self.total_steps: int | None = None  # with a fitted plan: the run ends after this step, maybe mid-epoch
        self.schedule = WarmupCosine(self.lr, total, warmup, o.min_lr)
        # run.fit_to_minutes: the length is fitted when warm-up ends, then again every `fit_every` steps
        self.fit_every = max(warmup, 1) if r.fit_to_minutes is not None else None
        self.plan: dict[str, Any] | None = None
        self._window: list[float] = []  # the clock after each step since the last fit
        self.trained_before = 0.0  # seconds of training before a resume (what run.fit_to_minutes has used)
        # run.threads: a number is set now; 'auto' alternates all threads and one over the first steps
        self.trial: dict[str, Any] | None = None
        if isinstance(r.threads, int):
            torch.set_num_threads(r.threads)
        elif r.threads == "auto" and self.device.type == "cpu" and torch.get_num_threads() > 1:
            n = torch.get_num_threads()
            self.trial = {"order": [n, 1] * 4, "seconds": {n: [], 1: []}, "last": None}
        self._said_floor = False
        self.optimizer = self.task.make_optimizer(self.lr)
        self.params = [p for p in self.task.model.parameters() if p.requires_grad]
        self.state = TrainState()
        self.resume_from: Path | None = None
        self._rng = None
        self._resume(r.resume)
        self.net: nn.Module = wrap_model(self.task.model, info, r.compile)
        self.images_seen = 0
        self.t0 = 0.0  # the clock when training started (once self.started)
        self.started = False

    # -- the loop ---------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg, st = self.cfg, self.state
        self._open_logs()
        self.task.start(self.context())
        if self._rng is not None:
            restore_rng(self._rng, self.device)
        self.t0, self.started = clock(), True
        if self.trial is not None:
            torch.set_num_threads(self.trial["order"][0])
            self.trial["last"] = self.t0
        stopped = "completed"
        try:
            while st.epoch < cfg.optim.epochs and (self.total_steps is None or st.step < self.total_steps):
                stopped = self._train_epoch()
                if stopped != "completed":
                    break
                self._end_epoch()
            if stopped != "completed":
                self.save()
            return self.task.finish(self.context(), stopped)
        except NonFiniteLossError as e:
            last = find_latest_run_state(self.out)
            raise NonFiniteLossError(
                f"{e}. Training stopped; nothing was saved after the last good checkpoint "
                f"({last if last else 'none written yet'}). Try a lower optim.blr, optim.clip_grad, or check the "
                f"data for NaN/inf pixels."
            ) from None

    def _train_epoch(self) -> str:
        o, st, info = self.cfg.optim, self.state, self.info
        accum = o.accum_iter
        self.sampler.set_epoch(st.epoch, st.iter_in_epoch)
        self.net.train()

        bar = Progress(
            self.steps_per_epoch - st.iter_in_epoch // accum,
            f"epoch {st.epoch + 1}/{o.epochs}",
            "step",
            enabled=info.is_main and self.cfg.run.progress,
        )
        autocast = torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        )
        loss_acc = torch.zeros((), device=self.device)
        t_last, n_last = clock(), 0
        try:
            for batch in self.loader:
                micro = st.iter_in_epoch % accum
                if micro == 0:
                    lr = self.schedule.apply(self.optimizer, st.step)
                boundary = micro == accum - 1
                # DDP decides in forward whether backward all-reduces, so both run under no_sync.
                # (net is DDP, or torch.compile's wrapper of it, which forwards no_sync; torch types a module's
                # attributes Tensor | Module)
                sync = (
                    self.net.no_sync()  # type: ignore[operator]
                    if info.enabled and not boundary
                    else contextlib.nullcontext()
                )
                with sync, record_function("crate_mae.micro_batch"):  # named ranges in profiler traces
                    with autocast:
                        loss = self.task.loss(self.net, batch)
                    scaled = loss / accum
                    (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                    loss_acc += loss.detach().float() / accum
                st.iter_in_epoch += 1
                n_last += o.batch_size * info.world_size
                if not boundary:
                    continue
                with record_function("crate_mae.optimizer_step"):
                    loss_value, grad_norm, stop = self._step(loss_acc)
                loss_acc = torch.zeros((), device=self.device)
                now = clock()
                img_per_s, t_last, n_last = n_last / max(now - t_last, 1e-9), now, 0
                self.images_seen += self.effective_batch
                bar.update(1, loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                reason = self._after_step(loss_value, lr, grad_norm, img_per_s, stop)
                if reason is not None:
                    return reason
                if st.iter_in_epoch >= self.iters_per_epoch or self.plan_ends(st.step):
                    break
        finally:
            bar.close(line=False)
        return "completed"

    def _step(self, loss_acc: torch.Tensor) -> tuple[float, float | None, bool]:
        """Check, then apply the accumulated gradients. One all-reduce and one host sync: the loss (mean over
        ranks), the gradient norm and rank 0's out-of-time flag travel together, so a NaN on any rank, or the
        clock of rank 0, stops every rank at the same step, before the update."""
        o, st, info = self.cfg.optim, self.state, self.info
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, o.clip_grad) if o.clip_grad else None
        r = self.cfg.run
        out_of_time = (
            info.is_main
            and r.max_minutes is not None
            and st.step + 1 >= r.min_steps
            and clock() - self.t0 >= 60 * r.max_minutes
        )
        packed = torch.stack(
            [
                loss_acc,
                grad_norm.float() if grad_norm is not None else torch.zeros_like(loss_acc),
                torch.full_like(loss_acc, float(out_of_time)),
            ]
        )
        loss, norm, stop = all_reduce_sum(packed, info).tolist()
        loss, norm = loss / info.world_size, norm / info.world_size
        where = f"at epoch {st.epoch}, optimizer step {st.step} (lr {self.optimizer.param_groups[0]['lr']:.3g})"
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss} {where}")
        # fp16 overflow is routine (the scaler skips the step); in fp32 / bf16 a non-finite gradient is a failure.
        if grad_norm is not None and not math.isfinite(norm) and self.scaler is None:
            raise NonFiniteLossError(f"gradient norm is {norm} {where}")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        st.step += 1
        st.loss_sum += loss
        st.loss_steps += 1
        st.history.append(loss)
        return loss, (norm if grad_norm is not None else None), stop > 0

    def _after_step(self, loss: float, lr: float, grad_norm: float | None, img_per_s: float, stop: bool) -> str | None:
        r, st = self.cfg.run, self.state
        if self.trial is not None:
            self.try_threads()
        if self.fit_every is not None:
            self._window.append(clock())
            if st.step >= (self.plan["step"] + self.fit_every if self.plan else self.fit_every):
                self.refit()
        epoch_end = st.iter_in_epoch >= self.iters_per_epoch or self.plan_ends(st.step)
        if st.step % r.log_every == 0 or epoch_end:
            row = {
                "step": st.step,
                "epoch": st.epoch + st.iter_in_epoch / self.iters_per_epoch,
                "loss": loss,
                "lr": lr,
                "img_per_s": img_per_s,
                "time": time.time(),
            }
            if grad_norm is not None:
                row["grad_norm"] = grad_norm
            self.log_row(
                row, {f"train/{k}": row[k] for k in ("loss", "lr", "img_per_s", "grad_norm") if k in row}, st.step
            )
        if r.ckpt_every_steps and st.step % r.ckpt_every_steps == 0 and not epoch_end:
            self.save()
        if self.plan_ends(st.step):
            return None  # the fitted end: the epoch loop completes the run
        if r.max_steps is not None and st.step >= r.max_steps:
            return "max_steps"
        return "max_minutes" if stop else None

    def try_threads(self) -> None:
        """``run.threads: auto``, after each of the first 8 steps: record the step's time under the thread count it
        ran with and set the next one (all of torch's threads and one, alternating, so that a change in the
        machine's load hits both alike); then keep the faster by median, the first pair left out (start-up). On a
        CPU that other jobs keep busy, every parallel op waits for its slowest thread and one thread can be several
        times faster (README "Speed"); on an idle machine, all threads are. The choice holds for the rest of the
        run and is logged as a ``{"event": "threads", ...}`` row."""
        t = self.trial
        assert t is not None  # called only while the trial runs
        now, done = clock(), len(t["seconds"][t["order"][0]]) + len(t["seconds"][1])
        t["seconds"][t["order"][done]].append(now - t["last"])
        t["last"] = now
        if done + 1 < len(t["order"]):
            torch.set_num_threads(t["order"][done + 1])
            return
        ms = {n: 1000 * float(np.median(v[1:])) for n, v in t["seconds"].items()}
        best = min(ms, key=lambda n: (ms[n], n))
        torch.set_num_threads(best)
        self.trial = None
        self.log_row({"event": "threads", "threads": best, "ms_per_step": {str(k): v for k, v in ms.items()}})
        self.say(
            f"run.threads=auto: {best} compute thread(s) for the rest of the run (a step took "
            + ", ".join(f"{v:.0f} ms with {k}" for k, v in ms.items())
            + ")"
            + ("; other jobs keep this machine's cores busy" if best < max(ms) else "")
        )

    def refit(self) -> dict[str, Any]:
        """``run.fit_to_minutes``: set the run's end so that training stops when the budget is used, from the time
        the last steps took on this machine (rank 0's clock; the first steps of the run, slower while the loader
        and the allocator warm up, are left out). Called when warm-up ends and every as many steps again, so a
        machine that gets busier or idler moves the end. The learning rate stays continuous
        (:meth:`WarmupCosine.refit`). Never fewer than ``run.min_steps`` steps; the last epoch may end part-way."""
        r, st = self.cfg.run, self.state
        plan = None
        if self.info.is_main:
            times = self._window
            last_clock = self.plan["clock"] if self.plan is not None else None
            fresh = last_clock is None  # the first window of this process
            skip = min(3, len(times) // 4) if fresh else 0
            start = times[skip - 1] if skip else (self.t0 if last_clock is None else last_clock)
            per_step = (times[-1] - start) / max(1, len(times) - skip)
            elapsed = times[-1] - self.t0 + self.trained_before
            fitted = (
                st.step + max(0, math.floor((60 * r.fit_to_minutes - elapsed) / per_step)) if per_step > 0 else st.step
            )
            total = max(fitted, r.min_steps, st.step, 1)
            plan = {
                "step": st.step,
                "clock": times[-1],
                "s_per_step": per_step,
                "measured_steps": len(times) - skip,
                "budget_minutes": r.fit_to_minutes,
                "fitted_steps": fitted,
                "min_steps": r.min_steps,
                "total_steps": total,
                "expected_minutes": (elapsed + (total - st.step) * per_step) / 60,
                "fits": (self.plan["fits"] if self.plan else 0) + 1,
            }
        if self.info.enabled:
            box = [plan]
            dist.broadcast_object_list(box, src=0)
            plan = box[0]
        assert plan is not None  # rank 0 made it, the broadcast gave it to every other rank
        plan["binding"] = plan["min_steps"] > plan["fitted_steps"]  # the floor, not the budget, sets the end now
        news = self.plan is None or plan["binding"] and not self._said_floor  # say it once, and when the floor bites
        self._said_floor = self._said_floor or plan["binding"]
        self.schedule.refit(st.step, plan["total_steps"])
        self.set_plan(plan)
        self.log_row({"event": "plan", **{k: v for k, v in plan.items() if k != "clock"}})
        if news:
            self.say(self.describe_plan(plan))
        return plan

    def describe_plan(self, plan: dict[str, Any]) -> str:
        budget = f"{plan['budget_minutes']:g}-minute budget"
        head = f"plan at step {plan['step']}: {plan['s_per_step'] * 1000:.0f} ms per step"
        if plan["min_steps"] > plan["fitted_steps"]:
            return (
                f"{head}; the {budget} holds {plan['fitted_steps']} steps on this machine now, so the run trains "
                f"the guaranteed minimum of run.min_steps = {plan['min_steps']} (about "
                f"{plan['expected_minutes']:.1f} minutes of training)"
            )
        return (
            f"{head}: {plan['total_steps']} steps ({plan['total_steps'] / self.steps_per_epoch:.1f} epochs of "
            f"{self.steps_per_epoch}) fill the {budget}; refitted every {self.fit_every} steps"
        )

    def set_plan(self, plan: dict[str, Any]) -> None:
        """End the run after ``plan['total_steps']`` optimizer steps; ``optim.epochs`` becomes the epochs that
        holds (the last one possibly partial). The schedule is the caller's (:meth:`refit`, or a resume)."""
        self.plan, self.total_steps = plan, int(plan["total_steps"])
        self.cfg.optim.epochs = max(1, -(-self.total_steps // self.steps_per_epoch))
        self._window = []

    def plan_ends(self, step: int) -> bool:
        return self.total_steps is not None and step >= self.total_steps

    def _end_epoch(self) -> None:
        st, o = self.state, self.cfg.optim
        epoch = st.epoch + 1
        mean = st.loss_sum / st.loss_steps if st.loss_steps else float("nan")
        st.epoch, st.iter_in_epoch, st.loss_sum, st.loss_steps = epoch, 0, 0.0, 0
        groups = self.task.end_epoch(self.context(), epoch, mean)
        parts = [
            f"epoch {epoch}/{o.epochs}  loss {mean:.4f}  lr {self.optimizer.param_groups[0]['lr']:.3g}  "
            f"step {st.step}  {clock() - self.t0:.0f}s"
        ]
        self.log_row({"event": "epoch", "epoch": epoch, "step": st.step, "loss": mean}, {"epoch/loss": mean}, epoch)
        for group, values in groups.items():
            self.log_row(
                {"event": group, "epoch": epoch, "step": st.step, **values},
                {f"{group}/{k}": v for k, v in values.items()},
                epoch,
            )
            parts.append(f"{group} " + " ".join(f"{k} {v:.4g}" for k, v in values.items()))
        self.say("  |  ".join(parts))
        self.save()
        if epoch in self.cfg.run.keep_epochs:
            on_main(
                self.info,
                lambda: save_pretrained(
                    self.task.model, self.out / "epochs" / f"epoch_{epoch:04d}", extra=self.task.extra
                ),
            )

    # -- run state --------------------------------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Save the run state of the current step (rank 0 writes; every rank contributes its RNG state)."""
        check_weights(self.task.model, self.state.step)
        rngs: list[dict[str, Any] | None] = [capture_rng(self.device)]
        if self.info.enabled:
            rngs = [None] * self.info.world_size
            dist.all_gather_object(rngs, capture_rng(self.device))
        state = {
            **self.state.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "schedule": self.schedule.state_dict(),
            "rng": rngs,
            "world_size": self.info.world_size,
            "config": self.cfg.to_dict(),
            "task": self.task.state_dict(),
            "plan": self.plan,
            "trained_s": self.trained_before + self.elapsed(),
        }

        def write() -> Path:
            try:
                return save_run_state(
                    self.out, self.task.model, state, extra=self.task.extra, keep=self.cfg.run.keep_checkpoints
                )
            except NoSpaceError as e:
                raise NoSpaceError(
                    f"{e}; the checkpoints already written are intact (newest: "
                    f"{find_latest_run_state(self.out) or 'none'}); free space, then resume with "
                    "--resume auto"
                ) from None

        return on_main(self.info, write)

    def _resume(self, resume: str | None) -> None:
        """Load the newest readable checkpoint ``resume`` names; with ``auto``, damaged ones are skipped with a
        warning. Refuse (ValueError naming the keys) a config that changes guarded keys, unless allowed."""

        candidates = resume_candidates(resume, self.out)
        problems = []
        for path in candidates:
            try:
                state, weights = read_run_state(path)
            except DamagedRunStateError as e:
                if resume != "auto":
                    raise
                problems.append(str(e))
                self.say(f"warning: skipping a damaged checkpoint: {e}")
                continue
            self._check_config(state.get("config") or {}, path)
            load_exact(self.task.model, weights, str(path))
            try:
                self.optimizer.load_state_dict(state["optimizer"])
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path}: the optimizer state does not fit this model ({e})") from None
            if self.scaler is not None and state.get("scaler") is not None:
                self.scaler.load_state_dict(state["scaler"])
            self.task.load_state_dict(state.get("task") or {})
            if self.fit_every is not None and state.get("plan"):
                # the fitted schedule goes on from the checkpoint; the clock of the resumed run fits it again
                self.schedule.load_state_dict(state["schedule"])
                self.set_plan({**state["plan"], "step": state["step"], "clock": None})
                self.trained_before = float(state.get("trained_s", 0.0))
            st = self.state = TrainState.from_state_dict(state)
            if st.iter_in_epoch >= self.iters_per_epoch:  # written at the very end of an epoch by older versions
                st.epoch, st.iter_in_epoch, st.loss_sum, st.loss_steps = st.epoch + 1, 0, 0.0, 0
            if state["world_size"] == self.info.world_size:
                self._rng = state["rng"][self.info.rank]
            else:
                self.say(
                    f"warning: checkpoint written by {state['world_size']} processes, resuming with "
                    f"{self.info.world_size}; data order and losses continue, but not bit-exactly"
                )
            if problems:
                self.say(f"warning: resuming from {path}, the newest readable checkpoint")
            self.resume_from = path
            return
        if problems:
            raise ValueError(f"--resume auto: no readable checkpoint in {self.out}: " + "; ".join(problems))

    def _check_config(self, saved: dict[str, Any], path: Path) -> None:
        t = self.task
        # with run.fit_to_minutes, optim.epochs is the fitted plan (read from the checkpoint), not the user's choice
        unguarded = t.unguarded + (("optim.epochs",) if self.fit_every is not None else ())
        changes = config_changes(saved, self.cfg.to_dict(), t.config_defaults(), t.guarded, unguarded)
        if not changes:
            return
        if self.cfg.run.allow_config_change:
            self.say(f"warning: resuming {path} with a changed config (run.allow_config_change): " + "; ".join(changes))
            return
        raise ValueError(
            f"cannot resume {path} with a different config; these keys change the model, data order "
            f"or schedule: {'; '.join(changes)}. Use the checkpoint's values, a new run.output_dir, "
            "or --allow-config-change (run.allow_config_change=true) to continue anyway"
        )

    # -- logging ----------------------------------------------------------------------------------------------------
    def _open_logs(self) -> None:
        """Rank 0: the resolved config, ``metrics.jsonl`` cut back to the resumed step (emptied for a new run, so
        the file reads as this run), and TensorBoard purged past it."""
        if not self.info.is_main:
            return

        from torch.utils.tensorboard import SummaryWriter

        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.out / "config.yaml")
        step = self.state.step
        path = self.out / "metrics.jsonl"
        if path.is_file():
            keep = []
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # the half-written last line of a killed run
                    continue
                if row.get("step", 0) <= step and row.get("event") != "end":
                    keep.append(line + "\n")
            atomic_write(path, lambda tmp: Path(tmp).write_text("".join(keep)))
        self.writer = SummaryWriter(str(self.out / "tb"), purge_step=step + 1 if step else None)
        o, t = self.cfg.optim, self.task
        n = sum(p.numel() for p in t.model.parameters())
        self.say(
            f"{t.name} {t.title} ({n / 1e6:.2f}M params) on {self.device}"
            f"{f' x {self.info.world_size} processes' if self.info.enabled else ''}; {len(t.train_set)} "
            f"images, {self.steps_per_epoch} steps/epoch, effective batch {self.effective_batch}, lr "
            f"{self.lr:.3g}"
            + (f"; resumed from {self.resume_from} (epoch {self.state.epoch}, step {step})" if self.resume_from else "")
            + f"; {o.epochs} epochs"
        )

    def log_row(self, row: dict[str, Any], scalars: dict[str, float] | None = None, step: int | None = None) -> None:
        """Rank 0: append ``row`` to metrics.jsonl and ``scalars`` to TensorBoard at ``step``."""
        if not self.info.is_main:
            return

        path = self.out / "metrics.jsonl"
        with writing(path), open(path, "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        if self.writer is not None:
            for k, v in (scalars or {}).items():
                self.writer.add_scalar(k, v, step)

    def elapsed(self) -> float:
        """Seconds since training started (the run's clock); 0 before."""
        return clock() - self.t0 if self.started else 0.0

    def context(self) -> TaskContext:
        """What the Task's hooks get: a snapshot of the run and the ways to report (:class:`TaskContext`)."""
        st = self.state
        return TaskContext(
            state=replace(st, history=list(st.history)),
            lr=self.lr,
            effective_batch=self.effective_batch,
            images_seen=self.images_seen,
            plan=dict(self.plan) if self.plan is not None else None,
            out=self.out,
            device=self.device,
            amp_dtype=self.amp_dtype,
            elapsed=self.elapsed,
            log=self.log_row,
            say=self.say,
        )

    def say(self, msg: str) -> None:
        if self.info.is_main:
            tqdm.write(msg)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def check_weights(model: nn.Module, step: int) -> None:
    """Raise :class:`NonFiniteLossError` if any weight of ``model`` is NaN/inf after optimizer step ``step`` (one
    host sync). An update can produce them from a finite loss and gradient (an overflowing Adam moment), so every
    save checks the weights."""
    named = [(n, t) for n, t in model.state_dict().items() if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).cpu()
    if not bool(finite.all()):
        bad = [n for (n, _), ok in zip(named, finite.tolist()) if not ok]
        raise NonFiniteLossError(
            f"weights became non-finite after optimizer step {step} "
            f"({len(bad)} of {len(named)} tensors, e.g. {', '.join(bad[:3])})"
        )


def on_main(info: DistInfo, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only; if it fails, every rank raises (instead of the others waiting forever)."""
    result, error, exc = None, None, None
    if info.is_main:
        try:
            result = fn()
        except Exception as e:
            exc, error = e, str(e)
    error = agree(error, info)
    if exc is not None:
        raise exc
    if error is not None:
        raise RuntimeError(f"rank 0 failed: {error}")
    return result


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
