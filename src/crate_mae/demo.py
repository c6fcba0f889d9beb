"""``crate-mae demo``: pretrain a small CRATE-MAE on the photos embedded in scikit-image, then picture it.

Everything needed ships with ``pip install``: the data are random crops of ``skimage.data`` photos
(:class:`crate_mae.data.demo.DemoPhotos`), the config is ``configs/demo.yaml``.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from .analysis.inputs import Normalization
from .analysis.reconstruction import save_reconstructions
from .analysis.report import write_report
from .data import resolve_num_workers
from .engine.optim import adamw
from .engine.sampling import SeededSamples
from .io import create_model, from_pretrained
from .training.config import PretrainConfig, load_config
from .training.pretrain import build_pretrain_dataset, pretrain
from .utils import amp_dtype, default_device


def demo_config_path() -> Path:
    return Path(str(resources.files("crate_mae") / "configs" / "demo.yaml"))


def run_demo(
    out_dir: str | Path = "runs/demo", minutes: float = 3.0, quick: bool = False, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Pretrain the demo model for about ``minutes`` of training on this machine (``quick``: a few steps, for
    tests), write the reconstruction grid and the white-box report.

    The length is not predicted up front: the run times its first steps with all CPU threads and with one and keeps
    the faster (``run.threads: auto``), then fits the number of steps to the budget from its own measured steps
    (``run.fit_to_minutes``), refitting as it goes, so the cosine schedule ends when the budget does, on an idle
    machine as on a busy one. A busy machine still gets ``run.min_steps`` steps (``configs/demo.yaml``), enough for
    visible reconstructions, and the output says how much longer that takes; ``run.max_minutes`` = 2x the budget
    stops a run that slows down further, but never before those steps.
    """
    base = [f"run.output_dir={out_dir}"]
    if quick:
        base += [
            "data.demo_samples=32",
            "optim.batch_size=8",
            "optim.epochs=1",
            "optim.warmup_epochs=0",
            "run.max_steps=3",
            "run.vis_every_epochs=1",
            "run.vis_images=4",
            "run.progress=false",
            "run.fit_to_minutes=null",
            "run.min_steps=0",
            "run.threads=null",
        ]
    else:
        base += [f"run.fit_to_minutes={minutes}", f"run.max_minutes={2 * minutes}"]
    return _train_and_picture(load_config(demo_config_path(), base + list(overrides or [])))


def _train_and_picture(cfg: PretrainConfig) -> dict[str, Any]:
    print(
        f"crate-mae demo: pretraining {cfg.model.name} {cfg.model.overrides} on {cfg.data.demo_samples} "
        f"scikit-image photo crops ({cfg.data.img_size} px)"
        + (
            f", fitting its length to {cfg.run.fit_to_minutes:g} minutes of training on this machine (at least "
            f"{cfg.run.min_steps} steps)"
            if cfg.run.fit_to_minutes
            else ""
        )
    )
    summary = pretrain(cfg)
    out = Path(cfg.run.output_dir)
    grid = out / "reconstruction.png"
    _final_grid(out, grid, cfg)
    summary["reconstruction"] = str(grid)
    report = write_report(summary["model_dir"], out / "report")
    summary["report"] = str(report)
    b, a = summary["fixed_loss_before"], summary["fixed_loss_after"]
    plan = summary.get("plan")
    print(
        f"\nmasked-patch loss (MSE in normalised pixels) on the {min(cfg.run.vis_images, cfg.data.demo_samples)} "
        f"fixed training crops with fixed masks: {b:.4f} before -> {a:.4f} after"
    )
    line = f"  {summary['steps']} steps in {summary['elapsed_s']:.0f} s of training, {summary['img_per_s']:.0f} img/s"
    if plan:
        line += (
            f"; length fitted {plan['fits']} time(s) to the {plan['budget_minutes']:g}-minute budget from the "
            f"measured speed (last: {plan['s_per_step'] * 1000:.0f} ms per step)"
        )
        if plan.get("binding"):
            line += (
                f"; the budget held fewer steps on this busy machine, so it trained the guaranteed minimum of "
                f"{plan['min_steps']}"
            )
    print(line + f"; stopped: {summary['stopped']}")
    print(f"  model:            {summary['model_dir']}")
    print(f"  reconstructions:  {grid}  (the same crops and masks; per-epoch grids in {out / 'recon'})")
    print(f"  metrics:          {out / 'metrics.jsonl'}  (tensorboard --logdir {out / 'tb'})")
    print(
        f"  white-box report: {report}  (its reconstruction MSE is on other images: centre crops of whole "
        "photos, mask seed 0)"
    )
    return summary


def epochs_for_budget(
    cfg: PretrainConfig,
    minutes: float,
    num_samples: int,
    dataset: torch.utils.data.Dataset | None = None,
    device: torch.device | str | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[int, float]:
    """Time optimizer steps of the configured model on real batches and return ``(epochs, warmup_epochs)`` that fill
    ``minutes`` on this machine, keeping the config's warm-up fraction.

    The steps run where and how training will run: on ``device`` (default: the one training picks) under the
    config's autocast. The batches come from ``dataset`` (default: the one ``cfg.data`` describes, with its
    augmentation) through a loader with ``cfg.data.num_workers``, so decoding and augmentation are in the measured
    time (timing random tensors alone made the demo's estimate ~2x too fast). The first steps are several times
    slower than the steady state (worker start-up, kernel selection, allocator warm-up), so 3 steps are discarded
    and the median of the following ones (at least 3 s of them by ``clock``, at most 20) is used.
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = amp_dtype(cfg.run.amp, device)
    torch.manual_seed(0)
    model = create_model(cfg.model.name, img_size=cfg.data.img_size, **cfg.model.overrides).to(device)
    opt = adamw(model.parameters(), 1e-4, (0.9, 0.95))  # the training run's optimizer, fused where possible
    loader = DataLoader(
        dataset if dataset is not None else build_pretrain_dataset(cfg),
        batch_size=cfg.optim.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=resolve_num_workers(cfg.data.num_workers, device),
        generator=torch.Generator().manual_seed(0),
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)  # CUDA runs ahead of the host
    times: list[float] = []
    start = clock()
    batches = iter(loader)
    for i in range(23):
        t = clock()
        batch = next(batches, None)
        if batch is None:  # a dataset of a few batches: go round again
            batches = iter(loader)
            batch = next(batches)
        x = (batch[0] if isinstance(batch, (list, tuple)) else batch).to(device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(x, mask_ratio=cfg.model.mask_ratio).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        sync()
        if i >= 3:
            times.append(clock() - t)
            if len(times) >= 5 and clock() - start > 3.0:
                break
    del batches  # stops the loader's workers
    per_step = sorted(times)[len(times) // 2] * 1.05 * cfg.optim.accum_iter  # + logging, epoch-end checkpoints
    steps_per_epoch = max(1, num_samples // (cfg.optim.batch_size * cfg.optim.accum_iter))
    epochs = max(1, int(60 * minutes / per_step / steps_per_epoch))
    warm_frac = cfg.optim.warmup_epochs / cfg.optim.epochs
    return epochs, round(warm_frac * epochs, 2)


def _final_grid(out: Path, path: Path, cfg: PretrainConfig) -> None:
    model = from_pretrained(out / "model").eval()
    h, w = model.grid_size(torch.empty(1, 3, cfg.data.img_size, cfg.data.img_size))
    ds = SeededSamples(build_pretrain_dataset(cfg), cfg.run.seed, num_patches=h * w)
    items = [ds[(0, i)] for i in range(min(8, len(ds)))]
    imgs, noise = torch.stack([x for x, _ in items]), torch.stack([z for _, z in items])
    save_reconstructions(
        model,
        imgs,
        Normalization(tuple(cfg.data.mean), tuple(cfg.data.std)),
        path,
        cfg.model.mask_ratio,
        noise=noise,
        title="CRATE-MAE demo: masked completion",
    )
