"""Fast path vs literal reference path, same weights, one process.

    python benchmarks/model_speed.py                         # crate_mae_tiny, 224 px, batch 8, CPU
    python benchmarks/model_speed.py --model crate_mae_base --batch 64 --amp   # on a GPU: bf16 autocast

The fast path uses scaled_dot_product_attention with q = k = v and the two-matmul ISTA; the reference path is the
paper arithmetic written out (explicit attention matrix, three-matmul ISTA; crate_mae/models/reference.py). Both
are timed interleaved (fast, reference, fast, ...) so that machine noise hits both alike; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import crate_mae
from crate_mae.utils import default_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(model, imgs, noise, mode: str, amp: bool, opt):
    device = imgs.device
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else torch.enable_grad

    if mode == "train":
        def step():
            with ctx():
                loss = model(imgs, mask_ratio=0.75, noise=noise).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        def step():
            with torch.no_grad(), (torch.autocast(device.type, dtype=torch.bfloat16) if amp else torch.enable_grad()):
                model(imgs, mask_ratio=0.75, noise=noise)
    return step


def bench(args) -> dict:
    device = torch.device(args.device) if args.device else default_device()
    torch.manual_seed(0)
    model = crate_mae.create_model(args.model, img_size=args.img_size).to(device)
    imgs = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    noise = torch.rand(args.batch, model.encoder.patch_embed.num_patches, device=device)
    results = {}
    for mode in ("train", "infer"):
        model.train(mode == "train")
        # the two optimisers see identical gradients in expectation; what we time is the step, not convergence
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        steps = {impl: make_step(model, imgs, noise, mode, args.amp, opt) for impl in ("fast", "reference")}
        times = {"fast": [], "reference": []}
        for i in range(args.warmup + args.repeats):
            for impl in ("fast", "reference") if i % 2 == 0 else ("reference", "fast"):
                model.set_impl(impl)
                sync(device)
                t0 = time.perf_counter()
                steps[impl]()
                sync(device)
                if i >= args.warmup:
                    times[impl].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        results[mode] = dict(fast_img_s=args.batch / med["fast"], ref_img_s=args.batch / med["reference"],
                             ratio=med["reference"] / med["fast"])
        model.set_impl("fast")
    if device.type == "cuda":
        results["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="crate_mae_tiny")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default=None, help="default: cuda if available else cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    args = p.parse_args()
    res = bench(args)
    dev = args.device or default_device().type
    print(f"{args.model} {args.img_size}px batch {args.batch} on {dev}{' bf16' if args.amp else ''} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(f"{'':<8}{'fast img/s':>12}{'reference img/s':>17}{'speed-up':>10}")
    for mode in ("train", "infer"):
        r = res[mode]
        print(f"{mode:<8}{r['fast_img_s']:>12.2f}{r['ref_img_s']:>17.2f}{r['ratio']:>9.3f}x")
    if "peak_mem_gib" in res:
        print(f"peak GPU memory {res['peak_mem_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
