"""``pretrain(cfg)``: masked-completion pretraining of CRATE-MAE / ViT-MAE, single process or under torchrun.

The run itself (process group, run state, resume, logging, stop conditions, NaN guard) is the shared engine
(:mod:`crate_mae.engine`); this module is the pretraining task: the model, the data with per-sample masking noise, the
masked-patch loss, and at epoch ends reconstruction pictures and the optional online k-NN probe.

Run folder (``cfg.run.output_dir``)::

    config.yaml                 the fully resolved config
    metrics.jsonl               one JSON row per log step, per epoch end (and per k-NN probe)
    tb/                         TensorBoard scalars
    recon/epoch_XXXX.png        masked input | reconstruction | original for fixed images
    checkpoints/step_XXXXXXXX/  model (config.json + model.safetensors) + training_state.pt
    model/                      the final model (config.json + model.safetensors)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..analysis.inputs import Normalization
from ..analysis.reconstruction import save_reconstructions
from ..data import Repeated, book_pretrain_transform, build_dataset, pretrain_transform, resolve_num_workers
from ..data.demo import DemoPhotos
from ..engine.config import flatten
from ..engine.distributed import DistInfo
from ..engine.optim import build_optimizer
from ..engine.run_state import find_latest_run_state
from ..engine.runner import Task, TaskContext, check_weights, on_main, run
from ..engine.sampling import SeededSamples
from ..evaluation.features import check_same_classes, compute_features
from ..evaluation.knn import knn_evaluate
from ..io import create_model, save_pretrained
from ..models.registry import model_config_fields, model_defaults
from ..utils import state_sha256
from .config import PretrainConfig


def pretrain(
    cfg: PretrainConfig, dataset: Dataset | None = None, device: torch.device | str | None = None
) -> dict[str, Any]:
    """Pretrain ``cfg.model`` on ``cfg.data`` (or on ``dataset``, any Dataset of tensors or (tensor, label)).

    Under torchrun every process calls this; rank 0 alone writes files. Returns a summary dict (rank 0 and the
    others alike): output_dir, steps, epochs, lr, effective_batch, first/last loss, fixed-batch masked loss
    before/after, img_per_s, elapsed_s, checkpoint, model_dir, stopped ('completed' | 'max_steps' | 'max_minutes'),
    weights_sha256 (this rank's final weights), knn (the last online k-NN scores, when enabled), plan (with
    ``run.fit_to_minutes``: the measured time per step and the fitted number of steps).
    """
    return run(cfg, lambda cfg, info: Pretraining(cfg, info, dataset), device)


class Pretraining(Task):
    """The pretraining task of the run engine."""

    name = "pretraining"

    cfg: PretrainConfig

    def __init__(self, cfg: PretrainConfig, info: DistInfo, dataset: Dataset | None):
        super().__init__(cfg, info)
        self.title = cfg.model.name
        self.model = create_model(cfg.model.name, img_size=cfg.data.img_size, **cfg.model.overrides).to(self.device)
        h, w = self.model.grid_size(torch.empty(1, self.model.config.in_chans, cfg.data.img_size, cfg.data.img_size))
        # Our datasets and transforms draw from torch's generator alone; a caller's dataset may use any.
        self.train_set = SeededSamples(
            dataset if dataset is not None else build_pretrain_dataset(cfg),
            cfg.run.seed,
            num_patches=h * w,
            torch_only=dataset is None,
        )
        self.extra = {
            "data": {"mean": list(cfg.data.mean), "std": list(cfg.data.std), "img_size": cfg.data.img_size},
            "pretrain": {"mask_ratio": cfg.model.mask_ratio},
        }
        # The first vis_images samples (epoch-0 augmentation) with fixed masking noise: pictures and the
        # before/after masked loss.
        n = min(max(cfg.run.vis_images, 1), len(self.train_set))
        items = [self.train_set[(0, i)] for i in range(n)]
        self.fixed = torch.stack([x for x, _ in items]), torch.stack([z for _, z in items])
        self.knn: dict[str, float] | None = None

    def make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        o = self.cfg.optim
        return build_optimizer(self.model, lr, o.weight_decay, o.betas, o.param_groups)

    def loss(self, net: nn.Module, batch: Any) -> torch.Tensor:
        imgs, noise = batch
        device = self.device
        return net(
            imgs.to(device, non_blocking=True),
            mask_ratio=self.cfg.model.mask_ratio,
            noise=noise.to(device, non_blocking=True),
        ).loss

    def config_defaults(self) -> dict[str, Any]:
        """Defaults of the config sections and of the model constructor, for keys an older config lacks."""
        name = self.cfg.model.name
        ctor = model_config_fields(name)
        ctor.update(model_defaults(name))
        return {**flatten(PretrainConfig().to_dict()), **{f"model.overrides.{k}": v for k, v in ctor.items()}}

    def start(self, ctx: TaskContext) -> None:
        self.fixed_before = self.fixed_loss(ctx.amp_dtype)

    def end_epoch(self, ctx: TaskContext, epoch: int, train_loss: float) -> dict[str, dict[str, float]]:
        r, last = self.cfg.run, epoch == self.cfg.optim.epochs
        if self.info.is_main and r.vis_every_epochs and (epoch % r.vis_every_epochs == 0 or last):
            self.visualize(ctx.out / "recon" / f"epoch_{epoch:04d}.png", f"epoch {epoch}")
        if r.knn_every_epochs and (epoch % r.knn_every_epochs == 0 or last):
            self.knn = knn_monitor(self.model, self.cfg, self.device)
            return {"knn": self.knn}
        return {}

    def finish(self, ctx: TaskContext, stopped: str) -> dict[str, Any]:
        st, out = ctx.state, ctx.out
        ckpt = find_latest_run_state(out)
        fixed_after = self.fixed_loss(ctx.amp_dtype)
        model_dir = out / "model"
        check_weights(self.model, st.step)
        on_main(self.info, lambda: save_pretrained(self.model, model_dir, extra=self.extra))
        elapsed = ctx.elapsed()
        summary = {
            "output_dir": str(out),
            "model_dir": str(model_dir),
            "checkpoint": str(ckpt) if ckpt else None,
            "steps": st.step,
            "epochs": st.epoch,
            "stopped": stopped,
            "lr": ctx.lr,
            "effective_batch": ctx.effective_batch,
            "world_size": self.info.world_size,
            "first_loss": st.history[0] if st.history else None,
            "last_loss": st.history[-1] if st.history else None,
            "fixed_loss_before": self.fixed_before,
            "fixed_loss_after": fixed_after,
            "img_per_s": ctx.images_seen / elapsed if elapsed > 0 else 0.0,
            "elapsed_s": elapsed,
            "weights_sha256": state_sha256(self.model),
            "knn": self.knn,
            "plan": ctx.plan,
        }
        ctx.log({"event": "end", **summary})
        ctx.say(
            f"done: {st.step} steps, masked loss on fixed images {self.fixed_before:.4f} -> "
            f"{fixed_after:.4f}; model in {model_dir}"
        )
        return summary

    @torch.no_grad()
    def fixed_loss(self, dtype: torch.dtype | None) -> float:
        """Masked loss on the fixed images with their fixed noise, under the run's autocast ``dtype``."""
        imgs, noise = self.fixed
        device = self.device
        was = self.model.training
        self.model.eval()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = (
                self.model(imgs.to(device), mask_ratio=self.cfg.model.mask_ratio, noise=noise.to(device))
                .loss.float()
                .item()
            )
        self.model.train(was)
        return loss

    def visualize(self, path: Path, title: str) -> None:
        imgs, noise = self.fixed
        device, norm = self.device, Normalization(tuple(self.cfg.data.mean), tuple(self.cfg.data.std))
        save_reconstructions(
            self.model, imgs.to(device), norm, path, self.cfg.model.mask_ratio, title=title, noise=noise.to(device)
        )


def knn_monitor(model: nn.Module, cfg: PretrainConfig, device: torch.device) -> dict[str, float]:
    """Weighted k-NN accuracy (%) of the encoder's cls and mean-pooled features on ``run.knn_data`` (``top1``/``top5``
    for cls, ``mean_top1``/``mean_top5`` for mean-pooled tokens, which can move differently): train split as the memory,
    val split as queries (k = ``run.knn_k``), the pretraining normalisation and size, unmasked images. Every rank
    computes it (the same numbers), so no rank waits in a collective meanwhile; keep the splits small
    (``run.knn_limit``)."""

    r, d = cfg.run, cfg.data
    was = model.training
    workers = resolve_num_workers(d.num_workers, device)
    with torch.random.fork_rng(devices=[]):  # the loaders draw seeds from the global generator: leave training's
        sets = [
            compute_features(
                model,
                r.knn_data,
                split,
                img_size=d.img_size,
                mean=d.mean,
                std=d.std,
                num_workers=workers,
                device=device,
                progress=False,
                fingerprint="training",
                limit=r.knn_limit,
            )
            for split in (r.knn_train_split, r.knn_val_split)
        ]
    model.train(was)
    train, val = sets
    check_same_classes(
        train.classes,
        val.classes,
        f"run.knn_train_split ({r.knn_train_split})",
        f"run.knn_val_split ({r.knn_val_split})",
    )
    out = {}
    for pool, prefix in (("cls", ""), ("mean", "mean_")):
        acc = knn_evaluate(
            train.get(pool), train.labels, val.get(pool), val.labels, len(train.classes), ks=[r.knn_k], device=device
        )[r.knn_k]
        out.update({f"{prefix}top1": acc["top1"], f"{prefix}top5": acc["top5"]})
    return out


def build_pretrain_dataset(cfg: PretrainConfig) -> Dataset:
    """The dataset ``cfg.data`` describes, with MAE pretraining augmentation (via :mod:`crate_mae.data`)."""

    d = cfg.data
    if d.augment == "book":
        transform = book_pretrain_transform(d.img_size, mean=d.mean, std=d.std, hflip=d.hflip)
    else:
        transform = pretrain_transform(d.img_size, mean=d.mean, std=d.std, scale=d.scale, hflip=d.hflip)
    if d.demo:
        ds = DemoPhotos(num_samples=d.demo_samples, img_size=d.img_size, transform=transform, seed=cfg.run.seed)
    else:
        ds = build_dataset(
            d.path, split=d.split, transform=transform, kind=d.kind, strict=d.strict, cache=d.cache, max_size=d.max_size
        )
    return Repeated(ds, d.repeat) if d.repeat > 1 else ds
