"""The fine-tuning config: YAML file + ``section.key=value`` overrides -> validated :class:`FinetuneConfig`.

Its ``run`` section is the engine's :class:`~crate_mae.engine.config.RunConfig` (checkpointing at epoch ends only by
default); ``model``, ``data``, ``aug`` and ``optim`` (with the layer-wise lr decay) are fine-tuning's own. The same
rules as the pretraining config: every unknown key and bad value is reported at once, by its dotted name.

    from crate_mae.evaluation.finetune_config import load_finetune_config
    cfg = load_finetune_config("configs/finetune_cifar.yaml", ["optim.epochs=10"])
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..engine.config import Checks, RunConfig, build_sections, plain, read_raw_config
from ..models.registry import is_registered


@dataclass
class FinetuneModelConfig:
    """The classifier: an encoder from ``checkpoint`` (any format load_checkpoint reads) or ``name`` from scratch."""

    checkpoint: str | None = None
    name: str = "crate_tiny"  # used when checkpoint is null (a crate_* or vit_* classifier name)
    overrides: dict[str, Any] = field(default_factory=dict)  # load_checkpoint / constructor overrides (num_heads=...)
    global_pool: str = "token"  # 'token' (cls) or 'avg' (mean of patch tokens)
    drop_path_rate: float = 0.1


@dataclass
class FinetuneDataConfig:
    path: str | None = None
    kind: str = "auto"
    train_split: str | None = "train"
    val_split: str | None = "val"
    img_size: int | None = None  # null: the checkpoint's pretraining size
    mean: tuple[float, float, float] | None = None  # null: the checkpoint's pretraining statistics (else ImageNet)
    std: tuple[float, float, float] | None = None
    crop_pct: float | None = None  # eval resize/crop; null: 0.875 at >= 96 px, 1.0 below
    num_workers: int = 4
    strict: bool = False


@dataclass
class FinetuneAugConfig:
    """Training augmentation and label mixing (MAE fine-tune defaults)."""

    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    rand_augment: str | None = "rand-m9-mstd0.5-inc1"  # timm auto_augment string; null = off
    reprob: float = 0.25  # random erasing probability
    mixup: float = 0.8  # mixup alpha (0 = off)
    cutmix: float = 1.0  # cutmix alpha (0 = off)
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

    def validate(self) -> FinetuneConfig:
        errors = _validate(self)
        if errors:
            raise ValueError("invalid fine-tuning config:\n  " + "\n  ".join(errors))
        return self


_SECTIONS = {
    "model": FinetuneModelConfig,
    "data": FinetuneDataConfig,
    "aug": FinetuneAugConfig,
    "optim": FinetuneOptimConfig,
    "run": RunConfig,
}


def load_finetune_config(
    path: str | os.PathLike | None = None, overrides: Sequence[str] | dict[str, Any] | None = None
) -> FinetuneConfig:
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
    check(
        num(m.drop_path_rate) and 0 <= m.drop_path_rate < 1,
        "model.drop_path_rate",
        m.drop_path_rate,
        "must be in [0, 1)",
    )
    check(isinstance(m.overrides, dict), "model.overrides", m.overrides, "must be a mapping")
    if m.checkpoint is None:
        check(
            is_registered(m.name) and not m.name.startswith(("crate_mae_", "vit_mae_")),
            "model.name",
            m.name,
            "must be a registered encoder classifier (crate_*) when model.checkpoint is null",
        )
    check(d.path is not None, "data.path", d.path, "required (an ImageFolder root or CIFAR directory)")
    if d.path is not None:
        check.path(d.path, "data.path")
    check.path(m.checkpoint, "model.checkpoint", required=False)
    if isinstance(m.overrides, dict):
        check.model_overrides(m.overrides)
    check(d.img_size is None or pos_int(d.img_size), "data.img_size", d.img_size, "must be a positive integer")
    for key in ("mean", "std"):
        v = getattr(d, key)
        check(
            v is None or (isinstance(v, tuple) and len(v) == 3 and all(num(x) for x in v)),
            f"data.{key}",
            v,
            "must be null or 3 numbers",
        )
    check(
        d.crop_pct is None or (num(d.crop_pct) and 0 < d.crop_pct <= 1),
        "data.crop_pct",
        d.crop_pct,
        "must be in (0, 1]",
    )
    check(
        isinstance(a.scale, tuple) and len(a.scale) == 2 and 0 < a.scale[0] <= a.scale[1] <= 1,
        "aug.scale",
        a.scale,
        "must be [lo, hi] with 0 < lo <= hi <= 1",
    )
    for key in ("hflip", "reprob", "mixup_prob", "mixup_switch_prob"):
        v = getattr(a, key)
        check(num(v) and 0 <= v <= 1, f"aug.{key}", v, "must be in [0, 1]")
    for key in ("mixup", "cutmix"):
        check(num(getattr(a, key)) and getattr(a, key) >= 0, f"aug.{key}", getattr(a, key), "must be >= 0")
    check(num(a.smoothing) and 0 <= a.smoothing < 1, "aug.smoothing", a.smoothing, "must be in [0, 1)")
    check(
        a.rand_augment is None or (isinstance(a.rand_augment, str) and a.rand_augment.startswith("rand")),
        "aug.rand_augment",
        a.rand_augment,
        "must be null or a timm RandAugment string like 'rand-m9-mstd0.5'",
    )
    check.optim(o)
    check(num(o.layer_decay) and 0 < o.layer_decay <= 1, "optim.layer_decay", o.layer_decay, "must be in (0, 1]")
    check.run(cfg.run)
    check.fit(o, cfg.run)
    return check.errors
