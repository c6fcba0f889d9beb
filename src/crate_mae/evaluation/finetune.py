"""End-to-end fine-tuning of an encoder as an image classifier (facebookresearch/mae ``main_finetune.py`` recipe).

    from crate_mae.evaluation.finetune import finetune
    from crate_mae.evaluation.finetune_config import load_finetune_config
    result = finetune(load_finetune_config("configs/finetune_cifar.yaml", ["optim.epochs=10"]))

- config: :mod:`.finetune_config`;
- model: the checkpoint loaded once (any format ``crate_mae.load_checkpoint`` reads: CRATE-MAE / ViT-MAE / CRATE),
  its data config read off it, then its encoder as a classifier (``crate_mae.load_encoder``), or
  ``create_model(name)`` from scratch; stochastic depth ``drop_path_rate``;
- data: timm's training transform (RandomResizedCrop, flip, RandAugment, random erasing), the deterministic eval
  transform for val; train and val must have the same classes;
- loss: mixup / cutmix (``timm.data.Mixup``) with label smoothing and ``SoftTargetCrossEntropy``;
- optimiser: the engine's fused AdamW (``crate_mae.engine.optim.build_optimizer``) on :func:`param_groups_lrd`
  (timm's layer-wise lr decay, no weight decay on 1-D parameters and tokens), per-step warm-up + half-cosine schedule
  (``crate_mae.engine.optim.WarmupCosine``), lr = blr * batch / 256;
- the run itself is the engine shared with pretraining (:mod:`crate_mae.engine.runner`): torchrun DDP,
  determinism, atomic run-state snapshots with optimizer + RNG state, ``run.resume`` with a config check, the
  output-folder lock, metrics.jsonl + TensorBoard, stop conditions and the NaN guard; the best val top-1 model is
  saved to ``<output_dir>/best`` and a result JSON to ``<output_dir>/result.json``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from torch.utils.data import DataLoader, Dataset

from .. import data as D
from ..data import IMAGENET_MEAN, IMAGENET_STD, fix_rand_augment_posterize, resolve_data_config
from ..engine.config import flatten
from ..engine.distributed import DistInfo, all_reduce_sum
from ..engine.optim import build_optimizer
from ..engine.runner import Task, TaskContext, check_weights, on_main, run
from ..engine.sampling import SeededSamples
from ..io import checkpoint_sha256, create_model, load_checkpoint, load_encoder, save_pretrained
from ..models.registry import model_defaults
from ..utils.deprecation import moved_names
from .features import check_same_classes, default_crop_pct
from .finetune_config import FinetuneAugConfig, FinetuneConfig
from .metrics import topk_correct
from .results import make_result, summary_line, write_result

# The config moved to .finetune_config; these names were defined here.
__getattr__ = moved_names(
    __name__,
    {
        name: f"crate_mae.evaluation.finetune_config:{name}"
        for name in ("FinetuneDataConfig", "FinetuneModelConfig", "FinetuneOptimConfig", "load_finetune_config")
    },
)


# -- layer-wise lr decay -----------------------------------------------------------------------------------------------
def param_groups_lrd(
    model: nn.Module, weight_decay: float = 0.05, layer_decay: float = 0.75, no_weight_decay_list: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Parameter groups for layer-wise lr decay: timm's ``param_groups_layer_decay`` through ``model.group_matcher``.

    Our encoders group as facebookresearch/mae ``util/lr_decay.param_groups_lrd`` (``get_layer_id_for_vit``): with
    ``L = depth + 1``, tokens and patch embedding get ``layer_decay ** L``, block ``i`` ``layer_decay ** (depth - i)``,
    the final norm and head 1. 1-D parameters (norms, biases) and ``no_weight_decay_list`` get no weight decay."""

    model.group_matcher()  # a ValueError for a masked autoencoder, before timm builds groups
    return param_groups_layer_decay(
        model, weight_decay=weight_decay, no_weight_decay_list=list(no_weight_decay_list), layer_decay=layer_decay
    )


# -- data --------------------------------------------------------------------------------------------------------------
def train_transform(img_size: int, mean: Sequence[float], std: Sequence[float], aug: FinetuneAugConfig):
    """timm's ImageNet training pipeline: RandomResizedCrop(scale, bicubic), flip, RandAugment, ToTensor,
    Normalize, random erasing (pixel mode)."""

    transform = create_transform(
        img_size,
        is_training=True,
        scale=tuple(aug.scale),
        hflip=aug.hflip,
        vflip=0.0,
        color_jitter=None,
        auto_augment=aug.rand_augment,
        interpolation="bicubic",
        mean=tuple(mean),
        std=tuple(std),
        re_prob=aug.reprob,
        re_mode="pixel",
        re_count=1,
    )
    return fix_rand_augment_posterize(transform)  # Pillow >= 13 rejects RandAugment's 0-bit posterize


def build_mixup(aug: FinetuneAugConfig, num_classes: int):
    """``timm.data.Mixup`` (batch mode; it also applies label smoothing to the one-hot targets) when mixup or
    cutmix is on, else None."""
    if aug.mixup <= 0 and aug.cutmix <= 0:
        return None

    return Mixup(
        mixup_alpha=aug.mixup,
        cutmix_alpha=aug.cutmix,
        prob=aug.mixup_prob,
        switch_prob=aug.mixup_switch_prob,
        mode="batch",
        label_smoothing=aug.smoothing,
        num_classes=num_classes,
    )


def build_criterion(aug: FinetuneAugConfig, mixup) -> nn.Module:
    """Soft-target cross-entropy after mixup; label-smoothing cross-entropy or plain cross-entropy otherwise."""

    if mixup is not None:
        return SoftTargetCrossEntropy()
    if aug.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=aug.smoothing)
    return nn.CrossEntropyLoss()


# -- the run -----------------------------------------------------------------------------------------------------------
def load_pretrained(cfg: FinetuneConfig) -> nn.Module | None:
    """``cfg.model.checkpoint`` read once (with ``cfg.model.overrides``), or None when training from scratch: the
    model :func:`build_classifier` turns into the classifier and whose data config sets size and normalisation."""
    m = cfg.model
    return load_checkpoint(m.checkpoint, **m.overrides) if m.checkpoint is not None else None


def build_classifier(
    cfg: FinetuneConfig, num_classes: int, img_size: int | None, pretrained: nn.Module | None = None
) -> nn.Module:
    """The classifier ``cfg.model`` describes: the encoder of ``cfg.model.checkpoint`` (``pretrained``, that
    checkpoint already loaded by :func:`load_pretrained`, is used instead of reading it again) with a new
    ``num_classes`` head, or ``cfg.model.name`` at random init (``img_size`` unless the overrides set one)."""
    m = cfg.model
    if m.checkpoint is not None:
        source = pretrained if pretrained is not None else load_pretrained(cfg)
        return load_encoder(source, num_classes=num_classes, global_pool=m.global_pool, drop_path_rate=m.drop_path_rate)
    kw = dict(m.overrides)
    if img_size is not None:
        kw.setdefault("img_size", img_size)
    return create_model(
        m.name, num_classes=num_classes, global_pool=m.global_pool, drop_path_rate=m.drop_path_rate, **kw
    )


def finetune(
    cfg: FinetuneConfig,
    train_dataset: Dataset | None = None,
    val_dataset: Dataset | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.data`` (or on the given datasets of ``(image tensor, label)``, which must
    then carry ``.classes`` and their own transforms). Returns the result dict also written to
    ``<output_dir>/result.json`` (metrics: final and best val top-1 / top-5)."""
    return run(cfg, lambda cfg, info: Finetuning(cfg, info, train_dataset, val_dataset), device)


class Finetuning(Task):
    """The fine-tuning task of the run engine: classifier, mixup + soft-target loss, layer-decay AdamW, per-epoch
    validation and the best model."""

    name = "fine-tuning"
    guarded = ("model.", "data.", "aug.", "optim.", "run.seed")

    cfg: FinetuneConfig

    def __init__(self, cfg: FinetuneConfig, info: DistInfo, train_dataset: Dataset | None, val_dataset: Dataset | None):
        super().__init__(cfg, info)
        d, r = cfg.data, cfg.run
        self.title = cfg.model.checkpoint or cfg.model.name
        # The same model on every rank. The checkpoint is read once: its data config now, its encoder (with a head
        # for the classes the data has) below.
        torch.manual_seed(r.seed)
        pretrained = load_pretrained(cfg)
        # The checkpoint decides size and normalisation unless the config does.
        if pretrained is not None:
            dc = resolve_data_config(pretrained)
        else:
            dc = {
                "img_size": cfg.model.overrides.get("img_size", model_defaults(cfg.model.name).get("img_size")),
                "mean": None,
                "std": None,
            }
        img_size = d.img_size or dc["img_size"] or 224
        mean, std = list(d.mean or dc["mean"] or IMAGENET_MEAN), list(d.std or dc["std"] or IMAGENET_STD)
        self.data_info = {
            "img_size": img_size,
            "mean": mean,
            "std": std,
            "crop_pct": d.crop_pct if d.crop_pct is not None else default_crop_pct(img_size),
        }
        if train_dataset is None or val_dataset is None:
            with torch.random.fork_rng(devices=[]):  # the model's initialisation draws on from where loading left it
                train_dataset = D.build_dataset(
                    d.path,
                    split=d.train_split,
                    kind=d.kind,
                    strict=d.strict,
                    transform=train_transform(img_size, mean, std, cfg.aug),
                )
                val_dataset = D.build_dataset(
                    d.path,
                    split=d.val_split,
                    kind=d.kind,
                    strict=d.strict,
                    transform=D.eval_transform(img_size, crop_pct=self.data_info["crop_pct"], mean=mean, std=std),
                )
        self.classes = list(train_dataset.classes)
        check_same_classes(
            self.classes, val_dataset.classes, f"train split ({d.train_split})", f"val split ({d.val_split})"
        )
        self.num_classes = len(self.classes)
        self.model = build_classifier(cfg, self.num_classes, img_size, pretrained).to(self.device)
        self.train_set = SeededSamples(train_dataset, r.seed)
        self.val_set = val_dataset
        shard = torch.utils.data.Subset(val_dataset, range(info.rank, len(val_dataset), info.world_size))
        self.val_loader = DataLoader(
            shard,
            batch_size=cfg.optim.batch_size,
            shuffle=False,
            num_workers=d.num_workers,
            persistent_workers=d.num_workers > 0,
            pin_memory=self.device.type == "cuda",
        )
        self.mixup = build_mixup(cfg.aug, self.num_classes)
        if self.mixup is not None and cfg.optim.batch_size % 2:
            raise ValueError(f"mixup/cutmix needs an even optim.batch_size, got {cfg.optim.batch_size}")
        self.criterion = build_criterion(cfg.aug, self.mixup)
        self.best = {"top1": -1.0, "top5": 0.0, "epoch": 0}
        self.history: list[dict[str, float]] = []
        self.extra = {
            "data": {k: self.data_info[k] for k in ("img_size", "mean", "std")},
            "classes": self.classes,
            "finetune": {"checkpoint": cfg.model.checkpoint, "global_pool": cfg.model.global_pool},
        }

    def make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        o = self.cfg.optim
        skip = set(self.model.no_weight_decay())
        groups = param_groups_lrd(self.model, o.weight_decay, o.layer_decay, skip)
        return build_optimizer(self.model, lr, o.weight_decay, o.betas, param_groups=groups)

    def loss(self, net: nn.Module, batch: Any) -> torch.Tensor:
        imgs, labels = batch
        device = self.device
        imgs, labels = imgs.to(device, non_blocking=True), torch.as_tensor(labels).to(device, non_blocking=True)
        if self.mixup is not None:
            imgs, labels = self.mixup(imgs, labels)
        return self.criterion(net(imgs), labels)

    def config_defaults(self) -> dict[str, Any]:
        return flatten(FinetuneConfig().to_dict())

    def end_epoch(self, ctx: TaskContext, epoch: int, train_loss: float) -> dict[str, dict[str, float]]:
        ev = self.evaluate(ctx.amp_dtype)
        self.history.append({"epoch": epoch, "step": ctx.state.step, "train_loss": train_loss, **ev})
        if ev["top1"] > self.best["top1"]:
            self.best = {"top1": ev["top1"], "top5": ev["top5"], "epoch": epoch}
            check_weights(self.model, ctx.state.step)
            on_main(
                self.info,
                lambda: save_pretrained(self.model, ctx.out / "best", extra={**self.extra, "best": self.best}),
            )
        return {"val": {**ev, "best_top1": self.best["top1"]}}

    @torch.no_grad()
    def evaluate(self, dtype: torch.dtype | None) -> dict[str, float]:
        """Val loss / top-1 / top-5 (%) of the current model under the run's autocast ``dtype``; each rank scores a
        shard, counts are summed."""
        device = self.device
        was = self.model.training
        self.model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
        for imgs, labels in self.val_loader:
            imgs, labels = imgs.to(device, non_blocking=True), torch.as_tensor(labels).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = self.model(imgs).float()
            top1, top5 = topk_correct(logits, labels, (1, 5))
            sums += torch.stack(
                [
                    F.cross_entropy(logits, labels, reduction="sum"),
                    top1,
                    top5,
                    torch.tensor(labels.shape[0], device=device),
                ]
            ).double()
        loss, top1, top5, n = all_reduce_sum(sums, self.info).tolist()
        self.model.train(was)
        n = max(n, 1)
        return {"loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n}

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.best, self.history = dict(state["best"]), [dict(h) for h in state["history"]]

    def finish(self, ctx: TaskContext, stopped: str) -> dict[str, Any]:
        cfg, st = self.cfg, ctx.state
        last = self.history[-1] if self.history and stopped == "completed" else self.evaluate(ctx.amp_dtype)
        best = self.best if self.best["top1"] >= 0 else {"top1": last["top1"], "top5": last["top5"], "epoch": st.epoch}
        sha = checkpoint_sha256(cfg.model.checkpoint) if cfg.model.checkpoint is not None else None
        result = make_result(
            "finetune",
            {"top1": last["top1"], "top5": last["top5"], "best_top1": best["top1"], "best_top5": best["top5"]},
            checkpoint=cfg.model.checkpoint or f"{cfg.model.name} (scratch)",
            checkpoint_sha256=sha,
            dataset={
                "path": cfg.data.path,
                "train": cfg.data.train_split,
                "val": cfg.data.val_split,
                "num_train": len(self.train_set),
                "num_val": len(self.val_set),
                "num_classes": self.num_classes,
                "transform": self.data_info,
            },
            config=cfg.to_dict(),
            details={
                "stopped": stopped,
                "epochs": st.epoch,
                "steps": st.step,
                "best_epoch": best["epoch"],
                "lr": ctx.lr,
                "history": self.history,
                "best_model": str(ctx.out / "best"),
                "elapsed_s": ctx.elapsed(),
            },
        )
        on_main(self.info, lambda: write_result(result, ctx.out / "result.json"))
        ctx.log({"event": "end", "step": st.step, **result["metrics"]})
        ctx.say(summary_line(result))
        return result
