"""End-to-end fine-tuning of an encoder as an image classifier (facebookresearch/mae ``main_finetune.py`` recipe).

    from crate_mae.evaluation.finetune import load_finetune_config, finetune
    result = finetune(load_finetune_config("configs/finetune_cifar.yaml", ["optim.epochs=10"]))

- model: ``crate_mae.load_encoder(checkpoint, num_classes, global_pool, drop_path_rate)`` for a CRATE-MAE / ViT-MAE /
  CRATE checkpoint, or ``create_model(name)`` from scratch; stochastic depth ``drop_path_rate``;
- data: timm's training transform (RandomResizedCrop, flip, RandAugment, random erasing), the deterministic eval
  transform for val; train and val must have the same classes;
- loss: mixup / cutmix (``timm.data.Mixup``) with label smoothing and ``SoftTargetCrossEntropy``;
- optimiser: AdamW on :func:`param_groups_lrd` (layer-wise lr decay, no weight decay on 1-D parameters and
  tokens), per-step warm-up + half-cosine schedule (``crate_mae.training.WarmupCosine``), lr = blr * batch / 256;
- bookkeeping shared with pretraining (``crate_mae.training``): torchrun DDP, :class:`EpochSampler` data order,
  atomic step checkpoints with optimizer + RNG state and ``run.resume``, metrics.jsonl + TensorBoard; the best
  val top-1 model is saved to ``<output_dir>/best`` and a result JSON to ``<output_dir>/result.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..training.config import Checks, RunConfig, build_sections, plain, read_raw_config
from ..training.distributed import wrap_model
from ..training.pretrain import amp_dtype, seed_all  # same precision and seeding policy as pretraining

# -- configuration -------------------------------------------------------------------------------------------------


@dataclass
class FinetuneModelConfig:
    """The classifier: an encoder from ``checkpoint`` (any format load_checkpoint reads) or ``name`` from scratch."""

    checkpoint: str | None = None
    name: str = "crate_tiny"        # used when checkpoint is null (a crate_* or vit_* classifier name)
    overrides: dict[str, Any] = field(default_factory=dict)  # load_checkpoint / constructor overrides (num_heads=...)
    global_pool: str = "token"      # 'token' (cls) or 'avg' (mean of patch tokens)
    drop_path_rate: float = 0.1


@dataclass
class FinetuneDataConfig:
    path: str | None = None
    kind: str = "auto"
    train_split: str | None = "train"
    val_split: str | None = "val"
    img_size: int | None = None     # null: the checkpoint's pretraining size
    mean: tuple[float, float, float] | None = None  # null: the checkpoint's pretraining statistics (else ImageNet)
    std: tuple[float, float, float] | None = None
    crop_pct: float | None = None   # eval resize/crop; null: 0.875 at >= 96 px, 1.0 below
    num_workers: int = 4
    strict: bool = False


@dataclass
class FinetuneAugConfig:
    """Training augmentation and label mixing (MAE fine-tune defaults)."""

    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    rand_augment: str | None = "rand-m9-mstd0.5-inc1"  # timm auto_augment string; null = off
    reprob: float = 0.25            # random erasing probability
    mixup: float = 0.8              # mixup alpha (0 = off)
    cutmix: float = 1.0             # cutmix alpha (0 = off)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1


@dataclass
class FinetuneOptimConfig:
    batch_size: int = 64
    accum_iter: int = 1
    epochs: int = 100
    warmup_epochs: float = 5
    blr: float = 5e-4
    lr: float | None = None
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = None


@dataclass
class FinetuneConfig:
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    aug: FinetuneAugConfig = field(default_factory=FinetuneAugConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/finetune", ckpt_every_steps=0))

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    def validate(self) -> "FinetuneConfig":
        errors = _validate(self)
        if errors:
            raise ValueError("invalid fine-tuning config:\n  " + "\n  ".join(errors))
        return self


_SECTIONS = {"model": FinetuneModelConfig, "data": FinetuneDataConfig, "aug": FinetuneAugConfig,
             "optim": FinetuneOptimConfig, "run": RunConfig}


def load_finetune_config(path: str | os.PathLike | None = None,
                         overrides: Sequence[str] | dict[str, Any] | None = None) -> FinetuneConfig:
    """YAML file (or defaults) + ``section.key=value`` overrides -> validated :class:`FinetuneConfig`; every
    unknown key and bad value is reported at once (the same rules as ``crate_mae.training.load_config``)."""
    kwargs = build_sections(read_raw_config(path, overrides), _SECTIONS, "fine-tuning")
    if "run" not in kwargs:
        kwargs["run"] = RunConfig(output_dir="runs/finetune", ckpt_every_steps=0)
    return FinetuneConfig(**kwargs).validate()


def _validate(cfg: FinetuneConfig) -> list[str]:
    check = Checks()
    num = check.number

    def pos_int(v: Any) -> bool:
        return check.integer(v) and v >= 1

    m, d, a, o = cfg.model, cfg.data, cfg.aug, cfg.optim
    check(m.global_pool in ("token", "avg"), "model.global_pool", m.global_pool, "must be 'token' or 'avg'")
    check(num(m.drop_path_rate) and 0 <= m.drop_path_rate < 1, "model.drop_path_rate", m.drop_path_rate,
          "must be in [0, 1)")
    check(isinstance(m.overrides, dict), "model.overrides", m.overrides, "must be a mapping")
    if m.checkpoint is None:
        from ..models.registry import _MODELS

        check(m.name in _MODELS and not m.name.startswith(("crate_mae_", "vit_mae_")), "model.name", m.name,
              "must be a registered encoder classifier (crate_*) when model.checkpoint is null")
    check(d.path is not None, "data.path", d.path, "required (an ImageFolder root or CIFAR directory)")
    check(d.img_size is None or pos_int(d.img_size), "data.img_size", d.img_size, "must be a positive integer")
    for key in ("mean", "std"):
        v = getattr(d, key)
        check(v is None or (isinstance(v, tuple) and len(v) == 3 and all(num(x) for x in v)), f"data.{key}", v,
              "must be null or 3 numbers")
    check(d.crop_pct is None or (num(d.crop_pct) and 0 < d.crop_pct <= 1), "data.crop_pct", d.crop_pct,
          "must be in (0, 1]")
    check(isinstance(a.scale, tuple) and len(a.scale) == 2 and 0 < a.scale[0] <= a.scale[1] <= 1, "aug.scale",
          a.scale, "must be [lo, hi] with 0 < lo <= hi <= 1")
    for key in ("hflip", "reprob", "mixup_prob", "mixup_switch_prob"):
        v = getattr(a, key)
        check(num(v) and 0 <= v <= 1, f"aug.{key}", v, "must be in [0, 1]")
    for key in ("mixup", "cutmix"):
        check(num(getattr(a, key)) and getattr(a, key) >= 0, f"aug.{key}", getattr(a, key), "must be >= 0")
    check(num(a.smoothing) and 0 <= a.smoothing < 1, "aug.smoothing", a.smoothing, "must be in [0, 1)")
    check(a.rand_augment is None or (isinstance(a.rand_augment, str) and a.rand_augment.startswith("rand")),
          "aug.rand_augment", a.rand_augment, "must be null or a timm RandAugment string like 'rand-m9-mstd0.5'")
    check.optim(o)
    check(num(o.layer_decay) and 0 < o.layer_decay <= 1, "optim.layer_decay", o.layer_decay, "must be in (0, 1]")
    check.run(cfg.run)
    return check.errors


# -- layer-wise lr decay -----------------------------------------------------------------------------------------------
def layer_id(name: str, num_layers: int) -> int:
    """MAE ``lr_decay.get_layer_id_for_vit``: tokens, position table and patch embedding are layer 0, block ``i`` is
    layer ``i + 1``, everything after the blocks (final norm, head) is layer ``num_layers`` (= depth + 1)."""
    if name in ("cls_token", "pos_embed", "mask_token") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups_lrd(model: nn.Module, weight_decay: float = 0.05, layer_decay: float = 0.75,
                     no_weight_decay_list: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Parameter groups for layer-wise lr decay (facebookresearch/mae ``util/lr_decay.param_groups_lrd``).

    With ``L = depth + 1`` a parameter of layer ``j`` (:func:`layer_id`) gets ``lr_scale = layer_decay ** (L - j)``:
    the head and final norm train at the full lr, block ``i`` at ``layer_decay ** (depth - i)``, the patch
    embedding and tokens at ``layer_decay ** (depth + 1)``. 1-D parameters (norms, biases) and names in
    ``no_weight_decay_list`` get no weight decay. Works for CrateEncoder and timm ViTs (same parameter names)."""
    if not isinstance(getattr(model, "blocks", None), (nn.ModuleList, nn.Sequential)):
        raise ValueError(f"{type(model).__name__} has no .blocks; layer-wise lr decay needs an encoder classifier")
    num_layers = len(model.blocks) + 1
    scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
    groups: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim == 1 or name in no_weight_decay_list
        lid = layer_id(name, num_layers)
        key = f"layer_{lid}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            groups[key] = {"lr_scale": scales[lid], "weight_decay": 0.0 if no_decay else weight_decay,
                           "params": [], "param_names": []}
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return list(groups.values())


# -- data --------------------------------------------------------------------------------------------------------------
class SeededLabelled(Dataset):
    """``ds[(epoch, i)] -> (image, label)`` augmented under the seed ``sample_seed(seed, epoch, i)``, so the
    augmentation of every sample is a function of (seed, epoch, index) whatever the worker, rank or restart."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        import random

        import numpy as np

        from ..training.sampling import sample_seed

        epoch, index = key
        s = sample_seed(self.seed, epoch, index)
        state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)  # timm's RandAugment and random erasing draw from python's `random`
            np.random.seed(s % 2**32)
            img, label = self.dataset[index]
        random.setstate(state[0])
        np.random.set_state(state[1])
        return img, label


def train_transform(img_size: int, mean: Sequence[float], std: Sequence[float], aug: FinetuneAugConfig):
    """timm's ImageNet training pipeline: RandomResizedCrop(scale, bicubic), flip, RandAugment, ToTensor,
    Normalize, random erasing (pixel mode)."""
    from timm.data import create_transform

    return create_transform(img_size, is_training=True, scale=tuple(aug.scale), hflip=aug.hflip, vflip=0.0,
                            color_jitter=None, auto_augment=aug.rand_augment, interpolation="bicubic",
                            mean=tuple(mean), std=tuple(std), re_prob=aug.reprob, re_mode="pixel", re_count=1)


def build_mixup(aug: FinetuneAugConfig, num_classes: int):
    """``timm.data.Mixup`` (batch mode; it also applies label smoothing to the one-hot targets) when mixup or
    cutmix is on, else None."""
    if aug.mixup <= 0 and aug.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, prob=aug.mixup_prob,
                 switch_prob=aug.mixup_switch_prob, mode="batch", label_smoothing=aug.smoothing,
                 num_classes=num_classes)


def build_criterion(aug: FinetuneAugConfig, mixup) -> nn.Module:
    """Soft-target cross-entropy after mixup; label-smoothing cross-entropy or plain cross-entropy otherwise."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup is not None:
        return SoftTargetCrossEntropy()
    if aug.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=aug.smoothing)
    return nn.CrossEntropyLoss()


# -- the run -----------------------------------------------------------------------------------------------------------
def build_classifier(cfg: FinetuneConfig, num_classes: int, img_size: int | None) -> nn.Module:
    import crate_mae

    m = cfg.model
    if m.checkpoint is not None:
        return crate_mae.load_encoder(m.checkpoint, num_classes=num_classes, global_pool=m.global_pool,
                                      drop_path_rate=m.drop_path_rate, **m.overrides)
    kw = dict(m.overrides)
    if img_size is not None:
        kw.setdefault("img_size", img_size)
    return crate_mae.create_model(m.name, num_classes=num_classes, global_pool=m.global_pool,
                                  drop_path_rate=m.drop_path_rate, **kw)


def finetune(cfg: FinetuneConfig, train_dataset: Dataset | None = None, val_dataset: Dataset | None = None,
             device: torch.device | str | None = None) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.data`` (or on the given datasets of ``(image tensor, label)``, which must
    then carry ``.classes`` and their own transforms). Returns the result dict also written to
    ``<output_dir>/result.json`` (metrics: final and best val top-1 / top-5)."""
    from ..training.distributed import cleanup_distributed, init_distributed

    cfg.validate()
    info = init_distributed(device)
    try:
        return _Finetune(cfg, info, train_dataset, val_dataset).fit()
    finally:
        cleanup_distributed()


class _Finetune:
    def __init__(self, cfg: FinetuneConfig, info, train_dataset: Dataset | None, val_dataset: Dataset | None):
        from ..training.checkpointing import resolve_resume
        from ..training.optim import WarmupCosine, effective_lr
        from ..training.sampling import EpochSampler
        from .features import check_same_classes, default_crop_pct, model_data_config

        self.cfg, self.info, self.device = cfg, info, info.device
        d, o, r = cfg.data, cfg.optim, cfg.run
        self.out = Path(r.output_dir)
        self.amp_dtype = amp_dtype(r.amp, self.device)
        self.resume_from = resolve_resume(r.resume, self.out)
        torch.manual_seed(r.seed)

        # The checkpoint decides size and normalisation unless the config does.
        self.model = None
        if cfg.model.checkpoint is not None:
            probe = build_classifier(cfg, 0, None)
            dc = model_data_config(probe)
            del probe
        else:
            from ..models.registry import model_defaults

            dc = {"img_size": cfg.model.overrides.get("img_size", model_defaults(cfg.model.name).get("img_size")),
                  "mean": None, "std": None}
        img_size = d.img_size or dc["img_size"] or 224
        from ..data import IMAGENET_MEAN, IMAGENET_STD

        mean = list(d.mean or dc["mean"] or IMAGENET_MEAN)
        std = list(d.std or dc["std"] or IMAGENET_STD)
        self.data_info = {"img_size": img_size, "mean": mean, "std": std,
                          "crop_pct": d.crop_pct if d.crop_pct is not None else default_crop_pct(img_size)}
        if train_dataset is None or val_dataset is None:
            from .. import data as D

            train_dataset = D.build_dataset(d.path, split=d.train_split, kind=d.kind, strict=d.strict,
                                            transform=train_transform(img_size, mean, std, cfg.aug))
            val_dataset = D.build_dataset(d.path, split=d.val_split, kind=d.kind, strict=d.strict,
                                          transform=D.eval_transform(img_size, crop_pct=self.data_info["crop_pct"],
                                                                     mean=mean, std=std))
        self.classes = list(train_dataset.classes)
        check_same_classes(self.classes, val_dataset.classes, f"train split ({d.train_split})",
                           f"val split ({d.val_split})")
        self.num_classes = len(self.classes)

        torch.manual_seed(r.seed)  # identical head init on every rank
        self.model = build_classifier(cfg, self.num_classes, img_size).to(self.device)
        seed_all(r.seed + info.rank)  # rank-specific streams for drop path and mixup (numpy), as in pretraining
        self.train_set = SeededLabelled(train_dataset, r.seed)
        self.val_set = val_dataset
        self.sampler = EpochSampler(len(self.train_set), o.batch_size, r.seed, info.rank, info.world_size)
        self.steps_per_epoch = self.sampler.steps_per_epoch // o.accum_iter
        if self.steps_per_epoch < 1:
            raise ValueError(f"one epoch has {self.sampler.steps_per_epoch} batches, fewer than optim.accum_iter = "
                             f"{o.accum_iter}")
        self.iters_per_epoch = self.steps_per_epoch * o.accum_iter
        self.loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=d.num_workers,
                                 pin_memory=self.device.type == "cuda",
                                 generator=torch.Generator().manual_seed(r.seed))
        self.mixup = build_mixup(cfg.aug, self.num_classes)
        if self.mixup is not None and o.batch_size % 2:
            raise ValueError(f"mixup/cutmix needs an even optim.batch_size, got {o.batch_size}")
        self.criterion = build_criterion(cfg.aug, self.mixup)

        self.lr = effective_lr(o.blr, o.batch_size, o.accum_iter, info.world_size, o.lr)
        total = o.epochs * self.steps_per_epoch
        self.schedule = WarmupCosine(self.lr, total, min(total, round(o.warmup_epochs * self.steps_per_epoch)),
                                     o.min_lr)
        skip = set(self.model.no_weight_decay()) if hasattr(self.model, "no_weight_decay") else set()
        groups = param_groups_lrd(self.model, o.weight_decay, o.layer_decay, skip)
        for g in groups:
            g.pop("param_names")
        self.optimizer = torch.optim.AdamW(groups, lr=self.lr, betas=tuple(o.betas))
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.epoch, self.step, self.iter_in_epoch = 0, 0, 0
        self.best = {"top1": -1.0, "top5": 0.0, "epoch": 0}
        self.history: list[dict[str, float]] = []
        self.rng_to_restore = None
        if self.resume_from is not None:
            self._load(self.resume_from)
        self.net: nn.Module = wrap_model(self.model, info, cfg.run.compile)
        self.writer = None
        self.extra = {"data": {k: self.data_info[k] for k in ("img_size", "mean", "std")}, "classes": self.classes,
                      "finetune": {"checkpoint": cfg.model.checkpoint, "global_pool": cfg.model.global_pool}}
        self.t0 = time.perf_counter()

    # -- loop -------------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        from ..training.checkpointing import restore_rng

        cfg, info = self.cfg, self.info
        if info.is_main:
            self._open_logs()
            n = sum(p.numel() for p in self.model.parameters())
            self._log(f"fine-tuning {cfg.model.checkpoint or cfg.model.name} ({n / 1e6:.2f}M params) on "
                      f"{self.device}: {len(self.train_set)} train / {len(self.val_set)} val images, "
                      f"{self.num_classes} classes, {self.steps_per_epoch} steps/epoch, lr {self.lr:.3g}"
                      + (f"; resumed from {self.resume_from} (epoch {self.epoch}, step {self.step})"
                         if self.resume_from else ""))
        if self.rng_to_restore is not None:
            restore_rng(self.rng_to_restore)
        stopped = "completed"
        last_eval = self.history[-1] if self.history else None
        while self.epoch < cfg.optim.epochs:
            stopped = self._train_epoch()
            if stopped != "completed":
                break
            last_eval = self._end_epoch()
        if stopped != "completed":
            self._save()
        if last_eval is None or stopped != "completed":
            last_eval = self.evaluate()
        return self._finish(stopped, last_eval)

    def _train_epoch(self) -> str:
        o, r = self.cfg.optim, self.cfg.run
        self.sampler.set_epoch(self.epoch, self.iter_in_epoch)
        self.net.train()
        accum = o.accum_iter
        bar = self._bar()
        losses = []
        for imgs, labels in self.loader:
            imgs = imgs.to(self.device, non_blocking=True)
            labels = torch.as_tensor(labels).to(self.device, non_blocking=True)
            if self.mixup is not None:
                imgs, labels = self.mixup(imgs, labels)
            if self.iter_in_epoch % accum == 0:
                lr = self.schedule.apply(self.optimizer, self.step)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                loss = self.criterion(self.net(imgs), labels)
            if not torch.isfinite(loss):
                raise RuntimeError(f"fine-tuning loss became {loss.item()} at step {self.step}; lower optim.blr or "
                                   "set optim.clip_grad")
            self.iter_in_epoch += 1
            boundary = self.iter_in_epoch % accum == 0
            sync = self.net.no_sync() if (self.info.enabled and not boundary) else _null()
            with sync:
                (self.scaler.scale(loss / accum) if self.scaler else loss / accum).backward()
            losses.append(loss.item())
            if not boundary:
                continue
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            if o.clip_grad:
                nn.utils.clip_grad_norm_(self.model.parameters(), o.clip_grad)
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            if bar is not None:
                bar.update(1)
            if self.info.is_main and self.step % r.log_every == 0:
                row = {"step": self.step, "epoch": self.epoch + self.iter_in_epoch / self.iters_per_epoch,
                       "loss": sum(losses[-accum:]) / accum, "lr": lr, "time": time.time()}
                self._write_row(row)
                self.writer.add_scalar("train/loss", row["loss"], self.step)
                self.writer.add_scalar("train/lr", lr, self.step)
            if r.ckpt_every_steps and self.step % r.ckpt_every_steps == 0 and self.iter_in_epoch < self.iters_per_epoch:
                self._save()
            if r.max_steps is not None and self.step >= r.max_steps:
                return "max_steps"
            if r.max_minutes is not None and time.perf_counter() - self.t0 >= 60 * r.max_minutes:
                return "max_minutes"
        if bar is not None:
            bar.close()
        self._train_loss = sum(losses) / len(losses) if losses else float("nan")  # nan: resumed at epoch end
        return "completed"

    def _end_epoch(self) -> dict[str, float]:
        from ..checkpoint import save_pretrained

        self.epoch, self.iter_in_epoch = self.epoch + 1, 0
        ev = self.evaluate()
        ev = {"epoch": self.epoch, "step": self.step, "train_loss": self._train_loss, **ev}
        self.history.append(ev)
        improved = ev["top1"] > self.best["top1"]
        if improved:
            self.best = {"top1": ev["top1"], "top5": ev["top5"], "epoch": self.epoch}
        if self.info.is_main:
            if improved:
                save_pretrained(self.model, self.out / "best", extra={**self.extra, "best": self.best})
            self._log(f"epoch {self.epoch}/{self.cfg.optim.epochs}  train loss {ev['train_loss']:.4f}  val top1 "
                      f"{ev['top1']:.2f}  top5 {ev['top5']:.2f}  (best {self.best['top1']:.2f} @ {self.best['epoch']})"
                      f"  {time.perf_counter() - self.t0:.0f}s")
            self._write_row({"event": "epoch", **ev})
            for k in ("top1", "top5", "loss"):
                self.writer.add_scalar(f"val/{k}", ev[k], self.epoch)
        self._save()
        return ev

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Val loss / top-1 / top-5 (%) of the current model; each rank scores a shard, counts are summed."""
        import torch.distributed as dist

        self.model.eval()
        shard = list(range(self.info.rank, len(self.val_set), self.info.world_size))
        loader = DataLoader(torch.utils.data.Subset(self.val_set, shard), batch_size=self.cfg.optim.batch_size,
                            shuffle=False, num_workers=self.cfg.data.num_workers)
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, top1, top5, n
        for imgs, labels in loader:
            imgs, labels = imgs.to(self.device), torch.as_tensor(labels).to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                logits = self.model(imgs).float()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            sums += torch.stack([F.cross_entropy(logits, labels, reduction="sum"),
                                 (top[:, 0] == labels).sum(), (top == labels[:, None]).any(1).sum(),
                                 torch.tensor(labels.shape[0], device=self.device)]).double()
        if self.info.enabled:
            dist.all_reduce(sums)
        self.model.train()
        n = max(sums[3].item(), 1)
        return {"loss": sums[0].item() / n, "top1": 100 * sums[1].item() / n, "top5": 100 * sums[2].item() / n}

    def _finish(self, stopped: str, last: dict[str, float]) -> dict[str, Any]:
        from ..training.distributed import barrier
        from .features import checkpoint_sha256
        from .results import make_result, summary_line, write_result

        cfg = self.cfg
        sha = None
        if cfg.model.checkpoint is not None:
            sha = checkpoint_sha256(cfg.model.checkpoint)
        best = self.best if self.best["top1"] >= 0 else {"top1": last["top1"], "top5": last["top5"],
                                                          "epoch": self.epoch}
        result = make_result(
            "finetune", {"top1": last["top1"], "top5": last["top5"], "best_top1": best["top1"],
                         "best_top5": best["top5"]},
            checkpoint=cfg.model.checkpoint or f"{cfg.model.name} (scratch)", checkpoint_sha256=sha,
            dataset={"path": cfg.data.path, "train": cfg.data.train_split, "val": cfg.data.val_split,
                     "num_train": len(self.train_set), "num_val": len(self.val_set), "num_classes": self.num_classes,
                     "transform": self.data_info},
            config=cfg.to_dict(),
            details={"stopped": stopped, "epochs": self.epoch, "steps": self.step, "best_epoch": best["epoch"],
                     "lr": self.lr, "history": self.history, "best_model": str(self.out / "best"),
                     "elapsed_s": time.perf_counter() - self.t0})
        if self.info.is_main:
            write_result(result, self.out / "result.json")
            self._write_row({"event": "end", "step": self.step, **result["metrics"]})
            self._log(summary_line(result))
            if self.writer is not None:
                self.writer.close()
        barrier(self.info)
        return result

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def _save(self) -> None:
        from ..training.checkpointing import capture_rng, save_checkpoint
        from ..training.distributed import barrier

        rngs = [capture_rng()]
        if self.info.enabled:
            import torch.distributed as dist

            rngs = [None] * self.info.world_size
            dist.all_gather_object(rngs, capture_rng())
        if self.info.is_main:
            state = {"step": self.step, "epoch": self.epoch, "iter_in_epoch": self.iter_in_epoch,
                     "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                     "schedule": self.schedule.state_dict(), "rng": rngs, "world_size": self.info.world_size,
                     "best": self.best, "history": json.dumps(self.history), "config": self.cfg.to_dict()}
            save_checkpoint(self.out, self.model, state, extra=self.extra, keep=self.cfg.run.keep_checkpoints)
        barrier(self.info)

    def _load(self, path: Path) -> None:
        from ..training.checkpointing import restore_training_checkpoint

        state = restore_training_checkpoint(path, self.model, self.optimizer, self.scaler, self.device)
        self.epoch, self.step, self.iter_in_epoch = state["epoch"], state["step"], state["iter_in_epoch"]
        self.best = dict(state["best"])
        self.history = json.loads(state["history"])
        if state["world_size"] == self.info.world_size:
            self.rng_to_restore = state["rng"][self.info.rank]

    # -- logging ----------------------------------------------------------------------------------------------------
    def _open_logs(self) -> None:
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        from ..utils import atomic_write

        self.out.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)
        atomic_write(self.out / "config.yaml", lambda tmp: Path(tmp).write_text(text))
        path = self.out / "metrics.jsonl"
        if path.is_file():  # on resume keep only rows up to the checkpoint, so the log reads as one run
            rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            keep = [x for x in rows if x.get("step", 0) <= self.step and x.get("event") != "end"]
            path.write_text("".join(json.dumps(x) + "\n" for x in keep))
        self.writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step + 1 if self.step else None)

    def _write_row(self, row: dict) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, default=float) + "\n")

    def _log(self, msg: str) -> None:
        from tqdm import tqdm

        tqdm.write(msg)

    def _bar(self):
        if not (self.info.is_main and self.cfg.run.progress):
            return None
        from tqdm import tqdm

        return tqdm(total=self.steps_per_epoch - self.iter_in_epoch // self.cfg.optim.accum_iter,
                    desc=f"epoch {self.epoch + 1}/{self.cfg.optim.epochs}", leave=False, dynamic_ncols=True)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
