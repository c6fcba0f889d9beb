"""The pretraining config: YAML file + ``dotted.key=value`` overrides -> validated :class:`PretrainConfig`.

Its ``optim`` and ``run`` sections are the engine's (:mod:`crate_mae.engine.config`), ``run`` extended with the
online k-NN monitor; ``model`` and ``data`` are pretraining's own. Every bad value is reported at once, by its dotted
name. The resolved config (after overrides and defaults) is what :func:`crate_mae.training.pretrain` writes to
``<output_dir>/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ..data import DATA_KINDS, IMAGENET_MEAN, IMAGENET_STD
from ..engine.config import Checks, OptimConfig, RunConfig, build_sections, plain, read_raw_config
from ..engine.optim import PARAM_GROUPS
from ..models.registry import is_registered, list_models, model_config_fields, model_defaults

AUGMENTS = ("mae", "book")


@dataclass
class ModelConfig:
    """Which network: a registry name plus constructor overrides (``img_size`` comes from ``data.img_size``)."""

    name: str = "crate_mae_tiny"
    mask_ratio: float = 0.75
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Where images come from and how they are augmented (MAE: RandomResizedCrop(scale) + flip + normalise)."""

    path: str | None = None  # ImageFolder tree / flat folder / CIFAR pickle dir; None only with demo=true
    kind: str = "auto"
    split: str | None = "train"  # sub-folder (ImageFolder) or CIFAR split; None = use path as is
    demo: bool = False  # the embedded scikit-image photo crops instead of a path
    demo_samples: int = 2048
    img_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    augment: str = "mae"  # 'mae': RandomResizedCrop(scale) + flip; 'book': the authors' book (see transforms)
    scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = True
    num_workers: int | str = "auto"  # DataLoader workers; auto: by device, cores, threads (data.resolve_num_workers)
    cache: bool | str = "auto"  # decode image files once and keep them in memory; auto: when they fit
    strict: bool = False  # fail on the first unreadable image instead of skipping it
    max_size: int | None = None  # shrink images whose shorter side is longer to this many pixels when decoding
    repeat: int = 1  # each epoch reads every image this many times (its own crop each time)


@dataclass
class PretrainRunConfig(RunConfig):
    """Pretraining adds online monitoring: a weighted k-NN probe on a labelled split every ``knn_every_epochs``."""

    knn_every_epochs: int = 0  # 0 = never; the last epoch is always scored when > 0
    knn_data: str | None = None  # ImageFolder root / CIFAR directory with the two splits below
    knn_train_split: str = "train"
    knn_val_split: str = "val"
    knn_limit: int | None = None  # images per split (evenly spaced), to bound the probe's cost
    knn_k: int = 20


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: PretrainRunConfig = field(default_factory=PretrainRunConfig)

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    def validate(self) -> PretrainConfig:
        """Raise one ValueError naming every bad value (dotted key = value: why)."""
        errors = _validate(self)
        if errors:
            raise ValueError("invalid pretraining config:\n  " + "\n  ".join(errors))
        return self


# -- loading ---------------------------------------------------------------------------------------------------------
def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> PretrainConfig:
    """Read a YAML config (or start from defaults when ``path`` is None), apply ``key.sub=value`` overrides (values
    parsed as YAML), build the dataclasses and validate."""
    return config_from_dict(read_raw_config(path, overrides))


def config_from_dict(raw: dict[str, Any]) -> PretrainConfig:
    return PretrainConfig(**build_sections(raw, _SECTIONS, "pretraining")).validate()


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "run": PretrainRunConfig}


# -- validation ------------------------------------------------------------------------------------------------------
def _validate(cfg: PretrainConfig) -> list[str]:
    check = Checks()
    errors, number, integer = check.errors, check.number, check.integer
    m, d = cfg.model, cfg.data
    # model
    known = is_registered(m.name)
    if not known:
        errors.append(f"model.name = {m.name!r}: unknown model; available: {', '.join(list_models())}")
    else:
        check(
            m.name.startswith(("crate_mae_", "vit_mae_")),
            "model.name",
            m.name,
            "pretraining needs a masked autoencoder (crate_mae_* or vit_mae_*), not an encoder-only classifier",
        )
        params = model_config_fields(m.name)
        if not isinstance(m.overrides, dict):
            errors.append(f"model.overrides = {m.overrides!r}: must be a mapping of constructor keywords")
        else:
            for k, v in m.overrides.items():
                if k == "img_size":
                    errors.append(f"model.overrides.img_size = {v!r}: set data.img_size instead (one source of truth)")
                elif k not in params:
                    errors.append(f"model.overrides.{k} = {v!r}: not a constructor argument of {m.name}")
            check.model_overrides(m.overrides)
    check(number(m.mask_ratio) and 0.0 < m.mask_ratio < 1.0, "model.mask_ratio", m.mask_ratio, "must be in (0, 1)")
    # data
    check(d.kind in DATA_KINDS, "data.kind", d.kind, f"must be one of {DATA_KINDS}")
    check(d.demo or d.path is not None, "data.path", d.path, "required unless data.demo = true")
    if d.path is not None:
        check.path(d.path, "data.path")
    check(integer(d.img_size) and d.img_size > 0, "data.img_size", d.img_size, "must be a positive integer")
    patch = m.overrides.get("patch_size") if isinstance(m.overrides, dict) else None
    if patch is None and known:
        patch = model_defaults(m.name).get("patch_size")
    if integer(d.img_size) and integer(patch) and patch > 0:
        check(d.img_size % patch == 0, "data.img_size", d.img_size, f"must be divisible by the patch size {patch}")
    for key in ("mean", "std"):
        v = getattr(d, key)
        check(
            isinstance(v, tuple) and len(v) == 3 and all(number(x) for x in v),
            f"data.{key}",
            v,
            "must be a list of 3 numbers (one per RGB channel)",
        )
    if isinstance(d.std, tuple) and all(number(x) for x in d.std):
        check(all(x > 0 for x in d.std), "data.std", d.std, "every entry must be > 0")
    check(
        isinstance(d.scale, tuple)
        and len(d.scale) == 2
        and all(number(x) for x in d.scale)
        and 0 < d.scale[0] <= d.scale[1] <= 1,
        "data.scale",
        d.scale,
        "must be [lo, hi] with 0 < lo <= hi <= 1",
    )
    check(
        d.num_workers == "auto" or (integer(d.num_workers) and d.num_workers >= 0),
        "data.num_workers",
        d.num_workers,
        "must be an integer >= 0 or 'auto'",
    )
    check(d.cache in (True, False, "auto"), "data.cache", d.cache, "must be true, false or 'auto'")
    check(integer(d.repeat) and d.repeat >= 1, "data.repeat", d.repeat, "must be an integer >= 1")
    check(
        d.max_size is None or (integer(d.max_size) and d.max_size >= 1),
        "data.max_size",
        d.max_size,
        "must be a positive integer (pixels) or null",
    )
    check(integer(d.demo_samples) and d.demo_samples > 0, "data.demo_samples", d.demo_samples, "must be > 0")
    for key in ("hflip", "strict", "demo"):
        check(isinstance(getattr(d, key), bool), f"data.{key}", getattr(d, key), "must be true or false")
    check(d.augment in AUGMENTS, "data.augment", d.augment, f"must be one of {AUGMENTS}")
    check.optim(cfg.optim)
    check(
        cfg.optim.param_groups in PARAM_GROUPS,
        "optim.param_groups",
        cfg.optim.param_groups,
        f"must be one of {PARAM_GROUPS}",
    )
    check.run(cfg.run)
    check.fit(cfg.optim, cfg.run)
    r = cfg.run
    check(
        integer(r.knn_every_epochs) and r.knn_every_epochs >= 0,
        "run.knn_every_epochs",
        r.knn_every_epochs,
        "must be an integer >= 0",
    )
    check.path(r.knn_data, "run.knn_data", required=integer(r.knn_every_epochs) and r.knn_every_epochs > 0)
    for key in ("knn_train_split", "knn_val_split"):
        check.path(getattr(r, key), f"run.{key}")
    check(
        r.knn_limit is None or (integer(r.knn_limit) and r.knn_limit >= 1),
        "run.knn_limit",
        r.knn_limit,
        "must be an integer >= 1 or null",
    )
    check(integer(r.knn_k) and r.knn_k >= 1, "run.knn_k", r.knn_k, "must be an integer >= 1")
    return errors
