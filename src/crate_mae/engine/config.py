"""Configuration every task shares: the run (:class:`RunConfig`) and optimiser (:class:`OptimConfig`) sections, the
:class:`Checks` that validate them, and YAML file + ``dotted.key=value`` overrides -> typed sections.

A task's config is dataclasses built by :func:`build_sections`; unknown keys and bad values are collected and
reported together, each by its dotted name, so a user fixes a config in one go. The tasks' configs live with them:
pretraining in :mod:`crate_mae.training.config`, fine-tuning in :mod:`crate_mae.evaluation.finetune_config`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence, TypeGuard

import yaml

from ..utils import atomic_write, parse_key_values, yaml_problem
from ..utils.deprecation import moved_names
from ..utils.device import AMP_MODES


@dataclass
class OptimConfig:
    """AdamW recipe. ``lr`` (absolute) wins over ``blr``; otherwise lr = blr * effective_batch / 256 with
    effective_batch = batch_size * accum_iter * world_size. Schedules are per optimizer step."""

    batch_size: int = 64  # per process, per forward
    accum_iter: int = 1
    epochs: int = 800
    warmup_epochs: float = 40
    blr: float = 1.5e-4
    lr: float | None = None
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float | None = None
    param_groups: str = "mae"  # weight-decay groups: 'mae' (tokens decayed) or 'timm' (see build_optimizer)


@dataclass
class RunConfig:
    """Bookkeeping: where to write, how often, precision, determinism, resuming."""

    output_dir: str = "runs/pretrain"
    seed: int = 0
    log_every: int = 20  # optimizer steps between metrics.jsonl / TensorBoard rows
    ckpt_every_steps: int = 1000  # optimizer steps between checkpoints (0 = epoch ends only)
    keep_checkpoints: int = 2  # newest complete checkpoints kept on disk
    keep_epochs: tuple[int, ...] = ()  # epochs whose model is also kept as epochs/epoch_NNNN/ (budget-trend studies)
    vis_every_epochs: int = 20  # epochs between reconstruction grids (0 = never)
    vis_images: int = 8
    amp: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the training forward (tested on CPU; see README "Speed")
    grad_checkpointing: bool = False  # recompute each block in backward: activation memory ~1/8, ~1.3x the compute
    deterministic: bool = False
    resume: str | None = None  # None, "auto" (newest complete checkpoint in output_dir) or a checkpoint path
    max_steps: int | None = None  # stop after this many optimizer steps (smoke tests)
    max_minutes: float | None = None  # stop (with a checkpoint) after this much wall-clock time (rank 0's clock)
    fit_to_minutes: float | None = None  # fit the run's length to this budget from its measured warm-up speed
    min_steps: int = 0  # neither the clock (max_minutes) nor the fit stops a run before this many steps
    threads: int | str | None = None  # CPU compute threads: null = torch's, N, or 'auto' (the faster of all and 1)
    progress: bool = True  # rank 0: a bar on a terminal, a plain line every 30 s in a log file
    allow_config_change: bool = False  # resume even if model / data / schedule keys differ from the checkpoint's


# -- reading YAML ------------------------------------------------------------------------------------------------------
def packaged_configs() -> dict[str, Path]:
    """``{stem: path}`` of the YAML configs installed with the package (``configs/`` in a checkout)."""
    folder = Path(str(resources.files("crate_mae") / "configs"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_config(name: str | os.PathLike) -> Path:
    """A config file path, or the stem of a packaged config (``pretrain_photos``, ``pretrain_cifar``, ...): a file
    that exists wins, so a local ``pretrain_cifar.yaml`` is read rather than the packaged one."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = packaged_configs()
    if str(name) in shipped:
        return shipped[str(name)]
    raise FileNotFoundError(f"config file not found: {path} (nor is it a packaged config: {', '.join(shipped)})")


def read_raw_config(path: str | os.PathLike | None, overrides: Sequence[str] | dict[str, Any] | None) -> dict[str, Any]:
    """The YAML mapping at ``path`` (a file, or the stem of a packaged config; empty when None) with
    ``dotted.key=value`` overrides applied."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = resolve_config(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: YAML syntax error: {yaml_problem(e)}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    for key, value in parse_overrides(overrides).items():
        set_dotted(raw, key, value)
    return raw


def build_sections(raw: dict[str, Any], sections: dict[str, type], what: str) -> dict[str, Any]:
    """``{section: dataclass}`` for the sections ``raw`` names; every unknown section or key is reported at once."""
    errors: list[str] = []
    kwargs = {}
    for name, value in raw.items():
        if name not in sections:
            errors.append(f"{name}: unknown section (expected one of {', '.join(sections)})")
            continue
        if not isinstance(value, dict):
            errors.append(f"{name}: must be a mapping, got {value!r}")
            continue
        types = {f.name: str(f.type) for f in dataclasses.fields(sections[name])}
        errors += [f"{name}.{k}: unknown key (known: {', '.join(sorted(types))})" for k in value if k not in types]
        kwargs[name] = sections[name](**{k: _coerce(v, types[k]) for k, v in value.items() if k in types})
    if errors:
        raise ValueError(f"invalid {what} config:\n  " + "\n  ".join(errors))
    return kwargs


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write a config dataclass (anything with ``to_dict``) as YAML, atomically."""

    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (mappings nested at any depth, e.g. ``model.overrides.embed_dim``)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(
    saved: dict[str, Any],
    new: dict[str, Any],
    defaults: dict[str, Any],
    guarded: Sequence[str],
    ignored: Sequence[str] = (),
) -> list[str]:
    """``"key: old -> new"`` for every dotted key under a ``guarded`` prefix (and not ``ignored``) whose value
    differs between two resolved configs. A key missing on one side takes its value from ``defaults`` (flat), so
    keys added to the code after a checkpoint was written are not changes unless set to something else."""
    missing = object()
    a, b = flatten(saved), flatten(new)
    changes = []
    for key in sorted(set(a) | set(b)):
        if not key.startswith(tuple(guarded)) or key.startswith(tuple(ignored)):
            continue
        old, now = a.get(key, defaults.get(key, missing)), b.get(key, defaults.get(key, missing))
        if plain(old) != plain(now):
            show = lambda v: "(absent)" if v is missing else repr(v)  # noqa: E731
            changes.append(f"{key}: {show(old)} -> {show(now)}")
    return changes


def parse_overrides(overrides: Sequence[str] | dict[str, Any] | None) -> dict[str, Any]:
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    return parse_key_values(list(overrides), "dotted.key=value (e.g. optim.epochs=10)")


def set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) < 2:
        raise ValueError(f"override key {key!r} must name a section, e.g. optim.{key}")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {key!r}: {p} is not a mapping")
    node[parts[-1]] = value


def _coerce(v: Any, annotation: str) -> Any:
    """Lists -> tuples; '3e-4' -> 3e-4 for float fields (YAML 1.1 reads exponents without a dot as strings)."""
    if isinstance(v, list):
        return tuple(_coerce(x, annotation) for x in v)
    if isinstance(v, str) and "float" in annotation:
        try:
            return float(v)
        except ValueError:
            return v
    return v


def plain(obj: Any) -> Any:
    """Tuples back to lists, recursively (for YAML / JSON)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


# -- validation -------------------------------------------------------------------------------------------------------
class Checks:
    """Collects ``dotted.key = value: why`` messages, so that one ValueError names every bad value of a config.
    Pretraining and fine-tuning share the optimiser and run checks."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def __call__(self, ok: bool, key: str, value: Any, why: str) -> None:
        if not ok:
            self.errors.append(f"{key} = {value!r}: {why}")

    @staticmethod
    def number(v: Any) -> TypeGuard[int | float]:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    @staticmethod
    def integer(v: Any) -> TypeGuard[int]:
        return isinstance(v, int) and not isinstance(v, bool)

    def optim(self, o: Any) -> None:
        """The AdamW + warm-up cosine fields of :class:`OptimConfig` (and fine-tuning's optimiser section)."""
        number, integer = self.number, self.integer
        for key in ("batch_size", "accum_iter", "epochs"):
            v = getattr(o, key)
            self(integer(v) and v >= 1, f"optim.{key}", v, "must be an integer >= 1")
        self(number(o.warmup_epochs) and o.warmup_epochs >= 0, "optim.warmup_epochs", o.warmup_epochs, "must be >= 0")
        if number(o.warmup_epochs) and integer(o.epochs):
            self(
                o.warmup_epochs <= o.epochs,
                "optim.warmup_epochs",
                o.warmup_epochs,
                f"must not exceed optim.epochs = {o.epochs}",
            )
        self(number(o.blr) and o.blr > 0, "optim.blr", o.blr, "must be > 0")
        self(o.lr is None or (number(o.lr) and o.lr > 0), "optim.lr", o.lr, "must be > 0 or null (then blr is used)")
        self(number(o.min_lr) and o.min_lr >= 0, "optim.min_lr", o.min_lr, "must be >= 0")
        self(number(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
        self(
            isinstance(o.betas, tuple) and len(o.betas) == 2 and all(number(b) and 0 <= b < 1 for b in o.betas),
            "optim.betas",
            o.betas,
            "must be [beta1, beta2] with each in [0, 1)",
        )
        self(
            o.clip_grad is None or (number(o.clip_grad) and o.clip_grad > 0),
            "optim.clip_grad",
            o.clip_grad,
            "must be > 0 or null (no clipping)",
        )

    def fit(self, o: Any, r: RunConfig) -> None:
        """``run.fit_to_minutes`` measures the warm-up steps and fits the cosine after them: it needs a warm-up."""
        if r.fit_to_minutes is not None and self.number(o.warmup_epochs):
            self(
                o.warmup_epochs > 0,
                "optim.warmup_epochs",
                o.warmup_epochs,
                "must be > 0 with run.fit_to_minutes (the run's length is fitted from the warm-up steps' time)",
            )

    def run(self, r: RunConfig) -> None:
        number, integer = self.number, self.integer
        self(isinstance(r.output_dir, str) and r.output_dir != "", "run.output_dir", r.output_dir, "must be a path")
        self(integer(r.seed) and r.seed >= 0, "run.seed", r.seed, "must be an integer >= 0")
        self(integer(r.log_every) and r.log_every >= 1, "run.log_every", r.log_every, "must be an integer >= 1")
        for key in ("ckpt_every_steps", "vis_every_epochs", "vis_images"):
            v = getattr(r, key)
            self(integer(v) and v >= 0, f"run.{key}", v, "must be an integer >= 0")
        self(
            integer(r.keep_checkpoints) and r.keep_checkpoints >= 1,
            "run.keep_checkpoints",
            r.keep_checkpoints,
            "must be an integer >= 1",
        )
        self(
            isinstance(r.keep_epochs, tuple) and all(integer(e) and e >= 1 for e in r.keep_epochs),
            "run.keep_epochs",
            r.keep_epochs,
            "must be a list of epoch numbers >= 1",
        )
        self(r.amp in AMP_MODES, "run.amp", r.amp, f"must be one of {AMP_MODES}")
        self(
            r.max_steps is None or (integer(r.max_steps) and r.max_steps >= 1),
            "run.max_steps",
            r.max_steps,
            "must be an integer >= 1 or null",
        )
        self(
            r.max_minutes is None or (number(r.max_minutes) and r.max_minutes > 0),
            "run.max_minutes",
            r.max_minutes,
            "must be > 0 or null",
        )
        self(
            r.fit_to_minutes is None or (number(r.fit_to_minutes) and r.fit_to_minutes > 0),
            "run.fit_to_minutes",
            r.fit_to_minutes,
            "must be > 0 or null",
        )
        self(integer(r.min_steps) and r.min_steps >= 0, "run.min_steps", r.min_steps, "must be an integer >= 0")
        self(
            r.threads in (None, "auto") or (integer(r.threads) and r.threads >= 1),
            "run.threads",
            r.threads,
            "must be null, 'auto' or an integer >= 1",
        )
        self(r.resume is None or isinstance(r.resume, str), "run.resume", r.resume, "must be null, 'auto' or a path")
        for key in ("compile", "grad_checkpointing", "deterministic", "progress", "allow_config_change"):
            self(isinstance(getattr(r, key), bool), f"run.{key}", getattr(r, key), "must be true or false")

    def path(self, v: Any, key: str, required: bool = True) -> None:
        self(
            isinstance(v, str) and v != "" or (v is None and not required),
            key,
            v,
            "must be a path (a string)" + ("" if required else " or null"),
        )

    def model_overrides(self, overrides: dict[str, Any]) -> None:
        """Values a constructor would accept but that break the model's meaning (ISTA: lambda >= 0, eta > 0)."""
        number = self.number
        if "ista_lambda" in overrides:
            v = overrides["ista_lambda"]
            self(
                number(v) and v >= 0,
                "model.overrides.ista_lambda",
                v,
                "must be a number >= 0 (the sparsity penalty; a negative one rewards density)",
            )
        if "ista_step_size" in overrides:
            v = overrides["ista_step_size"]
            self(number(v) and v > 0, "model.overrides.ista_step_size", v, "must be a number > 0")


# The pretraining config moved to crate_mae.training.config (the engine holds only what every task shares).
__getattr__ = moved_names(
    __name__,
    {
        name: f"crate_mae.training.config:{name}"
        for name in (
            "AUGMENTS",
            "DataConfig",
            "ModelConfig",
            "PretrainConfig",
            "PretrainRunConfig",
            "config_from_dict",
            "load_config",
        )
    },
)
