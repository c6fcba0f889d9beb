"""CPU speed and memory of CRATE-MAE against the official computation: the cases users run, cost against resolution,
and an op-level profile.

    python benchmarks/model_speed.py                  # tiny/224/8: train step + feature extraction, torch's threads
    python benchmarks/model_speed.py --suite          # every case of CASES, torch's default threads and 1, + memory
    python benchmarks/model_speed.py --suite --cases base/224/4 --threads 1
    python benchmarks/model_speed.py --sweep          # tiny batch 2 at 224/320/448/640 px: table + docs/images plot
    python benchmarks/model_speed.py --profile --cases base/224/4 --threads 1 2     # op-level shares, both models
    python benchmarks/model_speed.py --threads 1 --amp --compile --visible-only --grad-checkpointing   # contenders
    python benchmarks/model_speed.py --config configs/pretrain_cifar.yaml --amp --compile   # a config's model + batch
    python benchmarks/model_speed.py --flops --cases tiny/224/8 base/224/4   # training FLOPs only (seconds)

A case is ``SIZE/PX/BATCH`` (``tiny/224/8`` = crate_mae_tiny at 224 px, batch 8). Tasks: ``train`` = masked forward
(ratio 0.75, fixed noise) + backward + AdamW step; ``features`` = ``forward_features`` of the unmasked image without
autograd (what ``crate-mae features`` runs); ``masked`` = the masked forward without autograd.

The baseline is ``crate_mae.models.official.OfficialCrateMAE``, a transcription of the official Ma-Lab-Berkeley/CRATE
code (explicit N x N attention, three-product ISTA, gather/cat masking, its module tree) that reproduces the official
fixtures within fp32 tolerance (tests/models/test_official_fixtures.py), loaded with our model's weights, trained with
facebookresearch/mae's optimizer (``torch.optim.AdamW`` on timm's weight-decay groups). Ours is ``create_model(...)``
with our training path's optimizer (``engine.optim.build_optimizer``: the same AdamW, fused kernel). Contenders beside
the two (not in the suite): ``--amp`` ours under bf16 autocast; ``--compile`` ``torch.compile`` of ours;
``--grad-checkpointing`` ours recomputing every block in backward (and the bytes of activations saved for backward
with and without); ``--visible-only`` ours with ``mask_tokens_in_encoder=False`` (not the paper's model; also the
training FLOPs of both frames, whose ratio bounds the speed-up that frame can give).

Time: steps run interleaved in one process (each round visits every contender, in rotating order) so that machine
noise hits all alike; a row gives the median step time and the ratio of the baseline's median to the contender's,
with the lowest-highest ratio over the rounds, and the 1-minute load average over the rounds (``os.getloadavg``).
On a CPU that other jobs share, threads wait for descheduled peers and timings measure the scheduler: read the load
column before the ratio. ``--threads 0`` is torch's default (one thread per physical core). GFLOP/step: each
implementation's own count (``torch.utils.flop_counter``, on the meta device except for a CPU forward without
autograd, counted on a second real call since it reuses ISTA's kept M; train = forward + backward, the optimizer
not counted; attention as its two products whichever kernel runs); the official count over ours is the speed-up
that ours would have at an equal FLOP rate.

Memory (``--suite``, ``--sweep``, ``--memory``): every model in its own fresh process, after one warm-up step (so the
optimizer state exists, as in a training loop), then one measured step:

- peak RSS: the process's resident-set high-water mark during that step (Linux ``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``): everything the OS sees (weights, optimizer state, activations, allocator caches,
  oneDNN/MKL buffers);
- step tensors: the peak of tensor bytes allocated during the step above those live before it (activations,
  gradients, temporaries), from the allocation events of torch's profiler (``profile_memory=True``): exact and
  independent of the allocator, the CPU counterpart of ``torch.cuda.max_memory_allocated``.

Profile (``--profile``): torch.profiler over two steps of each model per thread count; self time of each op, grouped
into linear products (mm / addmm), attention (SDPA kernels, or bmm + softmax), layer norm, other forward/backward ops
and the optimizer step (everything under its ``record_function``), per step, with each group's speed-up from the
first thread count to the others. GPU counterpart: ``benchmarks/gpu_speed.py``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from timm.optim import param_groups_weight_decay
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

import crate_mae  # noqa: E402
from crate_mae.engine.optim import build_optimizer  # noqa: E402
from crate_mae.models.official import OfficialCrateMAE, official_copy  # noqa: E402
from crate_mae.utils import default_device, parse_key_values  # noqa: E402

DEFAULT_THREADS = torch.get_num_threads()  # torch's default, read before anything changes it
CASES = ["tiny/224/8", "base/224/4", "tiny/448/2", "tiny/640/1"]
SWEEP_SIZES = [224, 320, 448, 640]
TASKS = ("train", "features", "masked")
PLOT = REPO / "docs" / "images" / "resolution_sweep_cpu.png"


def parse_case(spec: str) -> tuple[str, int, int]:
    """``tiny/224/8`` -> ("crate_mae_tiny", 224, 8)."""
    try:
        size, px, batch = spec.split("/")
        return f"crate_mae_{size}", int(px), int(batch)
    except ValueError:
        raise ValueError(f"case {spec!r} is not SIZE/PX/BATCH, e.g. tiny/224/8") from None


def case_name(model: str, px: int, batch: int) -> str:
    return f"{model.removeprefix('crate_mae_')}/{px}/{batch}"


def set_threads(n: int) -> int:
    torch.set_num_threads(n or DEFAULT_THREADS)
    return torch.get_num_threads()


def load_avg() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


# -- models and steps ----------------------------------------------------------------------------------------------
def create(model: str, px: int, overrides: dict, **kw) -> torch.nn.Module:
    return crate_mae.create_model(model, img_size=px, **{**overrides, **kw})


def contenders(args, model: str, px: int, device) -> dict:
    """``{name: (module, bf16 autocast, compiled)}``; every CRATE-MAE contender starts from the same weights."""
    torch.manual_seed(0)
    ours = create(model, px, args.overrides).to(device)
    out = {"official": (official_copy(ours).to(device), False, False), "ours": (ours, False, False)}
    if args.amp:
        out["ours bf16"] = (ours, True, False)
    if args.compile:
        compiled = copy.deepcopy(ours)
        out["ours compiled"] = (compiled, False, True)
        if args.amp:
            out["ours compiled bf16"] = (compiled, True, True)
    if args.grad_checkpointing:
        checkpointed = copy.deepcopy(ours)
        checkpointed.set_grad_checkpointing(True)
        out["ours checkpointed"] = (checkpointed, False, False)
    if args.visible_only:
        visible = create(model, px, args.overrides, mask_tokens_in_encoder=False).to(device)
        visible.load_state_dict(ours.state_dict())
        out["visible-only"] = (visible, False, False)
    return out


def make_optimizer(model) -> torch.optim.Optimizer:
    if isinstance(model, OfficialCrateMAE):  # facebookresearch/mae main_pretrain.py: timm's groups, default AdamW
        return torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1e-6, betas=(0.9, 0.95))
    return build_optimizer(model, 1e-6, 0.05, (0.9, 0.95))


def make_step(model, task: str, imgs, noise, amp: bool = False, compiled: bool = False, phases: bool = False):
    """A closure running one step of ``task``; with ``phases`` its parts are named for the profiler."""
    model.train(task == "train")
    autocast = torch.autocast(imgs.device.type, dtype=torch.bfloat16, enabled=amp)
    if task == "features":
        fn = torch.compile(model.forward_features) if compiled else model.forward_features

        def features():
            with torch.no_grad(), autocast:
                fn(imgs)

        return features
    fn = torch.compile(model) if compiled else model
    opt = make_optimizer(model) if task == "train" else None

    def loss_of():
        out = fn(imgs, 0.75, noise)
        return out[0] if isinstance(out, tuple) else out.loss

    def masked():
        with torch.no_grad(), autocast:
            loss_of()

    def train():
        with record_function("forward") if phases else _nothing(), autocast:
            loss = loss_of()
        with record_function("backward") if phases else _nothing():
            loss.backward()
        with record_function("optimizer") if phases else _nothing():
            opt.step()
            opt.zero_grad(set_to_none=True)

    return train if task == "train" else masked


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def inputs(model: torch.nn.Module, px: int, batch: int, device):
    """Fixed random images and masking noise for ``model``'s patch grid."""
    patch = model.patch_size
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(batch, 3, px, px, generator=g).to(device)
    return imgs, torch.rand(batch, (px // patch) ** 2, generator=g).to(device)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- time -----------------------------------------------------------------------------------------------------------
def time_case(args, model: str, px: int, batch: int, threads: int, device) -> list[dict]:
    """Interleaved rounds of every contender for every task at ``threads``: one row per (task, contender)."""
    n = set_threads(threads)
    models = contenders(args, model, px, device)
    imgs, noise = inputs(models["ours"][0], px, batch, device)
    rows = []
    for task in args.tasks:
        steps = {k: make_step(m, task, imgs, noise, amp, compiled) for k, (m, amp, compiled) in models.items()}
        names, times, loads = list(steps), {k: [] for k in steps}, [load_avg()]
        for i in range(args.warmup + args.repeats):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                sync(device)
                t0 = time.perf_counter()
                steps[name]()
                sync(device)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
            loads.append(load_avg())
        base = statistics.median(times["official"])
        flops = {k: step_flops(m, task, batch, px) for k, (m, _, _) in models.items() if k in ("official", "ours")}
        for name, ts in times.items():
            per_round, med = sorted(b / c for b, c in zip(times["official"], ts)), statistics.median(ts)
            rows.append(
                dict(
                    case=case_name(model, px, batch),
                    model=model,
                    px=px,
                    batch=batch,
                    task=task,
                    threads=n,
                    contender=name,
                    ms=1e3 * med,
                    img_s=batch / med,
                    ratio=base / med,
                    lo=per_round[0],
                    hi=per_round[-1],
                    times_s=ts,
                    load=(min(loads), max(loads)),
                    gflop=flops[name] / 1e9 if name in flops else None,
                )
            )
        if "visible-only" in times:
            per = sorted(a / b for a, b in zip(times["ours"], times["visible-only"]))
            rows[-1]["vs_ours"] = (
                statistics.median(times["ours"]) / statistics.median(times["visible-only"]),
                per[0],
                per[-1],
            )
        print(
            f"# {case_name(model, px, batch)} {task} {n} threads: "
            + ", ".join(f"{r['contender']} {r['ms']:.0f} ms" for r in rows if r["task"] == task and r["threads"] == n)
            + f" (load {min(loads):.1f}-{max(loads):.1f})",
            flush=True,
        )
    return rows


# -- memory ---------------------------------------------------------------------------------------------------------
def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def tensor_peak_mib(step) -> float:
    """Peak of tensor bytes allocated during ``step()`` above those live before it (torch profiler events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type().name == "CPU"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def measure_memory(args) -> dict:
    """In this (fresh) process: one model, one warm-up step, then the peak RSS and step tensors of one step."""
    impl, task = args.memory_child
    model, px, batch = parse_case(args.cases[0])
    set_threads(args.threads[0])
    torch.manual_seed(0)
    ours = create(model, px, args.overrides)
    net = official_copy(ours) if impl == "official" else ours
    del ours
    imgs, noise = inputs(net, px, batch, torch.device("cpu"))
    step = make_step(net, task, imgs, noise)
    step()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = rss_mib("VmRSS")
    tensors = tensor_peak_mib(step)  # the profiler's own records add a few MiB at most to the RSS peak
    return dict(rss_before_mib=before, rss_peak_mib=rss_mib("VmHWM"), tensor_peak_mib=tensors)


def memory(args, model: str, px: int, batch: int, task: str, impl: str) -> dict:
    """``measure_memory`` of one model in a fresh process."""
    cmd = [
        sys.executable,
        __file__,
        "--memory-child",
        impl,
        task,
        "--cases",
        case_name(model, px, batch),
        "--threads",
        str(args.threads[0]),
        "--set",
        *[f"{k}={json.dumps(v)}" for k, v in args.overrides.items()],
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return dict(error=(proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:160])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- tables ---------------------------------------------------------------------------------------------------------
def fmt_ratio(r: dict) -> str:
    return f"{r['ratio']:.2f}x ({r['lo']:.2f}-{r['hi']:.2f})"


def mem_cells(mem: dict, key: str) -> tuple[str, str, str]:
    o, u = mem.get("official", {}), mem.get("ours", {})
    if key not in o or key not in u:
        return (o.get("error", "n/a"), u.get("error", "n/a"), "")
    return mib(o[key]), mib(u[key]), f"{u[key] / o[key]:.2f}x"


def mib(v: float) -> str:
    """A MiB or ms figure: whole numbers from 100, one decimal from 10, two below."""
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def print_speed_table(rows: list[dict]) -> None:
    print("| case | task | threads | contender | ms/step | img/s | vs official (rounds) | GFLOP/step | load avg |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        gflop = f"{r['gflop']:,.1f}" if r.get("gflop") else ""
        print(
            f"| {r['case']} | {r['task']} | {r['threads']} | {r['contender']} | {r['ms']:,.0f} | {r['img_s']:.2f} | "
            f"{fmt_ratio(r)} | {gflop} | {r['load'][0]:.1f}-{r['load'][1]:.1f} |"
        )


def print_memory_table(mems: dict) -> None:
    print(
        "| case | task | peak RSS MiB official | ours | ours/official | step tensors MiB official | ours | "
        "ours/official |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (case, task), mem in mems.items():
        print(
            f"| {case} | {task} | "
            + " | ".join(mem_cells(mem, "rss_peak_mib"))
            + " | "
            + " | ".join(mem_cells(mem, "tensor_peak_mib"))
            + " |"
        )


# -- FLOPs, activations (contender extras) ---------------------------------------------------------------------------
def train_flops(model, batch: int, img_size: int) -> int:
    """FLOPs of one training forward + backward, counted on the meta device (no arithmetic runs; attention is
    counted as its two products, whichever kernel the real device would use)."""
    model = copy.deepcopy(model).to("meta").train()
    imgs = torch.empty(batch, 3, img_size, img_size, device="meta")
    noise = torch.rand(batch, (img_size // model.patch_size) ** 2, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = model(imgs, 0.75, noise)
        (out[0] if isinstance(out, tuple) else out.loss).backward()
    return counter.get_total_flops()


def step_flops(model, task: str, batch: int, img_size: int) -> int:
    """FLOPs of one step of ``task`` (train: forward + backward, the optimizer not counted)."""
    if task == "train":
        return train_flops(model, batch, img_size)
    # On the CPU a forward without autograd reuses ISTA's kept M after the first call (ISTA.inference_step_matrix),
    # so the count is of a later call, run for real; elsewhere every call builds M, which the meta device counts.
    device = "cpu" if next(model.parameters()).device.type == "cpu" else "meta"
    model = copy.deepcopy(model).to(device).eval()
    imgs = torch.zeros(batch, 3, img_size, img_size, device=device)
    noise = torch.rand(batch, (img_size // model.patch_size) ** 2, device=device)

    def call():
        return model.forward_features(imgs) if task == "features" else model(imgs, 0.75, noise)

    # The counter knows the flash kernels of CUDA, not the CPU's: the same two products (it passes shapes).
    def cpu_flash_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(q, k, v)

    cpu_flash = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash_flops}
    with torch.no_grad():
        if device == "cpu":
            call()
        with FlopCounterMode(display=False, custom_mapping=cpu_flash) as counter:
            call()
    return counter.get_total_flops()


def visible_only_bounds(args, model: str, px: int, batch: int) -> dict:
    """Training FLOPs of the official, faithful and visible-only models, and the part of each that is not the
    encoder (from the difference between the full depth and depth 1), which bounds any encoder-side speed-up."""
    torch.manual_seed(0)
    out = {"official": dict(total=train_flops(official_copy(create(model, px, args.overrides)), batch, px))}
    for frame, kw in (("ours", {}), ("visible-only", dict(mask_tokens_in_encoder=False))):
        full = create(model, px, args.overrides, **kw)
        depth = full.config.depth
        one = create(model, px, args.overrides, depth=1, **kw)
        f_full, f_one = train_flops(full, batch, px), train_flops(one, batch, px)
        encoder = (f_full - f_one) / (depth - 1) * depth if depth > 1 else float("nan")
        out[frame] = dict(total=f_full, encoder=encoder, rest=f_full - encoder)
    return out


def saved_activation_bytes(model, imgs, noise) -> int:
    """Bytes of the tensors autograd keeps for backward in one training forward (parameters excluded)."""
    params = {p.data_ptr() for p in model.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(imgs, mask_ratio=0.75, noise=noise).loss.backward()
    model.zero_grad(set_to_none=True)
    return total


def print_extras(args, rows: list[dict], model: str, px: int, batch: int, device) -> None:
    if args.visible_only:
        for r in rows:
            if "vs_ours" in r:
                t, lo, hi = r["vs_ours"]
                print(
                    f"visible-only vs ours (faithful), {r['task']}, {r['threads']} threads: {t:.2f}x "
                    f"({lo:.2f}-{hi:.2f})"
                )
        f = visible_only_bounds(args, model, px, batch)
        o, v = f["ours"], f["visible-only"]
        print(
            f"training FLOPs (forward + backward): official {f['official']['total'] / 1e9:.1f} G, ours "
            f"{o['total'] / 1e9:.1f} G (encoder {o['encoder'] / 1e9:.1f} G), visible-only {v['total'] / 1e9:.1f} G "
            f"(encoder {v['encoder'] / 1e9:.1f} G)"
        )
        print(
            f"visible-only vs ours at equal FLOP rate: {o['total'] / v['total']:.2f}x; even with an encoder that "
            f"cost nothing: {o['total'] / o['rest']:.2f}x"
        )
    if args.grad_checkpointing:
        torch.manual_seed(0)
        ours = create(model, px, args.overrides).to(device).train()
        imgs, noise = inputs(ours, px, batch, device)
        plain = saved_activation_bytes(ours, imgs, noise)
        ours.set_grad_checkpointing(True)
        ckpt = saved_activation_bytes(ours, imgs, noise)
        print(
            f"activations saved for backward: {plain / 2**20:.1f} MiB plain, {ckpt / 2**20:.1f} MiB with "
            f"per-block checkpointing ({ckpt / plain:.2f}x)"
        )


# -- profile --------------------------------------------------------------------------------------------------------
GROUPS = (
    "linear products (mm, addmm)",
    "attention (SDPA kernels; bmm, softmax)",
    "layer norm",
    "other forward/backward ops",
    "optimizer step",
)


def op_group(name: str) -> str:
    if name in ("aten::mm", "aten::addmm"):
        return GROUPS[0]
    if "scaled_dot_product" in name or name in ("aten::bmm", "aten::_softmax", "aten::_softmax_backward_data"):
        return GROUPS[1]
    if "layer_norm" in name:
        return GROUPS[2]
    return GROUPS[3]


def profile_groups(step, steps: int = 2) -> dict[str, float]:
    """ms per step of each op group (self time), plus the wall time of the steps."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - t0
    out = dict.fromkeys(GROUPS, 0.0)
    for e in prof.events():
        if e.name in ("forward", "backward", "optimizer"):
            continue
        root = e
        while root.cpu_parent is not None:
            root = root.cpu_parent
        group = GROUPS[4] if root.name == "optimizer" else op_group(e.name)
        out[group] += e.self_cpu_time_total / 1e3 / steps
    out["total (wall)"] = 1e3 * wall / steps
    return out


def run_profile(args, device) -> None:
    for spec in args.cases:
        model, px, batch = parse_case(spec)
        res = {}
        for threads in args.threads:
            n = set_threads(threads)
            models = contenders(args, model, px, device)
            imgs, noise = inputs(models["ours"][0], px, batch, device)
            for impl in ("official", "ours"):
                load = load_avg()
                res[impl, n] = profile_groups(make_step(models[impl][0], "train", imgs, noise, phases=True))
                print(f"# profiled {spec} {impl} at {n} threads (load {load:.1f}-{load_avg():.1f})", flush=True)
        ns = sorted({n for _, n in res}, key=list(dict.fromkeys(n for _, n in res)).index)
        print(f"\n{spec} train step, ms per step (self time of the ops in each group; torch {torch.__version__})")
        head = [f"{impl} {n}t" for impl in ("official", "ours") for n in ns]
        head += [f"{impl} {ns[0]}t->{n}t" for impl in ("official", "ours") for n in ns[1:]]
        head += [f"ours vs official {n}t" for n in ns]
        print("| group | " + " | ".join(head) + " |")
        print("|---|" + "---:|" * len(head))
        for g in (*GROUPS, "total (wall)"):
            cells = [mib(res[impl, n][g]) for impl in ("official", "ours") for n in ns]
            cells += [
                f"{res[impl, ns[0]][g] / max(res[impl, n][g], 1e-9):.2f}x"
                for impl in ("official", "ours")
                for n in ns[1:]
            ]
            cells += [f"{res['official', n][g] / max(res['ours', n][g], 1e-9):.2f}x" for n in ns]
            print(f"| {g} | " + " | ".join(cells) + " |")


# -- resolution sweep -----------------------------------------------------------------------------------------------
def plot_sweep(rows: list[dict], mems: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"official": "tab:red", "ours": "tab:blue"}
    for impl in ("official", "ours"):
        for task, style in (("train", "-o"), ("features", "--s")):
            pts = [(r["px"], r["ms"]) for r in rows if r["contender"] == impl and r["task"] == task]
            if pts:
                ax_t.plot(*zip(*pts), style, color=colors[impl], label=f"{impl}, {task}")
            mpts = [
                (r["px"], m["tensor_peak_mib"])
                for r in rows
                if r["contender"] == impl
                and r["task"] == task
                and "tensor_peak_mib" in (m := mems[r["case"], task].get(impl, {}))
            ]
            if mpts:
                ax_m.plot(*zip(*mpts), style, color=colors[impl], label=f"{impl}, {task}")
    for ax, ylabel in ((ax_t, "ms per step (median of rounds)"), (ax_m, "step tensors, MiB (peak above the model)")):
        ax.set_xlabel("image size (px)")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.set_xticks(sorted({r["px"] for r in rows}))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------------------------------
def run_cases(args, cases: list[str], device) -> tuple[list[dict], dict]:
    rows, mems = [], {}
    for spec in cases:
        model, px, batch = parse_case(spec)
        for threads in args.threads:
            rows += time_case(args, model, px, batch, threads, device)
        if args.memory:
            for task in args.tasks:
                mems[spec, task] = {impl: memory(args, model, px, batch, task, impl) for impl in ("official", "ours")}
                print(f"# memory {spec} {task}: {json.dumps(mems[spec, task])}", flush=True)
        if args.visible_only or args.grad_checkpointing:
            print_extras(args, [r for r in rows if r["case"] == spec], model, px, batch, device)
    return rows, mems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--suite", action="store_true", help=f"the cases {CASES} at torch's default threads and at 1, with memory"
    )
    p.add_argument("--sweep", action="store_true", help="step time and memory against resolution (table + plot)")
    p.add_argument("--profile", action="store_true", help="op-level profile of the train step of both models")
    p.add_argument("--cases", nargs="+", default=None, help="SIZE/PX/BATCH cases (default: tiny/224/8; the suite: all)")
    p.add_argument("--sizes", nargs="+", type=int, default=SWEEP_SIZES, help="--sweep: image sizes")
    p.add_argument("--sweep-case", default="tiny/0/2", help="--sweep: SIZE/PX/BATCH with PX ignored")
    p.add_argument("--plot", default=str(PLOT), help="--sweep: where the plot goes")
    p.add_argument(
        "--threads",
        nargs="+",
        type=int,
        default=None,
        help="thread counts, 0 = torch's default (default: 0; the suite: 0 1; --profile: 1 0)",
    )
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=["train", "features"])
    p.add_argument("--memory", action="store_true", help="also peak memory, each model in its own process")
    p.add_argument("--config", help="take model, overrides, image size and batch from this pretraining YAML")
    p.add_argument("--model", default=None, help="with --img-size / --batch: one case by its registry name")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--set", nargs="*", default=[], help="model overrides KEY=VALUE (e.g. depth=2)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default=None, help="default: cuda if available else cpu")
    p.add_argument("--amp", action="store_true", help="also ours under bf16 autocast")
    p.add_argument("--compile", action="store_true", help="also ours under torch.compile")
    p.add_argument("--visible-only", action="store_true", help="also ours with mask_tokens_in_encoder=False")
    p.add_argument("--grad-checkpointing", action="store_true", help="also ours checkpointed; activation memory")
    p.add_argument("--json", help="also write every row (with the time of each round) here")
    p.add_argument(
        "--flops",
        action="store_true",
        help="only count the training FLOPs (forward + backward) of the "
        "official computation and of ours per case, and their ratio (no timing; seconds)",
    )
    p.add_argument("--memory-child", nargs=2, metavar=("IMPL", "TASK"), help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    args.overrides = parse_key_values(args.set)
    if args.config:
        from crate_mae.training import load_config

        cfg = load_config(args.config, ["data.path=unused"])
        args.model, args.overrides = cfg.model.name, {**dict(cfg.model.overrides), **args.overrides}
        args.img_size, args.batch = cfg.data.img_size, cfg.optim.batch_size
    if args.model:
        args.cases = [case_name(args.model, args.img_size, args.batch)]
    if args.memory_child:
        print(json.dumps(measure_memory(args)))
        return 0
    if args.flops:
        for case in args.cases or ["tiny/224/8"]:
            model, px, batch = parse_case(case)
            torch.manual_seed(0)
            ours = create(model, px, args.overrides)
            f_off, f_ours = train_flops(official_copy(ours), batch, px), train_flops(ours, batch, px)
            print(
                f"{case}: training FLOPs (forward + backward) official {f_off / 1e9:.1f} G, ours "
                f"{f_ours / 1e9:.1f} G; ours / official = {f_ours / f_off:.3f} ({1 - f_ours / f_off:.0%} fewer)"
            )
        return 0
    device = torch.device(args.device) if args.device else default_device()
    args.threads = args.threads or ([1, 0] if args.profile else [0, 1] if args.suite else [0])
    args.memory = args.memory or args.suite or args.sweep
    if args.memory and device.type != "cpu":
        raise ValueError("peak memory here is the CPU's; on a GPU use benchmarks/gpu_speed.py")
    load0, t0 = load_avg(), time.perf_counter()
    print(
        f"# torch {torch.__version__} on {device} (ATen CPU kernels {torch.backends.cpu.get_cpu_capability()}), "
        f"default threads {DEFAULT_THREADS}, {os.cpu_count()} CPUs, "
        f"load average {load0:.2f}; medians of {args.repeats} interleaved rounds after {args.warmup}"
    )
    if args.profile:
        run_profile(args, device)
        return 0
    if args.sweep:
        size, _, batch = args.sweep_case.split("/")
        cases = [f"{size}/{px}/{batch}" for px in args.sizes]
    else:
        cases = args.cases or (CASES if args.suite else ["tiny/224/8"])
    rows, mems = run_cases(args, cases, device)
    print()
    print_speed_table(rows)
    if mems:
        print()
        print_memory_table(mems)
    loads = f"load average {load0:.2f} at the start, {load_avg():.2f} at the end"
    print(f"\n{time.perf_counter() - t0:.0f} s in all; {loads}")
    if args.sweep:
        shown = [a for i, a in enumerate(argv) if a != "--json" and (i == 0 or argv[i - 1] != "--json")]
        title = (
            f"crate_mae_{args.sweep_case.split('/')[0]}, batch {args.sweep_case.split('/')[2]}, "
            f"{rows[0]['threads']} threads, CPU ({torch.backends.cpu.get_cpu_capability()}); {loads}\n"
            f"`python benchmarks/model_speed.py {' '.join(shown)}`"
        )
        plot_sweep(rows, mems, Path(args.plot), title)
        print(f"plot: {args.plot}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                dict(
                    torch=torch.__version__,
                    rows=rows,
                    load_start=load0,
                    memory=[dict(case=c, task=t, **m) for (c, t), m in mems.items()],
                ),
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
