"""Throughput of ``crate-mae features`` and ``crate-mae analyze`` on 1,000 photos, and where the time goes.

    python benchmarks/feature_throughput.py                        # crate_mae_tiny, 224 px, torch's default threads
    python benchmarks/feature_throughput.py --threads 1 --images 200

Images: an ImageFolder of ``--images`` JPEGs made from ../shared/data/flowers12 (train + val, 960 photos of 224 x 224
in 12 classes; cycled, the repeats mirrored so that every file differs), written once into ``--workdir``.

1. End to end: each command as a user runs it (a fresh process: start-up, model, decoding, model, output), wall
   time and images/s. ``features``: ``--split train`` with its defaults (batch 128, 2 loader workers); ``analyze``:
   ``--num-images N`` (all of them) with its defaults (batch 16, official convention).
2. Where the time goes, in this process, one part at a time (the loader without workers, so that decoding is not
   hidden in other processes):
   - features: decoding + eval transform (the DataLoader of ``compute_features``), the model (``forward_features``
     on the decoded batches);
   - analyze: decoding (``analysis.inputs.load_images``), the model (the masked-completion forward at mask ratio 0
     under the ``LayerRecorder``, as ``measure_layers`` runs it), and the measurements on the recorded tensors:
     the per-head projections U_k^T z of both R^c inputs, the compression rates R^c and coding rates R (float64
     Gram matrices and log-determinants), the sparsity. With ``--check`` ``measure_layers`` itself is timed too, to
     see that the parts add up.
3. ``--ab N``: ``measure_layers`` on N of the photos with the float64 factorizations on all of torch's threads (as
   before issue 24) and on one thread (``analysis.coding_rate.serial_factorizations``), in alternating rounds, with the
   largest relative difference between the two sets of numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import crate_mae  # noqa: E402
from crate_mae.analysis.coding_rate import RateConvention, coding_rate, compression_rate, sparsity  # noqa: E402
from crate_mae.analysis.inputs import find_images, load_images, model_normalization  # noqa: E402
from crate_mae.analysis.layerwise import measure_layers  # noqa: E402
from crate_mae.data import build_dataset, eval_transform, resolve_data_config  # noqa: E402
from crate_mae.evaluation.features import default_crop_pct  # noqa: E402
from crate_mae.models.tracing import LayerRecorder, crate_blocks  # noqa: E402

# the module (the package re-exports its function coding_rate under the same name)
rates = importlib.import_module("crate_mae.analysis.coding_rate")

SOURCE = REPO.parent / "shared" / "data" / "flowers12"


def make_folder(dst: Path, n: int) -> Path:
    """``dst/train/<class>/*.jpg``: n photos from flowers12, cycled, repeats mirrored."""
    root = dst / "train"
    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) == n:
        return root
    if not SOURCE.is_dir():
        raise FileNotFoundError(f"flowers12 not found at {SOURCE}")
    shutil.rmtree(root, ignore_errors=True)
    files = sorted(SOURCE.rglob("*.jpg"))
    for i in range(n):
        src = files[i % len(files)]
        out = root / src.parent.name / f"{i:05d}_{src.name}"
        out.parent.mkdir(parents=True, exist_ok=True)
        if i < len(files):
            shutil.copyfile(src, out)
        else:
            ImageOps.mirror(Image.open(src).convert("RGB")).save(out, quality=95)
    return root


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class Clock:
    """``with clock(name):`` adds the seconds of the block to ``totals[name]``."""

    def __init__(self, totals: dict[str, float]):
        self.totals = totals

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.totals[name] += time.perf_counter() - t0


def cli(args, *argv: str) -> float:
    exe = Path(sys.executable).with_name("crate-mae")
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    t, proc = timed(lambda: subprocess.run([str(exe), *argv], capture_output=True, text=True, env=env))
    if proc.returncode:
        raise RuntimeError(f"crate-mae {argv[0]} failed: {proc.stderr.strip()[-400:]}")
    return t


def features_parts(model, root: Path, batch: int) -> dict[str, float]:
    dc = resolve_data_config(model)
    tf = eval_transform(dc["img_size"], crop_pct=default_crop_pct(dc["img_size"]), mean=dc["mean"], std=dc["std"])
    loader = DataLoader(build_dataset(root.parent, split="train", transform=tf), batch_size=batch, num_workers=0)
    t_decode, batches = timed(lambda: [imgs for imgs, _ in loader])
    model.eval()
    with torch.no_grad():
        t_model, _ = timed(lambda: [model.forward_features(b) for b in batches])
    return {"decoding + transform": t_decode, "model (forward_features)": t_model}


def analyze_parts(model, root: Path, n: int, batch: int, check: bool) -> dict[str, float]:
    norm = model_normalization(model)
    t_decode, imgs = timed(lambda: load_images(find_images(root, n), resolve_data_config(model)["img_size"], norm))
    conv = RateConvention.make("official")
    stacks = crate_blocks(model)
    parts = dict.fromkeys(
        [
            "model (forward under the recorder)",
            "projections U_k^T z (float64)",
            "compression rates R^c (float64 logdets)",
            "coding rates R (float64 logdets)",
            "sparsity",
        ],
        0.0,
    )
    model.eval()
    gen = torch.Generator().manual_seed(0)
    clock = Clock(parts)
    with torch.no_grad(), LayerRecorder(model) as rec:
        for b in imgs.split(batch):
            noise = torch.rand(b.shape[0], (b.shape[-1] // model.patch_size) ** 2, generator=gen)
            with clock("model (forward under the recorder)"):
                model(b, mask_ratio=0.0, noise=noise)
            for (part, i), tr in rec:
                attn = stacks[part][i].attn
                with clock("projections U_k^T z (float64)"):
                    ws = [project64(attn, z) for z in (tr.mssa_in, tr.z_half)]
                with clock("compression rates R^c (float64 logdets)"):
                    [compression_rate(w, conv) for w in ws]
                with clock("coding rates R (float64 logdets)"):
                    coding_rate(tr.z_out, conv)
                with clock("sparsity"):
                    sparsity(tr.z_out)
            rec.clear()
    out = {"decoding (load_images)": t_decode, **parts}
    if check:
        out["check: measure_layers in all"] = timed(lambda: measure_layers(model, imgs, batch_size=batch))[0]
    return out


def ab_factorizations(model, root: Path, n: int, rounds: int, batch: int) -> None:
    """measure_layers with the factorizations on all threads against one thread, alternating rounds."""
    imgs = load_images(find_images(root, n), resolve_data_config(model)["img_size"], model_normalization(model))
    one_thread = rates.serial_factorizations
    variants = {"all threads (before)": lambda device: contextlib.nullcontext(), "one thread (now)": one_thread}
    times, stats = {k: [] for k in variants}, {}
    try:
        for r in range(rounds):
            for name, ctx in list(variants.items()) if r % 2 == 0 else list(variants.items())[::-1]:
                rates.serial_factorizations = ctx
                t, stats[name] = timed(lambda: measure_layers(model, imgs, batch_size=batch))
                times[name].append(t)
    finally:
        rates.serial_factorizations = one_thread
    a, b = stats.values()
    diff = max(
        float(abs(a.values[k][m] - b.values[k][m]).max() / max(abs(a.values[k][m]).max(), 1e-300))
        for k in a.values
        for m in a.values[k]
    )
    print(f"\nmeasure_layers on {n} images, {torch.get_num_threads()} threads, {rounds} alternating rounds:")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"- factorizations on {name}: {med:.1f} s ({n / med:.2f} images/s; rounds {min(ts):.1f}-{max(ts):.1f} s)")
    print(f"- largest relative difference between the two sets of numbers: {diff:.1e}")


def project64(attn, z: torch.Tensor) -> torch.Tensor:
    """U_k^T z per head in float64, as measure_layers computes it: (B, N, d) -> (B, K, N, p)."""
    B, N, _ = z.shape
    w = F.linear(z.double(), attn.qkv.weight.double())
    return w.view(B, N, attn.num_heads, attn.head_dim).transpose(1, 2)


def show(title: str, n: int, parts: dict[str, float]) -> None:
    total = sum(v for k, v in parts.items() if not k.startswith("check"))
    print(f"\n{title}: {n} images, {total:.1f} s over the parts ({n / total:.1f} images/s)")
    print("| part | s | share | images/s of this part alone |")
    print("|---|---:|---:|---:|")
    for k, v in parts.items():
        share = "" if k.startswith("check") else f"{100 * v / total:.0f} %"
        print(f"| {k} | {v:.2f} | {share} | {n / v:.1f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--model", default="crate_mae_tiny")
    p.add_argument("--threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--workdir", default="/tmp/crate_mae_feature_throughput", help="images and outputs go here")
    p.add_argument("--skip-cli", action="store_true", help="only the breakdown")
    p.add_argument("--check", action="store_true", help="also time measure_layers whole (the parts should add up)")
    p.add_argument("--ab", type=int, default=0, metavar="N", help="also the factorization A/B on N images")
    p.add_argument("--ab-rounds", type=int, default=3)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    root = make_folder(work / "images", args.images)
    n = args.images
    load0 = os.getloadavg()[0]
    print(
        f"# {args.model}, {n} photos of 224 px from flowers12 in {root}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {load0:.2f}"
    )
    if not args.skip_cli:
        t_f = cli(
            args,
            "features",
            "--ckpt",
            args.model,
            "--data",
            str(root.parent),
            "--split",
            "train",
            "--out",
            str(work / "features.safetensors"),
        )
        t_a = cli(
            args,
            "analyze",
            "--ckpt",
            args.model,
            "--data",
            str(root),
            "--num-images",
            str(n),
            "--out",
            str(work / "analyze"),
        )
        print("\n| command (end to end, fresh process) | s | images/s |")
        print("|---|---:|---:|")
        print(f"| crate-mae features --ckpt {args.model} --data DIR --split train | {t_f:.1f} | {n / t_f:.1f} |")
        print(
            f"| crate-mae analyze --ckpt {args.model} --data DIR/train --num-images {n} | {t_a:.1f} | {n / t_a:.1f} |"
        )
    torch.manual_seed(0)
    model = crate_mae.create_model(args.model)
    show("features, by part", n, features_parts(model, root, 128))
    show("analyze, by part", n, analyze_parts(model, root, n, 16, args.check))
    if args.ab:
        ab_factorizations(model, root, args.ab, args.ab_rounds, 16)
    print(f"\nload average {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
