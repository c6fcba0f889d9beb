"""One pretraining epoch (the counterpart of facebookresearch/mae ``engine_pretrain.train_one_epoch``)."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn as nn

from .distributed import DistInfo, all_reduce_mean
from .optim import WarmupCosine


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; training stopped before the update was applied."""


@dataclass
class TrainState:
    """Where training stands. ``step`` counts optimizer steps over the whole run; ``iter_in_epoch`` counts the
    data iterations (micro-batches) of the current epoch already consumed."""

    epoch: int = 0
    step: int = 0
    iter_in_epoch: int = 0
    history: list[float] = field(default_factory=list)  # mean loss of each optimizer step (this process's run)


@dataclass
class StepMetrics:
    epoch: int
    step: int
    loss: float
    lr: float
    grad_norm: float | None
    img_per_s: float
    epoch_end: bool


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, schedule: WarmupCosine,
                    state: TrainState, *, iters: int, accum_iter: int, mask_ratio: float, device: torch.device,
                    info: DistInfo, amp_dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
                    clip_grad: float | None = None, after_step: Callable[[StepMetrics], bool] | None = None,
                    progress: Callable[[int], object] | None = None) -> bool:
    """Train until ``state.iter_in_epoch == iters``.

    Each micro-batch ``(imgs, noise)`` gives ``loss / accum_iter``; gradients accumulate (without DDP all-reduce
    until the last micro-batch) and every ``accum_iter`` micro-batches the lr is set for ``state.step``, gradients
    are unscaled / clipped and the optimizer steps. The loss is averaged over ranks every micro-batch and checked:
    a non-finite value raises :class:`NonFiniteLossError` before any update uses it.

    ``after_step(metrics)`` runs after every optimizer step (logging, checkpoints); returning True stops early.
    Returns True when stopped early.
    """
    model.train()
    bar = progress(iters - state.iter_in_epoch) if progress is not None else None
    t_last, n_last = time.perf_counter(), 0
    loss_acc = 0.0
    optimizer.zero_grad(set_to_none=True)
    for imgs, noise in loader:
        imgs = imgs.to(device, non_blocking=True)
        noise = noise.to(device, non_blocking=True)
        micro = state.iter_in_epoch % accum_iter
        if micro == 0:
            lr = schedule.apply(optimizer, state.step)
        boundary = micro == accum_iter - 1
        sync = contextlib.nullcontext() if boundary or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = model(imgs, mask_ratio=mask_ratio, noise=noise).loss
            loss_value = all_reduce_mean(loss.detach().float(), info).item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(f"loss is {loss_value} at epoch {state.epoch}, optimizer step {state.step} "
                                         f"(lr {optimizer.param_groups[0]['lr']:.3g})")
            scaled = loss / accum_iter
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_acc += loss_value / accum_iter
        state.iter_in_epoch += 1
        n_last += imgs.shape[0] * info.world_size
        if not boundary:
            continue
        grad_norm = _step(model, optimizer, scaler, clip_grad, state)
        state.step += 1
        state.history.append(loss_acc)
        now = time.perf_counter()
        metrics = StepMetrics(epoch=state.epoch, step=state.step, loss=loss_acc, lr=lr, grad_norm=grad_norm,
                              img_per_s=n_last / max(now - t_last, 1e-9), epoch_end=state.iter_in_epoch >= iters)
        t_last, n_last, loss_acc = now, 0, 0.0
        if bar is not None:
            bar.update(accum_iter)
            bar.set_postfix(loss=f"{metrics.loss:.4f}", lr=f"{lr:.2e}", img_s=f"{metrics.img_per_s:.0f}")
        if after_step is not None and after_step(metrics):
            _close(bar)
            return True
        if state.iter_in_epoch >= iters:
            break
    _close(bar)
    return False


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
          clip_grad: float | None, state: TrainState) -> float | None:
    """Unscale, clip, check and apply the accumulated gradients. Returns the pre-clip gradient norm."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = None
    if clip_grad is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad).item()
        # fp16 overflow is normal (the scaler skips the step); in fp32 / bf16 a non-finite gradient is a failure.
        if not math.isfinite(grad_norm) and scaler is None:
            raise NonFiniteLossError(f"gradient norm is {grad_norm} at epoch {state.epoch}, optimizer step "
                                     f"{state.step}")
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _close(bar) -> None:
    if bar is not None:
        bar.close()
