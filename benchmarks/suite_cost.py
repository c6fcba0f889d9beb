"""What the transfer suite (`crate-mae eval-suite`) costs in forward passes: model FLOPs per image, measured
feature-extraction speed on this machine, and a FLOP-based GPU estimate for the four data sets.

    python benchmarks/suite_cost.py                                  # crate_mae_base at 224 px, on this machine
    python benchmarks/suite_cost.py --device cpu --batch-size 32 --seconds 30
    python benchmarks/suite_cost.py crate_mae_tiny img_size=32 patch_size=4 embed_dim=128 depth=4 num_heads=4 \\
        decoder_depth=4                                              # the CIFAR-scale model

- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over ``forward_features`` of one batch on the meta device
  (a multiply-add is 2 FLOPs; attention counted as its two products), divided by the batch.
- Measured: ``forward_features`` of random images, batches of ``--batch-size``, bf16 autocast on CUDA and fp32 on
  CPU as the suite runs it, for ``--seconds`` after a warm-up; the model alone, no decoding or resizing.
- Estimate (labelled so): images/s = peak FLOP/s x utilisation / FLOPs per image, at the ``--peak-tflops`` given
  (default 989, the dense bf16 peak of an H100 / H200 SXM in NVIDIA's datasheet) and each ``--utilisation``;
  then the time of the suite's forward passes over CIFAR-10 + CIFAR-100 + Flowers-102 + Pets (standard splits,
  135,538 images).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default="crate_mae_base")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="constructor overrides")
    p.add_argument("--device", help="default: cuda if available")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds of the measurement")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="GPU peak of the estimate (dense bf16)")
    p.add_argument("--utilisation", type=float, nargs="+", default=[1.0, 0.4],
                   help="fractions of the peak the estimate assumes (1.0: an upper bound)")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = crate_mae.create_model(args.model, **parse_key_values(args.overrides))
    size = model.config["img_size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    device = torch.device(args.device) if args.device else default_device()
    flops = flops_per_image(model, size)
    img_s = measure(model, size, args.batch_size, args.seconds, device)
    total = sum(SUITE_IMAGES.values())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    dtype = amp_dtype("auto", device)
    print(f"{args.model} {' '.join(args.overrides)} at {size} px: {flops / 1e9:.4g} GFLOPs per image "
          "(forward_features, FlopCounterMode)")
    print(f"measured on {where} ({str(dtype or torch.float32).replace('torch.', '')}, batch {args.batch_size}): "
          f"{img_s:,.0f} img/s = {1000 / img_s:.2f} s per 1,000 images; the suite's {total:,} images: "
          f"{total / img_s / 60:.1f} min of forward passes")
    estimates = []
    for u in args.utilisation:
        est = args.peak_tflops * 1e12 * u / flops
        estimates.append({"utilisation": u, "img_s": est, "suite_minutes": total / est / 60})
        print(f"ESTIMATE (not measured) at {u:.0%} of {args.peak_tflops:g} TFLOP/s: {est:,.0f} img/s; the suite's "
              f"forward passes {total / est:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "overrides": args.overrides, "img_size": size,
                                               "flops_per_image": flops, "device": where, "img_s": img_s,
                                               "batch_size": args.batch_size, "suite_images": total,
                                               "peak_tflops": args.peak_tflops, "estimates": estimates}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
