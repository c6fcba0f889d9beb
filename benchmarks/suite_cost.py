"""What the transfer suite (`crate-mae eval-suite`) costs in forward passes: model FLOPs per image, measured
feature-extraction speed on this machine, and a FLOP-based GPU estimate for the four data sets.

    python benchmarks/suite_cost.py                                  # crate_mae_base at 224 px, on this machine
    python benchmarks/suite_cost.py --device cpu --batch-size 32 --seconds 30
    python benchmarks/suite_cost.py crate_mae_tiny img_size=32 patch_size=4 embed_dim=128 depth=4 num_heads=4 \\
        decoder_depth=4                                              # the CIFAR-scale model
    python benchmarks/suite_cost.py --stand-ins /tmp/standins         # write stand-in data sets, then time the suite:
    crate-mae eval-suite --ckpt crate_mae_base --root /tmp/standins --datasets cifar10,flowers102 --out /tmp/suite \\
        --workers 15 --batch-size 256 --no-grid --max-iter 100

- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over ``forward_features`` of one batch on the meta device
  (a multiply-add is 2 FLOPs; attention counted as its two products), divided by the batch.
- Measured: ``forward_features`` of random images, batches of ``--batch-size``, bf16 autocast on CUDA and fp32 on
  CPU as the suite runs it, for ``--seconds`` after a warm-up; the model alone, no decoding or resizing.
- Estimate (labelled so): images/s = peak FLOP/s x utilisation / FLOPs per image, at the ``--peak-tflops`` given
  (default 989, the dense bf16 peak of an H100 / H200 SXM in NVIDIA's datasheet) and each ``--utilisation``;
  then the time of the suite's forward passes over CIFAR-10 + CIFAR-100 + Flowers-102 + Pets (standard splits,
  135,538 images).
- ``--stand-ins DIR`` writes, instead, data sets of the real sizes for timing the whole suite where the real ones
  are not at hand: CIFAR-10 in its pickle layout (50,000 + 10,000 random 32-px images) and Flowers-102 in its
  layout (``--flowers-images``, default 3 x 1,020, JPEGs of 500 x 375 px with smooth content, so that they
  compress and decode like photos). Labels are random: only the cost means anything.
"""

from __future__ import annotations

import argparse
import copy
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

import crate_mae  # noqa: E402
from crate_mae.utils import amp_dtype, default_device, parse_key_values  # noqa: E402

# Images of the standard splits (fit + test): CIFAR-10 50,000 + 10,000; CIFAR-100 the same; Flowers-102 1,020 +
# 1,020 + 6,149; Oxford-IIIT Pets 3,680 + 3,669.
SUITE_IMAGES = {"cifar10": 60_000, "cifar100": 60_000, "flowers102": 8_189, "pets": 7_349}


def flops_per_image(model: torch.nn.Module, img_size: int, batch: int = 8) -> float:
    m = copy.deepcopy(model).to("meta").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        m.forward_features(torch.empty(batch, 3, img_size, img_size, device="meta"))
    return counter.get_total_flops() / batch


def measure(model: torch.nn.Module, img_size: int, batch: int, seconds: float, device: torch.device) -> float:
    """Images per second of ``forward_features`` under the suite's precision (see module docstring)."""
    model = model.to(device).eval()
    imgs = torch.randn(batch, 3, img_size, img_size, device=device)
    dtype = amp_dtype("auto", device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            model.forward_features(imgs)

    step()
    step()
    sync()
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
    sync()
    return n * batch / (time.perf_counter() - t0)


def _flower_jpeg(args: tuple[Path, int]) -> None:
    path, i = args
    rng = np.random.default_rng(i)
    small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
    pixels = np.asarray(small).astype(np.int16) + rng.integers(-8, 9, (375, 500, 3))
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path / f"image_{i:05d}.jpg", quality=90)


def write_stand_ins(root: Path, cifar_images: int = 60_000, flowers_images: int = 3_060) -> None:
    """See the module docstring (``--stand-ins``)."""
    from multiprocessing import Pool

    from scipy.io import savemat

    rng = np.random.default_rng(0)
    cifar = root / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    per = cifar_images // 6  # five train batches and one test batch, as the original
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(cifar / name, "wb") as f:
            pickle.dump(
                {
                    b"data": rng.integers(0, 256, (per, 3072), dtype=np.uint8),
                    b"labels": rng.integers(0, 10, per).tolist(),
                },
                f,
                protocol=4,
            )
    flowers = root / "flowers-102"
    (flowers / "jpg").mkdir(parents=True)
    with Pool() as pool:
        pool.map(_flower_jpeg, [(flowers / "jpg", i) for i in range(1, flowers_images + 1)], chunksize=32)
    savemat(flowers / "imagelabels.mat", {"labels": rng.integers(1, 103, (1, flowers_images)).astype(np.uint8)})
    ids, third = np.arange(1, flowers_images + 1), flowers_images // 3
    savemat(
        flowers / "setid.mat",
        {"trnid": ids[None, :third], "valid": ids[None, third : 2 * third], "tstid": ids[None, 2 * third :]},
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default="crate_mae_base")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="constructor overrides")
    p.add_argument("--device", help="default: cuda if available")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds of the measurement")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="GPU peak of the estimate (dense bf16)")
    p.add_argument(
        "--utilisation",
        type=float,
        nargs="+",
        default=[1.0, 0.4],
        help="fractions of the peak the estimate assumes (1.0: an upper bound)",
    )
    p.add_argument("--json", help="also write the numbers here")
    p.add_argument("--stand-ins", metavar="DIR", help="only write stand-in data sets of the real sizes to DIR")
    p.add_argument("--cifar-images", type=int, default=60_000, help="--stand-ins: CIFAR-10 images (train + test)")
    p.add_argument("--flowers-images", type=int, default=3_060, help="--stand-ins: Flowers-102 JPEGs")
    args = p.parse_args(argv)
    if args.stand_ins:
        write_stand_ins(Path(args.stand_ins), args.cifar_images, args.flowers_images)
        print(
            f"stand-ins in {args.stand_ins}: CIFAR-10 {args.cifar_images:,} images, Flowers-102 "
            f"{args.flowers_images:,} JPEGs (random labels: for timing only)"
        )
        return 0
    torch.manual_seed(0)
    model = crate_mae.create_model(args.model, **parse_key_values(args.overrides))
    size = model.config.img_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    device = torch.device(args.device) if args.device else default_device()
    flops = flops_per_image(model, size)
    img_s = measure(model, size, args.batch_size, args.seconds, device)
    total = sum(SUITE_IMAGES.values())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    dtype = amp_dtype("auto", device)
    print(
        f"{args.model} {' '.join(args.overrides)} at {size} px: {flops / 1e9:.4g} GFLOPs per image "
        "(forward_features, FlopCounterMode)"
    )
    rate = f"{img_s:,.0f}" if img_s >= 100 else f"{img_s:.3g}"
    print(
        f"measured on {where} ({str(dtype or torch.float32).replace('torch.', '')}, batch {args.batch_size}): "
        f"{rate} img/s = {1000 / img_s:.3g} s per 1,000 images; the suite's {total:,} images: "
        f"{total / img_s / 60:.1f} min of forward passes"
    )
    estimates = []
    for u in args.utilisation:
        est = args.peak_tflops * 1e12 * u / flops
        estimates.append({"utilisation": u, "img_s": est, "suite_minutes": total / est / 60})
        print(
            f"ESTIMATE (not measured) at {u:.0%} of {args.peak_tflops:g} TFLOP/s: {est:,.0f} img/s; the suite's "
            f"forward passes {total / est:.1f} s"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "model": args.model,
                    "overrides": args.overrides,
                    "img_size": size,
                    "flops_per_image": flops,
                    "device": where,
                    "img_s": img_s,
                    "batch_size": args.batch_size,
                    "suite_images": total,
                    "peak_tflops": args.peak_tflops,
                    "estimates": estimates,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
