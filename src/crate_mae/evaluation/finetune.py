"""End-to-end fine-tuning of an encoder as an image classifier (facebookresearch/mae ``main_finetune.py`` recipe).

    from crate_mae.evaluation.finetune import load_finetune_config, finetune
    result = finetune(load_finetune_config("configs/finetune_cifar.yaml", ["optim.epochs=10"]))

- model: ``crate_mae.load_encoder(checkpoint, num_classes, global_pool, drop_path_rate)`` for a CRATE-MAE / ViT-MAE /
  CRATE checkpoint, or ``create_model(name)`` from scratch; stochastic depth ``drop_path_rate``;
- data: timm's training transform (RandomResizedCrop, flip, RandAugment, random erasing), the deterministic eval
  transform for val; train and val must have the same classes;
- loss: mixup / cutmix (``timm.data.Mixup``) with label smoothing and ``SoftTargetCrossEntropy``;
- optimiser: AdamW on :func:`param_groups_lrd` (timm's layer-wise lr decay, no weight decay on 1-D parameters and
  tokens), per-step warm-up + half-cosine schedule (``crate_mae.training.WarmupCosine``), lr = blr * batch / 256;
- the run itself is the engine shared with pretraining (:mod:`crate_mae.engine.runner`): torchrun DDP,
  determinism, atomic step checkpoints with optimizer + RNG state, ``run.resume`` with a config check, the
  output-folder lock, metrics.jsonl + TensorBoard, stop conditions and the NaN guard; the best val top-1 model is
  saved to ``<output_dir>/best`` and a result JSON to ``<output_dir>/result.json``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from torch.utils.data import DataLoader, Dataset

from .. import data as D
from ..checkpoint import checkpoint_sha256, create_model, load_encoder, save_pretrained
from ..data import IMAGENET_MEAN, IMAGENET_STD, resolve_data_config
from ..engine.config import Checks, RunConfig, build_sections, flatten, plain, read_raw_config
from ..engine.distributed import all_reduce_sum
from ..engine.runner import Runner, Task, run
from ..engine.sampling import SeededSamples
from ..models.registry import _MODELS, model_defaults
from .features import check_same_classes, default_crop_pct
from .results import make_result, summary_line, write_result

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

    def validate(self) -> FinetuneConfig:
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

        check(m.name in _MODELS and not m.name.startswith(("crate_mae_", "vit_mae_")), "model.name", m.name,
              "must be a registered encoder classifier (crate_*) when model.checkpoint is null")
    check(d.path is not None, "data.path", d.path, "required (an ImageFolder root or CIFAR directory)")
    if d.path is not None:
        check.path(d.path, "data.path")
    check.path(m.checkpoint, "model.checkpoint", required=False)
    if isinstance(m.overrides, dict):
        check.model_overrides(m.overrides)
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
    check.fit(o, cfg.run)
    return check.errors


# -- layer-wise lr decay -----------------------------------------------------------------------------------------------
def param_groups_lrd(model: nn.Module, weight_decay: float = 0.05, layer_decay: float = 0.75,
                     no_weight_decay_list: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Parameter groups for layer-wise lr decay: timm's ``param_groups_layer_decay`` through ``model.group_matcher``.

    Our encoders group as facebookresearch/mae ``util/lr_decay.param_groups_lrd`` (``get_layer_id_for_vit``): with
    ``L = depth + 1``, tokens and patch embedding get ``layer_decay ** L``, block ``i`` ``layer_decay ** (depth - i)``,
    the final norm and head 1. 1-D parameters (norms, biases) and ``no_weight_decay_list`` get no weight decay."""

    model.group_matcher()  # a ValueError for a masked autoencoder, before timm builds groups
    return param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=list(no_weight_decay_list),
                                    layer_decay=layer_decay)


# -- data --------------------------------------------------------------------------------------------------------------
def train_transform(img_size: int, mean: Sequence[float], std: Sequence[float], aug: FinetuneAugConfig):
    """timm's ImageNet training pipeline: RandomResizedCrop(scale, bicubic), flip, RandAugment, ToTensor,
    Normalize, random erasing (pixel mode)."""

    transform = create_transform(img_size, is_training=True, scale=tuple(aug.scale), hflip=aug.hflip, vflip=0.0,
                                 color_jitter=None, auto_augment=aug.rand_augment, interpolation="bicubic",
                                 mean=tuple(mean), std=tuple(std), re_prob=aug.reprob, re_mode="pixel", re_count=1)
    for t in transform.transforms:
        for op in getattr(t, "ops", ()):
            if getattr(op.aug_fn, "__name__", "") == "posterize":
                op.aug_fn = _posterize
    return transform


def _posterize(img, bits_to_keep, **_):
    """timm's posterize for Pillow >= 13, which rejects 0 bits: RandAugment's increasing posterize reaches 0 bits at
    magnitude 10 (m9 + mstd noise), and older Pillow turned that into a black image, which is kept here."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def build_mixup(aug: FinetuneAugConfig, num_classes: int):
    """``timm.data.Mixup`` (batch mode; it also applies label smoothing to the one-hot targets) when mixup or
    cutmix is on, else None."""
    if aug.mixup <= 0 and aug.cutmix <= 0:
        return None

    return Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, prob=aug.mixup_prob,
                 switch_prob=aug.mixup_switch_prob, mode="batch", label_smoothing=aug.smoothing,
                 num_classes=num_classes)


def build_criterion(aug: FinetuneAugConfig, mixup) -> nn.Module:
    """Soft-target cross-entropy after mixup; label-smoothing cross-entropy or plain cross-entropy otherwise."""

    if mixup is not None:
        return SoftTargetCrossEntropy()
    if aug.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=aug.smoothing)
    return nn.CrossEntropyLoss()


# -- the run -----------------------------------------------------------------------------------------------------------
def build_classifier(cfg: FinetuneConfig, num_classes: int, img_size: int | None) -> nn.Module:
    m = cfg.model
    if m.checkpoint is not None:
        return load_encoder(m.checkpoint, num_classes=num_classes, global_pool=m.global_pool,
                            drop_path_rate=m.drop_path_rate, **m.overrides)
    kw = dict(m.overrides)
    if img_size is not None:
        kw.setdefault("img_size", img_size)
    return create_model(m.name, num_classes=num_classes, global_pool=m.global_pool,
                        drop_path_rate=m.drop_path_rate, **kw)


def finetune(cfg: FinetuneConfig, train_dataset: Dataset | None = None, val_dataset: Dataset | None = None,
             device: torch.device | str | None = None) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.data`` (or on the given datasets of ``(image tensor, label)``, which must
    then carry ``.classes`` and their own transforms). Returns the result dict also written to
    ``<output_dir>/result.json`` (metrics: final and best val top-1 / top-5)."""
    return run(cfg, lambda runner: Finetuning(runner, train_dataset, val_dataset), device)


class Finetuning(Task):
    """The fine-tuning task of the run engine: classifier, mixup + soft-target loss, layer-decay AdamW, per-epoch
    validation and the best model."""

    name = "fine-tuning"
    guarded = ("model.", "data.", "aug.", "optim.", "run.seed")

    def __init__(self, runner: Runner, train_dataset: Dataset | None, val_dataset: Dataset | None):
        super().__init__(runner)

        cfg = self.cfg = runner.cfg
        d, r = cfg.data, cfg.run
        self.title = cfg.model.checkpoint or cfg.model.name
        # The checkpoint decides size and normalisation unless the config does.
        if cfg.model.checkpoint is not None:
            dc = resolve_data_config(build_classifier(cfg, 0, None))
        else:

            dc = {"img_size": cfg.model.overrides.get("img_size", model_defaults(cfg.model.name).get("img_size")),
                  "mean": None, "std": None}
        img_size = d.img_size or dc["img_size"] or 224
        mean, std = list(d.mean or dc["mean"] or IMAGENET_MEAN), list(d.std or dc["std"] or IMAGENET_STD)
        self.data_info = {"img_size": img_size, "mean": mean, "std": std,
                          "crop_pct": d.crop_pct if d.crop_pct is not None else default_crop_pct(img_size)}
        if train_dataset is None or val_dataset is None:

            train_dataset = D.build_dataset(d.path, split=d.train_split, kind=d.kind, strict=d.strict,
                                            transform=train_transform(img_size, mean, std, cfg.aug))
            val_dataset = D.build_dataset(d.path, split=d.val_split, kind=d.kind, strict=d.strict,
                                          transform=D.eval_transform(img_size, crop_pct=self.data_info["crop_pct"],
                                                                     mean=mean, std=std))
        self.classes = list(train_dataset.classes)
        check_same_classes(self.classes, val_dataset.classes, f"train split ({d.train_split})",
                           f"val split ({d.val_split})")
        self.num_classes = len(self.classes)
        torch.manual_seed(r.seed)  # the same head on every rank
        self.model = build_classifier(cfg, self.num_classes, img_size).to(runner.device)
        self.train_set = SeededSamples(train_dataset, r.seed)
        self.val_set = val_dataset
        info = runner.info
        shard = torch.utils.data.Subset(val_dataset, range(info.rank, len(val_dataset), info.world_size))
        self.val_loader = DataLoader(shard, batch_size=cfg.optim.batch_size, shuffle=False,
                                     num_workers=d.num_workers, persistent_workers=d.num_workers > 0,
                                     pin_memory=runner.device.type == "cuda")
        self.mixup = build_mixup(cfg.aug, self.num_classes)
        if self.mixup is not None and cfg.optim.batch_size % 2:
            raise ValueError(f"mixup/cutmix needs an even optim.batch_size, got {cfg.optim.batch_size}")
        self.criterion = build_criterion(cfg.aug, self.mixup)
        self.best = {"top1": -1.0, "top5": 0.0, "epoch": 0}
        self.history: list[dict[str, float]] = []
        self.extra = {"data": {k: self.data_info[k] for k in ("img_size", "mean", "std")}, "classes": self.classes,
                      "finetune": {"checkpoint": cfg.model.checkpoint, "global_pool": cfg.model.global_pool}}

    def make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        o = self.cfg.optim
        skip = set(self.model.no_weight_decay())
        groups = param_groups_lrd(self.model, o.weight_decay, o.layer_decay, skip)
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(o.betas))

    def loss(self, net: nn.Module, batch: Any) -> torch.Tensor:
        imgs, labels = batch
        device = self.runner.device
        imgs, labels = imgs.to(device, non_blocking=True), torch.as_tensor(labels).to(device, non_blocking=True)
        if self.mixup is not None:
            imgs, labels = self.mixup(imgs, labels)
        return self.criterion(net(imgs), labels)

    def config_defaults(self) -> dict[str, Any]:
        return flatten(FinetuneConfig().to_dict())

    def end_epoch(self, epoch: int, train_loss: float) -> dict[str, dict[str, float]]:
        ev = self.evaluate()
        self.history.append({"epoch": epoch, "step": self.runner.state.step, "train_loss": train_loss, **ev})
        if ev["top1"] > self.best["top1"]:
            self.best = {"top1": ev["top1"], "top5": ev["top5"], "epoch": epoch}

            self.runner.check_weights()
            self.runner.on_main(lambda: save_pretrained(self.model, self.runner.out / "best",
                                                        extra={**self.extra, "best": self.best}))
        return {"val": {**ev, "best_top1": self.best["top1"]}}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Val loss / top-1 / top-5 (%) of the current model; each rank scores a shard, counts are summed."""

        runner = self.runner
        device, dtype = runner.device, runner.amp_dtype
        was = self.model.training
        self.model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
        for imgs, labels in self.val_loader:
            imgs, labels = imgs.to(device, non_blocking=True), torch.as_tensor(labels).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = self.model(imgs).float()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            sums += torch.stack([F.cross_entropy(logits, labels, reduction="sum"),
                                 (top[:, 0] == labels).sum(), (top == labels[:, None]).any(1).sum(),
                                 torch.tensor(labels.shape[0], device=device)]).double()
        loss, top1, top5, n = all_reduce_sum(sums, runner.info).tolist()
        self.model.train(was)
        n = max(n, 1)
        return {"loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n}

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.best, self.history = dict(state["best"]), [dict(h) for h in state["history"]]

    def finish(self, stopped: str) -> dict[str, Any]:
        cfg, runner = self.cfg, self.runner
        last = self.history[-1] if self.history and stopped == "completed" else self.evaluate()
        best = self.best if self.best["top1"] >= 0 else {"top1": last["top1"], "top5": last["top5"],
                                                          "epoch": runner.state.epoch}
        sha = checkpoint_sha256(cfg.model.checkpoint) if cfg.model.checkpoint is not None else None
        result = make_result(
            "finetune", {"top1": last["top1"], "top5": last["top5"], "best_top1": best["top1"],
                         "best_top5": best["top5"]},
            checkpoint=cfg.model.checkpoint or f"{cfg.model.name} (scratch)", checkpoint_sha256=sha,
            dataset={"path": cfg.data.path, "train": cfg.data.train_split, "val": cfg.data.val_split,
                     "num_train": len(self.train_set), "num_val": len(self.val_set), "num_classes": self.num_classes,
                     "transform": self.data_info},
            config=cfg.to_dict(),
            details={"stopped": stopped, "epochs": runner.state.epoch, "steps": runner.state.step,
                     "best_epoch": best["epoch"], "lr": runner.lr, "history": self.history,
                     "best_model": str(runner.out / "best"), "elapsed_s": runner.elapsed()})
        runner.on_main(lambda: write_result(result, runner.out / "result.json"))
        runner.log_row({"event": "end", "step": runner.state.step, **result["metrics"]})
        runner.say(summary_line(result))
        return result
