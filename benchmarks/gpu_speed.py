"""GPU speed of CRATE-MAE: the official computation against ours, fp32 / bf16 / bf16 + torch.compile, in one table.

    python benchmarks/gpu_speed.py                          # one CUDA GPU, about 4 minutes; prints one Markdown table
    python benchmarks/gpu_speed.py --peak-tflops 989 --peak-tflops-fp32 67   # a GPU the built-in table lacks
    python benchmarks/gpu_speed.py --micro --device cpu     # CPU smoke run at micro size (what CI runs)

Rows: for crate_mae_base and crate_mae_tiny at 224 px, for pretraining (a train step: masked forward at ratio 0.75,
backward, AdamW) and feature extraction (``forward_features`` of the unmasked image, no autograd):

- ``official``: ``crate_mae.models.official.OfficialCrateMAE``, the transcription of the official code that
  reproduces its fixtures bit for bit, with facebookresearch/mae's optimizer (default AdamW), in fp32 and under bf16
  autocast;
- ``ours``: ``crate_mae.create_model`` with our training path's optimizer (``build_optimizer``, fused AdamW), in
  fp32, bf16 autocast, and bf16 autocast + ``torch.compile``.

Columns: img/s (``--steps`` timed steps after ``--warmup`` untimed ones, which include compilation); the ratio to
official fp32 of the same model and task; model FLOPs per image from ``torch.utils.flop_counter.FlopCounterMode``
(counted on the meta device, attention as its two products; each implementation's own count, so ours, whose ISTA
is one product instead of three, does fewer FLOPs for the same function); model FLOP utilisation = achieved FLOP/s
over the peak of the row's precision (table below, or ``--peak-tflops``); peak memory allocated
(``torch.cuda.max_memory_allocated``) and its ratio to official fp32. fp32 rows run as PyTorch runs them by default
(TF32 matmuls off; the header says which). A row that fails (out of memory, a compile error) says so in its last
column; the other rows still run. Rows left when ``--budget-s`` has passed are marked skipped, so the whole run stays
within about 5 minutes on one GPU.

Targets (issue 11): ours bf16 + compile >= 3x official fp32 img/s at base/224 for pretraining, MFU >= 40 %, peak
memory <= 0.5x official.

Then the resolution sweep (issue 24; the CPU's is ``benchmarks/model_speed.py --sweep``): crate_mae_tiny at
``--sweep-sizes`` (224, 320, 448, 640 px; tokens grow as (px/16)^2, the official N x N attention as their square)
at one batch (``--sweep-batch``, 16), official fp32 against ours in fp32 and bf16, both tasks, in a second table:
img/s, ms per step, the ratio to official fp32 at the same size, peak memory and its ratio. It has its own budget
(``--sweep-budget-s``); a size where the official computation runs out of memory says so in its row (the exit
status is 1 when a row of the first table or a row of ours in the sweep fails).
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
from crate_mae.engine.optim import build_optimizer  # noqa: E402
from crate_mae.models.official import official_copy  # noqa: E402

# Dense (no sparsity) peak TFLOP/s by device name, first match wins: (bf16 tensor cores, fp32 without TF32), from
# NVIDIA's datasheets.
PEAK_TFLOPS = {
    "H200 NVL": (835.0, 60.0),
    "H200": (989.0, 67.0),
    "H100 NVL": (835.0, 60.0),
    "H100 PCIe": (756.0, 51.0),
    "H100": (989.0, 67.0),
    "A100": (312.0, 19.5),
}

MICRO = dict(img_size=32, patch_size=8, depth=2, decoder_depth=2)
MICRO_WIDTH = {"crate_mae_base": dict(embed_dim=64, num_heads=4), "crate_mae_tiny": dict(embed_dim=32, num_heads=2)}
MODES = [
    ("official", "fp32", False),
    ("official", "bf16", False),
    ("ours", "fp32", False),
    ("ours", "bf16", False),
    ("ours", "bf16", True),
]
SWEEP_MODES = [("official", "fp32", False), ("ours", "fp32", False), ("ours", "bf16", False)]


def peak_tflops(device: torch.device, bf16: float | None, fp32: float | None) -> tuple[float | None, float | None, str]:
    if device.type != "cuda":
        return bf16, fp32, "given" if bf16 or fp32 else "none (not a GPU)"
    name = torch.cuda.get_device_name(device)
    known = next((v for k, v in PEAK_TFLOPS.items() if k in name), (None, None))
    source = (
        "given" if bf16 or fp32 else ("built-in table" if known[0] else f"unknown GPU {name!r}: give --peak-tflops")
    )
    return bf16 or known[0], fp32 or known[1], source


def build(name: str, impl: str, micro: bool, device: torch.device, img_size: int | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    kw = {**MICRO, **MICRO_WIDTH[name]} if micro else {}
    ours = crate_mae.create_model(name, **{**kw, **({"img_size": img_size} if img_size else {})})
    if impl == "ours":
        return ours.to(device)
    return official_copy(ours).to(device)


def flops_per_image(model: torch.nn.Module, task: str, batch: int, img_size: int) -> float:
    """Model FLOPs per image of one step at ``batch`` (training: forward + backward), counted on the meta device."""
    m = copy.deepcopy(model).to("meta").train(task == "pretrain")
    imgs = torch.empty(batch, 3, img_size, img_size, device="meta")
    noise = torch.rand(batch, (img_size // m.patch_size) ** 2, device="meta")
    with FlopCounterMode(display=False) as counter:
        if task == "pretrain":
            out = m(imgs, 0.75, noise)
            (out[0] if isinstance(out, tuple) else out.loss).backward()
        else:
            with torch.no_grad():
                m.forward_features(imgs)
    return counter.get_total_flops() / batch


def make_step(
    model,
    impl: str,
    task: str,
    bf16: bool,
    compiled: bool,
    backend: str,
    batch: int,
    img_size: int,
    device: torch.device,
):
    """A closure running one step of ``task`` on fixed random inputs."""
    imgs = torch.randn(batch, 3, img_size, img_size, device=device)
    noise = torch.rand(batch, (img_size // model.patch_size) ** 2, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    if task == "pretrain":
        model.train()
        opt = (
            torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.95))
            if impl == "official"
            else build_optimizer(model, 1e-6, 0.05, (0.9, 0.95))
        )
        fn = torch.compile(model, backend=backend) if compiled else model

        def step():
            with autocast:
                out = fn(imgs, 0.75, noise)
            (out[0] if isinstance(out, tuple) else out.loss).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step
    model.eval()
    fn = torch.compile(model.forward_features, backend=backend) if compiled else model.forward_features

    def features():
        with torch.no_grad(), autocast:
            fn(imgs)

    return features


def run_row(args, device, name, task, impl, precision, compiled, batch, img_size, flops) -> dict:
    import torch._dynamo as dynamo

    dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = build(name, impl, args.micro, device, img_size)
    step = make_step(model, impl, task, precision == "bf16", compiled, args.compile_backend, batch, img_size, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - t) / args.steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del model, step
    return dict(img_s=batch / seconds, ms=1e3 * seconds, flops_img=flops, peak_gib=peak, status="ok")


def run_sweep(args, device, t0: float) -> list[dict]:
    """crate_mae_tiny at every ``--sweep-sizes`` size: official fp32 against ours fp32 / bf16, both tasks."""
    rows = []
    name = "crate_mae_tiny"
    for px in args.sweep_sizes:
        for task in ("pretrain", "features"):
            for impl, precision, compiled in SWEEP_MODES:
                row = dict(
                    px=px,
                    tokens=1 + (px // (8 if args.micro else 16)) ** 2,
                    task=task,
                    impl=impl,
                    precision=precision,
                    batch=args.sweep_batch,
                )
                if time.perf_counter() - t0 > args.sweep_budget_s:
                    row.update(status=f"skipped (past --sweep-budget-s {args.sweep_budget_s:.0f})")
                else:
                    try:
                        row.update(
                            run_row(args, device, name, task, impl, precision, compiled, args.sweep_batch, px, None)
                        )
                    except Exception as e:  # noqa: BLE001 -- the official computation running out of memory is a result
                        row.update(status=f"FAIL {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                rows.append(row)
                print(
                    f"# sweep {px} px {task} {impl} {precision}: {row.get('img_s', 0):.1f} img/s, {row['status']}",
                    flush=True,
                )
    return rows


def print_sweep(rows: list[dict]) -> None:
    print(
        "| px | tokens | task | implementation | precision | batch | img/s | ms/step | vs official fp32 | "
        "peak mem GiB | mem vs official fp32 | status |"
    )
    print("|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        base = next(
            (
                r
                for r in rows
                if r["px"] == row["px"]
                and r["task"] == row["task"]
                and r["impl"] == "official"
                and r["precision"] == "fp32"
                and "img_s" in r
            ),
            None,
        )
        lead = (
            f"| {row['px']} | {row['tokens']} | {row['task']} | {row['impl']} | {row['precision']} | {row['batch']} |"
        )
        if "img_s" not in row:
            print(f"{lead} | | | | | {row['status']} |")
            continue
        speed = f"{row['img_s'] / base['img_s']:.2f}x" if base else ""
        mem = f"{row['peak_gib']:.2f}" if row.get("peak_gib") is not None else "n/a"
        mem_ratio = (
            f"{row['peak_gib'] / base['peak_gib']:.2f}x"
            if base and row.get("peak_gib") and base.get("peak_gib")
            else ""
        )
        print(f"{lead} {row['img_s']:.1f} | {row['ms']:.1f} | {speed} | {mem} | {mem_ratio} | {row['status']} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--micro", action="store_true", help="micro models at 32 px (the CPU smoke run)")
    p.add_argument("--models", nargs="+", default=["crate_mae_base", "crate_mae_tiny"])
    p.add_argument("--batch", type=int, default=None, help="default: 64 (base) / 128 (tiny) on a GPU, 4 with --micro")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default 10; 2 with --micro)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; 1 with --micro)")
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of this device")
    p.add_argument("--peak-tflops-fp32", type=float, default=None, help="fp32 peak of this device")
    p.add_argument("--compile-backend", default=None, help="default: inductor on CUDA, eager on CPU")
    p.add_argument("--budget-s", type=float, default=240.0, help="rows still to run after this are skipped")
    p.add_argument(
        "--sweep-sizes",
        nargs="*",
        type=int,
        default=None,
        help="resolution sweep sizes (default: 224 320 448 640; 32 48 with --micro; none: no sweep)",
    )
    p.add_argument("--sweep-batch", type=int, default=None, help="sweep batch (default 16; 2 with --micro)")
    p.add_argument(
        "--sweep-budget-s",
        type=float,
        default=180.0,
        help="sweep rows still to run after this are skipped (counted from the sweep's start)",
    )
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.steps = args.steps or (2 if args.micro else 10)
    args.warmup = args.warmup or (1 if args.micro else 3)
    args.compile_backend = args.compile_backend or ("inductor" if device.type == "cuda" else "eager")
    if args.sweep_sizes is None:
        args.sweep_sizes = [32, 48] if args.micro else [224, 320, 448, 640]
    args.sweep_batch = args.sweep_batch or (2 if args.micro else 16)
    bf16_peak, fp32_peak, source = peak_tflops(device, args.peak_tflops, args.peak_tflops_fp32)
    img_size = 32 if args.micro else 224
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    tf32 = torch.backends.cuda.matmul.allow_tf32
    print(
        f"# crate-mae gpu_speed: {dev_name}, torch {torch.__version__}, {img_size} px, {args.steps} timed steps "
        f"after {args.warmup}, compile backend {args.compile_backend}, TF32 matmuls {'on' if tf32 else 'off'}"
    )
    print(f"# peak TFLOP/s for MFU: bf16 {bf16_peak or 'n/a'}, fp32 {fp32_peak or 'n/a'} ({source})", flush=True)

    t0 = time.perf_counter()
    rows = []
    for name in args.models:
        batch = args.batch or (4 if args.micro else (64 if "base" in name else 128))
        for task in ("pretrain", "features"):
            flops = {}
            for impl, precision, compiled in MODES:
                row = dict(
                    model=name if not args.micro else f"{name} (micro)",
                    task=task,
                    impl=impl,
                    precision=precision,
                    compiled=compiled,
                    batch=batch,
                )
                if time.perf_counter() - t0 > args.budget_s:
                    row.update(status=f"skipped (past --budget-s {args.budget_s:.0f})")
                    rows.append(row)
                    continue
                try:
                    if impl not in flops:
                        flops[impl] = flops_per_image(
                            build(name, impl, args.micro, torch.device("cpu")), task, batch, img_size
                        )
                    row.update(
                        run_row(args, device, name, task, impl, precision, compiled, batch, img_size, flops[impl])
                    )
                except Exception as e:  # noqa: BLE001 -- one configuration failing is a result, not a crash
                    row.update(status=f"FAIL {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                rows.append(row)
                print(
                    f"# {name} {task} {impl} {precision}{' compiled' if compiled else ''}: "
                    f"{row.get('img_s', 0):.1f} img/s, {row['status']}",
                    flush=True,
                )

    print()
    print(
        "| model | task | implementation | precision | compile | batch | img/s | vs official fp32 | "
        "GFLOP/img | MFU | peak mem GiB | mem vs official fp32 | status |"
    )
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        base = next(
            (
                r
                for r in rows
                if r["model"] == row["model"]
                and r["task"] == row["task"]
                and r["impl"] == "official"
                and r["precision"] == "fp32"
                and "img_s" in r
            ),
            None,
        )
        ok = "img_s" in row
        peak = bf16_peak if row["precision"] == "bf16" else fp32_peak
        mfu = f"{100 * row['img_s'] * row['flops_img'] / (peak * 1e12):.1f} %" if ok and peak else "n/a"
        speed = f"{row['img_s'] / base['img_s']:.2f}x" if ok and base else ""
        mem = f"{row['peak_gib']:.2f}" if ok and row.get("peak_gib") is not None else "n/a"
        mem_ratio = (
            f"{row['peak_gib'] / base['peak_gib']:.2f}x"
            if ok and base and row.get("peak_gib") and base.get("peak_gib")
            else ""
        )
        print(
            f"| {row['model']} | {row['task']} | {row['impl']} | {row['precision']} | "
            f"{'yes' if row['compiled'] else 'no'} | {row['batch']} | {row['img_s']:.1f} | {speed} | "
            f"{row['flops_img'] / 1e9:.3g} | {mfu} | {mem} | {mem_ratio} | {row['status']} |"
            if ok
            else f"| {row['model']} | {row['task']} | {row['impl']} | {row['precision']} | "
            f"{'yes' if row['compiled'] else 'no'} | {row['batch']} | | | | | | | {row['status']} |"
        )
    sweep = run_sweep(args, device, time.perf_counter()) if args.sweep_sizes else []
    if sweep:
        print(f"\nResolution sweep: crate_mae_tiny, batch {args.sweep_batch}")
        print_sweep(sweep)
    print(f"\n{time.perf_counter() - t0:.0f} s in all")
    if args.json:
        Path(args.json).write_text(
            json.dumps(dict(device=dev_name, torch=torch.__version__, rows=rows, sweep=sweep), indent=2)
        )
    failed = [r for r in rows + [r for r in sweep if r["impl"] == "ours"] if r["status"].startswith("FAIL")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
