"""Training and inference speed of CRATE-MAE against the official computation, same weights, one process.

    python benchmarks/model_speed.py                        # crate_mae_tiny, 224 px, batch 8, fp32, CPU
    python benchmarks/model_speed.py --threads 1            # on a CPU that other jobs share (see below)
    python benchmarks/model_speed.py --compile --visible-only --amp --grad-checkpointing
    python benchmarks/model_speed.py --config configs/pretrain_cifar.yaml --amp --compile   # a config's model + batch
    python benchmarks/model_speed.py --model crate_mae_base --batch 64 --amp --compile     # on a GPU
    python benchmarks/model_speed.py --flops                # training FLOPs of official vs ours only (seconds)

The baseline is ``crate_mae.models.official.OfficialCrateMAE``, a transcription of the official Ma-Lab-Berkeley/CRATE
code (explicit N x N attention, three-product ISTA, gather/cat masking, its module tree) that reproduces the official
fixtures bit for bit (tests/models/test_official_fixtures.py), loaded with our model's weights. Contenders:

- ``official``: that baseline, fp32 eager;
- ``ours``: ``create_model(...)``, fp32 eager (fused attention, one-product ISTA);
- ``ours bf16`` (``--amp``): ours under bf16 autocast;
- ``ours compiled`` (``--compile``): ``torch.compile`` of ours (and ``ours compiled bf16`` with ``--amp`` too);
- ``ours checkpointed`` (``--grad-checkpointing``): ours recomputing every block in backward;
- ``visible-only`` (``--visible-only``): ours with ``mask_tokens_in_encoder=False``, not the paper's model.

A train step is forward + backward + AdamW step (the official baseline with facebookresearch/mae's optimizer, the
default ``torch.optim.AdamW`` on its weight-decay groups; ours with ``training.optim.build_optimizer``, our training
path, which is the same AdamW with the fused kernel); an inference step is the masked forward without autograd.
``--flops`` counts the training FLOPs (forward + backward) of the official computation and of ours and prints their
ratio, without timing anything. ``--visible-only`` also counts the FLOPs of a training forward + backward
(``torch.utils.flop_counter``) of the faithful and the visible-only model, whose ratio bounds the speed-up the
visible-only frame can give. Steps run interleaved (each round visits every contender, in rotating order) so machine
noise hits all alike; medians of the rounds are reported with the spread (lowest-highest round) of every ratio; a
ratio is the baseline's median time over the contender's. On a CPU shared with other busy processes, give
``--threads`` the number of idle cores: with more threads than free cores each parallel op waits for a descheduled
thread, and the timings measure the scheduler. ``--grad-checkpointing`` adds the bytes of activations saved for
backward with and without per-block checkpointing (exact on any device). Peak GPU memory and FLOP utilisation:
``benchmarks/gpu_speed.py``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from timm.optim import param_groups_weight_decay
from torch.utils.flop_counter import FlopCounterMode

import crate_mae
from crate_mae.engine.optim import build_optimizer
from crate_mae.models.official import OfficialCrateMAE, to_official
from crate_mae.utils import default_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_optimizer(model, official: bool) -> torch.optim.Optimizer:
    if official:  # facebookresearch/mae main_pretrain.py: timm's weight-decay groups, default AdamW
        return torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1e-6, betas=(0.9, 0.95))
    return build_optimizer(model, 1e-6, 0.05, (0.9, 0.95))


def make_step(model, imgs, noise, train: bool, amp: bool):
    """One train or inference step of ``model`` (ours or the official transcription) on fixed inputs."""
    opt = make_optimizer(model, isinstance(model, OfficialCrateMAE)) if train else None
    autocast = torch.autocast(imgs.device.type, dtype=torch.bfloat16, enabled=amp)

    def loss_of():
        out = model(imgs, 0.75, noise)
        return out[0] if isinstance(out, tuple) else out.loss

    def step():
        if train:
            with autocast:
                loss = loss_of()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), autocast:
                loss_of()
    return step


def create(args, **kw) -> torch.nn.Module:
    return crate_mae.create_model(args.model, img_size=args.img_size, **{**args.overrides, **kw})


def build(args, device):
    """``{contender: (module, bf16 autocast)}``; every CRATE-MAE contender starts from the same weights."""
    torch.manual_seed(0)
    ours = create(args).to(device)
    c = ours.config
    official = OfficialCrateMAE(c["img_size"], c["patch_size"], c["in_chans"], c["embed_dim"], c["depth"],
                                c["num_heads"], c["decoder_depth"], c["decoder_num_heads"], c["ista_step_size"],
                                c["ista_lambda"], c["norm_pix_loss"]).to(device)
    official.load_state_dict(to_official(ours))
    models = {"official": (official, False), "ours": (ours, False)}
    if args.amp:
        models["ours bf16"] = (ours, True)
    if args.compile:
        compiled = torch.compile(copy.deepcopy(ours))
        models["ours compiled"] = (compiled, False)
        if args.amp:
            models["ours compiled bf16"] = (compiled, True)
    if args.grad_checkpointing:
        checkpointed = copy.deepcopy(ours)
        checkpointed.set_grad_checkpointing(True)
        models["ours checkpointed"] = (checkpointed, False)
    if args.visible_only:
        visible = create(args, mask_tokens_in_encoder=False).to(device)
        visible.load_state_dict(ours.state_dict())
        models["visible-only"] = (visible, False)
    return ours, models


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


def visible_only_bounds(args) -> dict:
    """Training FLOPs of the faithful and visible-only models, and the part of each that is not the encoder (from
    the difference between the full depth and depth 1), which bounds any encoder-side speed-up."""
    out = {}
    for frame, kw in (("ours", {}), ("visible-only", dict(mask_tokens_in_encoder=False))):
        full = create(args, **kw)
        depth = full.config["depth"]
        one = create(args, depth=1, **kw)
        f_full, f_one = train_flops(full, args.batch, args.img_size), train_flops(one, args.batch, args.img_size)
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


def bench(args) -> dict:
    device = torch.device(args.device) if args.device else default_device()
    ours, models = build(args, device)
    imgs = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    noise = torch.rand(args.batch, ours.encoder.patch_embed.num_patches, device=device)
    results: dict = {}
    for mode in ("train", "infer"):
        steps = {}
        for name, (model, amp) in models.items():
            model.train(mode == "train")
            steps[name] = make_step(model, imgs, noise, mode == "train", amp)
        times = {name: [] for name in steps}
        names = list(steps)
        for i in range(args.warmup + args.repeats):
            for name in names[i % len(names):] + names[:i % len(names)]:
                sync(device)
                t0 = time.perf_counter()
                steps[name]()
                sync(device)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        # per-round ratios: the baseline's time over the contender's in the same round
        rounds = {k: sorted(b / c for b, c in zip(times["official"], v)) for k, v in times.items()}
        results[mode] = {k: dict(img_s=args.batch / t, ratio=med["official"] / t, lo=rounds[k][0], hi=rounds[k][-1])
                         for k, t in med.items()}
        if "visible-only" in times:
            per = sorted(a / b for a, b in zip(times["ours"], times["visible-only"]))
            results[mode]["visible-only"]["vs_ours"] = (med["ours"] / med["visible-only"], per[0], per[-1])
    if args.visible_only:
        results["flops"] = visible_only_bounds(args)
        results["flops"]["official"] = dict(total=train_flops(models["official"][0], args.batch, args.img_size))
    if args.grad_checkpointing:
        ours.train()
        plain = saved_activation_bytes(ours, imgs, noise)
        ours.set_grad_checkpointing(True)
        ckpt = saved_activation_bytes(ours, imgs, noise)
        ours.set_grad_checkpointing(False)
        results["activations"] = dict(plain_mib=plain / 2**20, checkpointed_mib=ckpt / 2**20, ratio=ckpt / plain)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="take model, overrides, image size and batch from this pretraining YAML")
    p.add_argument("--model", default="crate_mae_tiny")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default=None, help="default: cuda if available else cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, one per core)")
    p.add_argument("--amp", action="store_true", help="also ours under bf16 autocast")
    p.add_argument("--compile", action="store_true", help="also ours under torch.compile")
    p.add_argument("--visible-only", action="store_true", help="also ours with mask_tokens_in_encoder=False")
    p.add_argument("--grad-checkpointing", action="store_true", help="activation memory with / without")
    p.add_argument("--flops", action="store_true", help="only count training FLOPs of official vs ours (no timing)")
    args = p.parse_args()
    args.overrides = {}
    if args.config:
        from crate_mae.training import load_config

        cfg = load_config(args.config, ["data.path=unused"])
        args.model, args.overrides = cfg.model.name, dict(cfg.model.overrides)
        args.img_size, args.batch = cfg.data.img_size, cfg.optim.batch_size
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flops:
        torch.manual_seed(0)
        ours, models = build(args, torch.device("cpu"))
        f_off, f_ours = (train_flops(models[k][0], args.batch, args.img_size) for k in ("official", "ours"))
        print(f"{args.config or args.model} {args.img_size}px batch {args.batch}: training FLOPs (forward + "
              f"backward) official {f_off / 1e9:.1f} G, ours {f_ours / 1e9:.1f} G; ours / official = "
              f"{f_ours / f_off:.3f} ({1 - f_ours / f_off:.0%} fewer)")
        return
    res = bench(args)
    dev = args.device or default_device().type
    print(f"{args.config or args.model} {args.img_size}px batch {args.batch} on {dev} (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads), medians of {args.repeats} interleaved rounds")
    print("| contender | train img/s | train vs official (rounds) | inference img/s | inference vs official (rounds) |")
    print("|---|---:|---:|---:|---:|")
    for name in res["train"]:
        t, i = res["train"][name], res["infer"][name]
        print(f"| {name} | {t['img_s']:.2f} | {t['ratio']:.2f}x ({t['lo']:.2f}-{t['hi']:.2f}) | {i['img_s']:.2f} | "
              f"{i['ratio']:.2f}x ({i['lo']:.2f}-{i['hi']:.2f}) |")
    if "visible-only" in res["train"]:
        (t, tlo, thi), (i, ilo, ihi) = res["train"]["visible-only"]["vs_ours"], res["infer"]["visible-only"]["vs_ours"]
        f = res["flops"]
        o, v = f["ours"], f["visible-only"]
        print(f"visible-only vs ours (faithful): train {t:.2f}x ({tlo:.2f}-{thi:.2f}), inference {i:.2f}x "
              f"({ilo:.2f}-{ihi:.2f})")
        print(f"training FLOPs (forward + backward): official {f['official']['total'] / 1e9:.1f} G, ours "
              f"{o['total'] / 1e9:.1f} G (encoder {o['encoder'] / 1e9:.1f} G), visible-only {v['total'] / 1e9:.1f} G "
              f"(encoder {v['encoder'] / 1e9:.1f} G)")
        print(f"visible-only vs ours at equal FLOP rate: {o['total'] / v['total']:.2f}x; even with an encoder that "
              f"cost nothing: {o['total'] / o['rest']:.2f}x")
    if "activations" in res:
        a = res["activations"]
        print(f"activations saved for backward: {a['plain_mib']:.1f} MiB plain, {a['checkpointed_mib']:.1f} MiB with "
              f"per-block checkpointing ({a['ratio']:.2f}x)")


if __name__ == "__main__":
    main()
