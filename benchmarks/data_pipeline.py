"""Pretraining throughput with the data pipeline against the model alone, same config, one process.

    python benchmarks/data_pipeline.py                     # configs/pretrain_cifar.yaml on data/cifar10-dev
    python benchmarks/data_pipeline.py --threads 1         # on a CPU that other jobs share
    python benchmarks/data_pipeline.py --variants files,0 cache,0 cache,1 auto,auto

Contenders, run in interleaved rounds (each round runs every contender once, in rotating order):

- ``model only``: the config's model, optimizer (``build_optimizer``) and gradient clipping trained on one fixed batch
  of random normalised images already in memory: what the pipeline is compared with;
- ``CACHE,WORKERS`` (``--variants``): ``crate_mae.training.pretrain`` itself on the data folder for ``--steps``
  optimizer steps with ``data.cache=CACHE`` (``files`` = false, ``cache`` = true, ``auto``) and
  ``data.num_workers=WORKERS``: reading, decoding, augmenting, the engine and the model together.

Each variant's loader is also timed alone (``loader alone``: the engine's loader over the same data, no model,
before the rounds; ``--steps`` batches after ``--skip``), which shows what the data costs per image by itself.

A contender's throughput is the median over its steps (the first ``--skip`` of each run left out: worker start-up,
allocator warm-up) of batch / step time; for ``pretrain`` runs that is the engine's own per-step ``img_per_s`` in
``metrics.jsonl``, which spans loading the batch and the whole optimizer step. Ratios are taken within a round (the
pipeline's img/s over the model's) and their median and spread over rounds are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from crate_mae import create_model
from crate_mae.data import resolve_num_workers
from crate_mae.engine.optim import build_optimizer
from crate_mae.training import load_config, pretrain

REPO = Path(__file__).resolve().parents[1]


def model_only(cfg, steps: int, skip: int) -> float:
    """img/s of the training step alone on one in-memory batch."""
    torch.manual_seed(0)
    o, d = cfg.optim, cfg.data
    model = create_model(cfg.model.name, img_size=d.img_size, **cfg.model.overrides).train()
    opt = build_optimizer(model, 1e-4, o.weight_decay, o.betas, o.param_groups)
    imgs = torch.randn(o.batch_size, 3, d.img_size, d.img_size)
    noise = torch.rand(o.batch_size, (d.img_size // model.patch_size) ** 2)
    times = []
    for i in range(steps + skip):
        t = time.perf_counter()
        loss = model(imgs, mask_ratio=cfg.model.mask_ratio, noise=noise).loss
        loss.backward()
        if o.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
        loss.item()  # the engine's one host sync per step
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= skip:
            times.append(time.perf_counter() - t)
    return o.batch_size / statistics.median(times)


def variant_config(args, cache: str, workers: str, out: Path):
    cache_value = {"files": "false", "cache": "true", "auto": "auto"}[cache]
    return load_config(
        args.config,
        [
            f"data.path={args.data}",
            f"data.cache={cache_value}",
            f"data.num_workers={workers}",
            f"run.max_steps={args.steps + args.skip}",
            "run.log_every=1",
            "run.ckpt_every_steps=0",
            "run.vis_every_epochs=0",
            "run.progress=false",
            f"run.output_dir={out}",
        ],
    )


def loader_alone(cfg, batches: int, skip: int) -> float:
    """img/s of the engine's loader by itself: the pretraining dataset, per-sample seeding, the epoch sampler."""
    from torch.utils.data import DataLoader

    from crate_mae.engine.sampling import EpochSampler, SeededSamples
    from crate_mae.training.pretrain import build_pretrain_dataset

    d, size = cfg.data, cfg.data.img_size
    patches = (size // create_model(cfg.model.name, img_size=size, **cfg.model.overrides).patch_size) ** 2
    data = SeededSamples(build_pretrain_dataset(cfg), cfg.run.seed, num_patches=patches, torch_only=True)
    sampler = EpochSampler(len(data), cfg.optim.batch_size, cfg.run.seed)
    workers = resolve_num_workers(d.num_workers, "cpu")
    it = iter(DataLoader(data, batch_sampler=sampler, num_workers=workers))
    for _ in range(skip):
        next(it)
    t = time.perf_counter()  # the whole span, not a median of waits: workers hand out prefetched batches at once
    for _ in range(batches):
        next(it)
    return cfg.optim.batch_size * batches / (time.perf_counter() - t)


def pipeline(args, cache: str, workers: str, out: Path) -> float:
    """img/s of ``pretrain`` on the data folder (median of the engine's per-step rates)."""
    cfg = variant_config(args, cache, workers, out)
    with contextlib.redirect_stdout(io.StringIO()):  # the run's own log lines
        pretrain(cfg, device="cpu")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["img_per_s"] for r in rows if "event" not in r][args.skip :]
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "pretrain_cifar.yaml"))
    p.add_argument(
        "--data",
        default=str(
            next(
                (
                    d
                    for d in (REPO / "data" / "cifar10-dev", REPO.parent / "shared" / "data" / "cifar10-dev")
                    if d.is_dir()
                ),
                REPO / "data" / "cifar10-dev",
            )
        ),
        help="cifar10-dev (python benchmarks/make_cifar10_dev.py writes data/cifar10-dev)",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        default=["files,0", "cache,0", "cache,1", "auto,auto"],
        help="CACHE,WORKERS pairs: CACHE in files|cache|auto, WORKERS an integer or auto",
    )
    p.add_argument("--steps", type=int, default=12, help="measured optimizer steps per run")
    p.add_argument("--skip", type=int, default=3, help="steps left out at the start of each run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, one per core)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [f"data.path={args.data}"])
    names = ["model only", *args.variants]
    rates: dict[str, list[float]] = {n: [] for n in names}
    alone = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            alone[name] = loader_alone(
                variant_config(args, *name.split(","), Path(tmp) / "unused"), args.steps, args.skip
            )
            print(f"loader alone: {name}: {alone[name]:.1f} img/s", flush=True)
        for r in range(args.rounds):
            for k, name in enumerate(names[r % len(names) :] + names[: r % len(names)]):
                if name == "model only":
                    rates[name].append(model_only(cfg, args.steps, args.skip))
                else:
                    cache, workers = name.split(",")
                    rates[name].append(pipeline(args, cache, workers, Path(tmp) / f"r{r}_{k}"))
                print(f"round {r + 1}: {name}: {rates[name][-1]:.1f} img/s", flush=True)
    print(
        f"\n{Path(args.config).name} on {args.data}, batch {cfg.optim.batch_size}, {torch.get_num_threads()} "
        f"threads, data.num_workers=auto -> {resolve_num_workers('auto', 'cpu')} here; medians of {args.rounds} "
        f"interleaved rounds"
    )
    print("| contender (cache, workers) | loader alone img/s | training img/s | vs model only (rounds) |")
    print("|---|---:|---:|---:|")
    base = rates["model only"]
    for name in names:
        per = sorted(a / b for a, b in zip(rates[name], base))
        print(
            f"| {name} | {alone[name]:.0f} |" if name in alone else f"| {name} | |",
            f"{statistics.median(rates[name]):.1f} | {statistics.median(per):.2f} ({per[0]:.2f}-{per[-1]:.2f}) |",
        )


if __name__ == "__main__":
    main()
