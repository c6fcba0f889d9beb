"""``pretrain(cfg)``: masked-completion pretraining of CRATE-MAE / ViT-MAE, single process or under torchrun.

Run folder (``cfg.run.output_dir``)::

    config.yaml                 the fully resolved config
    metrics.jsonl               one JSON row per log step (and per epoch end)
    tb/                         TensorBoard scalars
    recon/epoch_XXXX.png        masked input | reconstruction | original for fixed images
    checkpoints/step_XXXXXXXX/  model (config.json + model.safetensors) + training_state.pt
    model/                      the final model (config.json + model.safetensors)
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import save_pretrained
from .checkpointing import (capture_rng, find_latest_checkpoint, resolve_resume, restore_rng,
                            restore_training_checkpoint, save_checkpoint)
from .config import PretrainConfig, save_config
from .distributed import DistInfo, barrier, cleanup_distributed, init_distributed, wrap_model
from .engine import NonFiniteLossError, StepMetrics, TrainState, train_one_epoch
from .optim import WarmupCosine, build_optimizer, effective_lr
from .sampling import EpochSampler, SeededSamples


def pretrain(cfg: PretrainConfig, dataset: Dataset | None = None, device: torch.device | str | None = None
             ) -> dict[str, Any]:
    """Pretrain ``cfg.model`` on ``cfg.data`` (or on ``dataset``, any Dataset of tensors or (tensor, label)).

    Under torchrun every process calls this; rank 0 alone writes files. Returns a summary dict (rank 0 and the
    others alike): output_dir, steps, epochs, lr, effective_batch, first/last loss, fixed-batch masked loss
    before/after, img_per_s, elapsed_s, checkpoint, model_dir, stopped ('completed' | 'max_steps' | 'max_minutes'),
    weights_sha256 (this rank's final weights).
    """
    import torch.distributed as dist

    cfg.validate()
    owns_group = not (dist.is_available() and dist.is_initialized())  # leave a caller's process group alone
    deterministic = torch.are_deterministic_algorithms_enabled()
    info = init_distributed(device)
    try:
        return _Run(cfg, info, dataset).fit()
    finally:
        torch.use_deterministic_algorithms(deterministic)
        if owns_group:
            cleanup_distributed()


class _Run:
    """The state of one pretraining run (model, data, optimizer, loggers) and its outer epoch loop."""

    def __init__(self, cfg: PretrainConfig, info: DistInfo, dataset: Dataset | None):
        self.cfg, self.info, self.device = cfg, info, info.device
        r, o = cfg.run, cfg.optim
        self.out = Path(r.output_dir)
        if r.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        self.amp_dtype = amp_dtype(r.amp, self.device)
        self.resume_from = resolve_resume(r.resume, self.out)

        # Identical init on every rank, then rank-specific streams for stochastic layers (drop path).
        torch.manual_seed(r.seed)
        from ..models import create_model

        self.model = create_model(cfg.model.name, img_size=cfg.data.img_size, **cfg.model.overrides).to(self.device)
        h, w = self.model.grid_size(torch.empty(1, self.model.config.get("in_chans", 3), cfg.data.img_size,
                                                cfg.data.img_size))
        self.num_patches = h * w
        seed_all(r.seed + info.rank)

        self.dataset = SeededSamples(dataset if dataset is not None else build_pretrain_dataset(cfg),
                                     self.num_patches, r.seed)
        self.sampler = EpochSampler(len(self.dataset), o.batch_size, r.seed, info.rank, info.world_size)
        self.steps_per_epoch = self.sampler.steps_per_epoch // o.accum_iter
        if self.steps_per_epoch < 1:
            raise ValueError(f"one epoch has {self.sampler.steps_per_epoch} batches, fewer than optim.accum_iter = "
                             f"{o.accum_iter}; use a larger dataset or smaller batch/accumulation")
        self.iters_per_epoch = self.steps_per_epoch * o.accum_iter
        loader_gen = torch.Generator().manual_seed(r.seed)  # keeps DataLoader seeding off the global RNG
        self.loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=cfg.data.num_workers,
                                 pin_memory=self.device.type == "cuda", generator=loader_gen)

        self.effective_batch = o.batch_size * o.accum_iter * info.world_size
        self.lr = effective_lr(o.blr, o.batch_size, o.accum_iter, info.world_size, o.lr)
        total = o.epochs * self.steps_per_epoch
        self.schedule = WarmupCosine(self.lr, total, min(total, round(o.warmup_epochs * self.steps_per_epoch)),
                                     o.min_lr)
        self.optimizer = build_optimizer(self.model, self.lr, o.weight_decay, o.betas, o.param_groups)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.state = TrainState()
        self.rng_to_restore = None
        if self.resume_from is not None:
            self._load(self.resume_from)

        self.net: nn.Module = wrap_model(self.model, info, r.compile)

        self.writer = None
        self.extra = {"data": {"mean": list(cfg.data.mean), "std": list(cfg.data.std), "img_size": cfg.data.img_size},
                      "pretrain": {"mask_ratio": cfg.model.mask_ratio}}
        self.fixed = self._fixed_batch()
        self.t0 = time.perf_counter()
        self.images_seen = 0
        self._epoch_losses: list[float] = []
        self._stop_reason = "completed"

    # -- the loop ---------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg, info, st = self.cfg, self.info, self.state
        if info.is_main:
            self._open_logs()
            self._log(f"model {cfg.model.name} ({self.model.num_params() / 1e6:.2f}M params) on {self.device}"
                      f"{f' x {info.world_size} processes' if info.enabled else ''}; {len(self.dataset)} images, "
                      f"{self.steps_per_epoch} steps/epoch, effective batch {self.effective_batch}, lr {self.lr:.3g}"
                      + (f"; resumed from {self.resume_from} (step {st.step})" if self.resume_from else ""))
        fixed_before = self._fixed_loss()
        if self.rng_to_restore is not None:
            restore_rng(self.rng_to_restore)
        stopped = "completed"
        try:
            while st.epoch < cfg.optim.epochs and stopped == "completed":
                self.sampler.set_epoch(st.epoch, st.iter_in_epoch)
                early = train_one_epoch(
                    self.net, self.loader, self.optimizer, self.schedule, st, iters=self.iters_per_epoch,
                    accum_iter=cfg.optim.accum_iter, mask_ratio=cfg.model.mask_ratio, device=self.device,
                    info=info, amp_dtype=self.amp_dtype, scaler=self.scaler, clip_grad=cfg.optim.clip_grad,
                    after_step=self._after_step, progress=self._progress_bar)
                if early:
                    stopped = self._stop_reason
                    break
                self._end_epoch()
        except NonFiniteLossError as e:
            last = find_latest_checkpoint(self.out)
            raise NonFiniteLossError(
                f"{e}. Training stopped; nothing was saved after the last good checkpoint "
                f"({last if last else 'none written yet'}). Try a lower optim.blr, optim.clip_grad, or check the "
                f"data for NaN/inf pixels.") from None
        ckpt = self._save() if stopped != "completed" else find_latest_checkpoint(self.out)
        fixed_after = self._fixed_loss()
        model_dir = self.out / "model"
        if info.is_main:
            save_pretrained(self.model, model_dir, extra=self.extra)
        barrier(info)
        elapsed = time.perf_counter() - self.t0
        summary = {
            "output_dir": str(self.out), "model_dir": str(model_dir), "checkpoint": str(ckpt) if ckpt else None,
            "steps": st.step, "epochs": st.epoch, "stopped": stopped, "lr": self.lr,
            "effective_batch": self.effective_batch, "world_size": info.world_size,
            "first_loss": st.history[0] if st.history else None, "last_loss": st.history[-1] if st.history else None,
            "fixed_loss_before": fixed_before, "fixed_loss_after": fixed_after,
            "img_per_s": self.images_seen / elapsed if elapsed > 0 else 0.0, "elapsed_s": elapsed,
            "weights_sha256": _state_sha256(self.model),
        }
        if info.is_main:
            self._write_row({"event": "end", **summary})
            self._log(f"done: {st.step} steps, masked loss on fixed images {fixed_before:.4f} -> {fixed_after:.4f}; "
                      f"model in {model_dir}")
            if self.writer is not None:
                self.writer.close()
        return summary

    def _after_step(self, m: StepMetrics) -> bool:
        r, info = self.cfg.run, self.info
        self.images_seen += self.cfg.optim.batch_size * self.cfg.optim.accum_iter * info.world_size
        self._epoch_losses.append(m.loss)
        if info.is_main and (m.step % r.log_every == 0 or m.epoch_end):
            row = {"step": m.step, "epoch": m.epoch + self.state.iter_in_epoch / self.iters_per_epoch,
                   "loss": m.loss, "lr": m.lr, "img_per_s": m.img_per_s, "time": time.time()}
            if m.grad_norm is not None:
                row["grad_norm"] = m.grad_norm
            self._write_row(row)
            for k in ("loss", "lr", "img_per_s", "grad_norm"):
                if k in row:
                    self.writer.add_scalar(f"train/{k}", row[k], m.step)
        if r.ckpt_every_steps and m.step % r.ckpt_every_steps == 0 and not m.epoch_end:
            self._save()
        if r.max_steps is not None and m.step >= r.max_steps:
            self._stop_reason = "max_steps"
            return True
        if r.max_minutes is not None and time.perf_counter() - self.t0 >= 60 * r.max_minutes:
            self._stop_reason = "max_minutes"
            return True
        return False

    def _end_epoch(self) -> None:
        st, r = self.state, self.cfg.run
        epoch = st.epoch
        st.epoch, st.iter_in_epoch = epoch + 1, 0
        losses, self._epoch_losses = self._epoch_losses, []
        self._save()
        if self.info.is_main:
            mean = sum(losses) / len(losses) if losses else float("nan")
            self._log(f"epoch {epoch + 1}/{self.cfg.optim.epochs}  loss {mean:.4f}  lr "
                      f"{self.optimizer.param_groups[0]['lr']:.3g}  step {st.step}  "
                      f"{time.perf_counter() - self.t0:.0f}s")
            self._write_row({"event": "epoch", "epoch": epoch + 1, "step": st.step, "loss": mean})
            self.writer.add_scalar("epoch/loss", mean, epoch + 1)
            last = st.epoch == self.cfg.optim.epochs
            if r.vis_every_epochs and (st.epoch % r.vis_every_epochs == 0 or last) and self.fixed is not None:
                self._visualize(self.out / "recon" / f"epoch_{st.epoch:04d}.png", f"epoch {st.epoch}")

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def _save(self) -> Path | None:
        """Checkpoint the current step (rank 0 writes; every rank contributes its RNG state)."""
        rngs = [capture_rng()]
        if self.info.enabled:
            import torch.distributed as dist

            rngs = [None] * self.info.world_size
            dist.all_gather_object(rngs, capture_rng())
        path = None
        if self.info.is_main:
            st = self.state
            state = {"step": st.step, "epoch": st.epoch, "iter_in_epoch": st.iter_in_epoch,
                     "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                     "schedule": self.schedule.state_dict(), "rng": rngs, "world_size": self.info.world_size,
                     "config": self.cfg.to_dict()}
            path = save_checkpoint(self.out, self.model, state, extra=self.extra, keep=self.cfg.run.keep_checkpoints)
        barrier(self.info)
        return path

    def _load(self, path: Path) -> None:
        state = restore_training_checkpoint(path, self.model, self.optimizer, self.scaler, self.device)
        self.state = TrainState(epoch=state["epoch"], step=state["step"], iter_in_epoch=state["iter_in_epoch"])
        if state["iter_in_epoch"] >= self.iters_per_epoch:  # saved at the very end of an epoch
            self.state.epoch, self.state.iter_in_epoch = state["epoch"] + 1, 0
        if state["world_size"] == self.info.world_size:
            self.rng_to_restore = state["rng"][self.info.rank]
        elif self.info.is_main:
            self._log(f"warning: checkpoint written by {state['world_size']} processes, resuming with "
                      f"{self.info.world_size}; data order and losses continue, but not bit-exactly")
        self._truncate_metrics(self.state.step)

    # -- logging / pictures -----------------------------------------------------------------------------------------
    def _open_logs(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.out / "config.yaml")
        self.writer = SummaryWriter(str(self.out / "tb"), purge_step=self.state.step + 1 if self.state.step else None)

    def _truncate_metrics(self, step: int) -> None:
        """On resume drop metric rows written after the checkpoint, so metrics.jsonl reads as one clean run."""
        path = self.out / "metrics.jsonl"
        if not self.info.is_main or not path.is_file():
            return
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        keep = [line for line in rows if json.loads(line).get("step", 0) <= step and json.loads(line).get("event")
                != "end"]
        path.write_text("".join(line + "\n" for line in keep))

    def _write_row(self, row: dict) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, default=float) + "\n")

    def _log(self, msg: str) -> None:
        from tqdm import tqdm

        tqdm.write(msg)

    def _progress_bar(self, total: int):
        if not (self.info.is_main and self.cfg.run.progress):
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=f"epoch {self.state.epoch + 1}/{self.cfg.optim.epochs}", leave=False,
                    dynamic_ncols=True)

    def _fixed_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The first ``vis_images`` samples (epoch-0 augmentation) with fixed masking noise, for pictures and the
        before/after masked loss."""
        n = min(max(self.cfg.run.vis_images, 1), len(self.dataset))
        items = [self.dataset[(0, i)] for i in range(n)]
        return torch.stack([x for x, _ in items]), torch.stack([z for _, z in items])

    @torch.no_grad()
    def _fixed_loss(self) -> float:
        imgs, noise = self.fixed
        was = self.model.training
        self.model.eval()
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            loss = self.model(imgs.to(self.device), mask_ratio=self.cfg.model.mask_ratio,
                              noise=noise.to(self.device)).loss.float().item()
        self.model.train(was)
        return loss

    def _visualize(self, path: Path, title: str) -> None:
        from .visualize import save_reconstruction_grid

        imgs, noise = self.fixed
        save_reconstruction_grid(self.model, imgs.to(self.device), path, self.cfg.data.mean, self.cfg.data.std,
                                 self.cfg.model.mask_ratio, noise.to(self.device), title=title)


def build_pretrain_dataset(cfg: PretrainConfig) -> Dataset:
    """The dataset ``cfg.data`` describes, with MAE pretraining augmentation (via :mod:`crate_mae.data`)."""
    from ..data import book_pretrain_transform, build_dataset, pretrain_transform

    d = cfg.data
    if d.augment == "book":
        transform = book_pretrain_transform(d.img_size, mean=d.mean, std=d.std, hflip=d.hflip)
    else:
        transform = pretrain_transform(d.img_size, mean=d.mean, std=d.std, scale=d.scale, hflip=d.hflip)
    if d.demo:
        from ..data.demo import DemoPhotos

        return DemoPhotos(num_samples=d.demo_samples, img_size=d.img_size, transform=transform, seed=cfg.run.seed)
    return build_dataset(d.path, split=d.split, transform=transform, kind=d.kind, strict=d.strict)


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError(f"run.amp = 'fp16' needs a CUDA device, running on {device}; use 'bf16' or 'off'")
        return torch.float16
    return None


def _state_sha256(model: nn.Module) -> str:
    """Fingerprint of this process's weights (equal on every rank of a healthy DDP run; equal across reruns when
    training is deterministic)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
