"""The checks only a GPU can confirm, in a few minutes on one GPU; prints PASS / FAIL per item.

    python benchmarks/gpu_check.py                    # on a CUDA machine: crate_mae_tiny at 224 px, bf16 autocast
    python benchmarks/gpu_check.py --micro            # CPU smoke run (tiny model, 32 px): what CI runs
    TORCH_LOGS=graph_breaks,recompiles python benchmarks/gpu_check.py   # the reasons behind a compile failure

Items (issue "Ready for the first GPU run"):

- visualize: ``crate-mae visualize reconstruct|attention|pca`` and ``analyze`` on the device;
- analysis precision: layer-wise rates on the device equal those on the CPU (TF32 off during analysis);
- determinism: with ``run.deterministic=true`` two runs, and a run stopped halfway and resumed, end with
  bit-identical weights;
- graph breaks: ``torch._dynamo.explain`` of a training forward of CRATE-MAE and ViT-MAE finds none;
- recompiles: a compiled training step compiles once, then runs new batches without recompiling;
- bf16 gap: the masked loss under bf16 autocast is within 2% of fp32 on the same batch and masks;
- host syncs: at most one ``cuda*Synchronize`` per optimizer step inside the engine's step ranges of a profiler
  trace (SKIP on a CPU, which has no device to wait for).

Exit status 0 when no item fails (SKIP is not a failure), 1 otherwise. No item raises: a crash is a FAIL with its
one-line reason.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS: set before the first handle

import torch  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

import crate_mae  # noqa: E402
from crate_mae.training import load_config, pretrain  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class Check:
    def __init__(self, device: torch.device, micro: bool, workdir: Path):
        self.device, self.micro, self.workdir = device, micro, workdir
        if micro:
            self.size, self.kw = 32, dict(patch_size=8, embed_dim=32, depth=2, num_heads=4, decoder_depth=2)
        else:
            self.size, self.kw = 224, dict(patch_size=16, decoder_depth=4)
        self.batch = 4 if micro else 32

    # -- helpers ----------------------------------------------------------------------------------------------------
    def model(self, name: str = "crate_mae_tiny") -> torch.nn.Module:
        torch.manual_seed(0)
        kw = dict(self.kw)
        if name.startswith("vit_mae"):
            kw.update(decoder_embed_dim=kw.get("embed_dim", 192), decoder_num_heads=4)
            if not self.micro:
                kw.update(embed_dim=192, num_heads=3, depth=4, decoder_embed_dim=128, decoder_depth=2)
        return crate_mae.create_model(name, img_size=self.size, **kw).to(self.device)

    def batch_of(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and masking noise (every model here has the same patch grid)."""
        g = torch.Generator().manual_seed(1)
        n = n or self.batch
        imgs = torch.randn(n, 3, self.size, self.size, generator=g)
        noise = torch.rand(n, (self.size // self.kw["patch_size"]) ** 2, generator=g)
        return imgs.to(self.device), noise.to(self.device)

    def pretrain_run(self, out: str, *overrides: str) -> dict:
        overrides_yaml = "{" + ", ".join(f"{k}: {v}" for k, v in self.kw.items()) + "}"
        cfg = load_config(
            None,
            [
                "model.name=crate_mae_tiny",
                f"model.overrides={overrides_yaml}",
                "data.demo=true",
                f"data.img_size={self.size}",
                "data.num_workers=0",
                f"optim.batch_size={self.batch}",
                "optim.epochs=1",
                "optim.warmup_epochs=0",
                "optim.blr=1e-3",
                "run.log_every=1000",
                "run.vis_every_epochs=0",
                "run.progress=false",
                "run.ckpt_every_steps=0",
                f"run.output_dir={self.workdir / out}",
                *overrides,
            ],
        )
        g = torch.Generator().manual_seed(2)
        data = TensorDataset(torch.rand(self.batch * 6, 3, self.size, self.size, generator=g))
        with contextlib.redirect_stdout(io.StringIO()):  # the run's own log lines
            return pretrain(cfg, dataset=data, device=self.device)

    # -- items ------------------------------------------------------------------------------------------------------
    def visualize(self) -> str:
        from crate_mae.cli import main

        ckpt = self.workdir / "vis_model"
        crate_mae.save_pretrained(self.model().cpu(), ckpt)
        outs = []
        for args in (["visualize", "reconstruct"], ["visualize", "attention"], ["visualize", "pca"], ["analyze"]):
            extra = ["--num-images", "2"] if args[0] == "analyze" else []
            with contextlib.redirect_stdout(io.StringIO()):  # the commands print their tables and paths
                rc = main(
                    [
                        *args,
                        "--ckpt",
                        str(ckpt),
                        "--device",
                        str(self.device),
                        "--out",
                        str(self.workdir / "vis"),
                        *extra,
                    ]
                )
            if rc != 0:
                raise RuntimeError(f"`crate-mae {' '.join(args)} --device {self.device}` exited {rc}")
            outs.append(args[-1])
        return f"{', '.join(outs)} ran on {self.device}"

    def analysis_precision(self) -> str:
        from crate_mae.analysis import measure_layers

        model = self.model()
        imgs, _ = self.batch_of(4)
        here = measure_layers(model, imgs)
        cpu = measure_layers(model.cpu(), imgs.cpu())
        worst = 0.0
        for key, metrics in cpu.values.items():
            for m, ref in metrics.items():
                got = here.values[key][m]
                worst = max(worst, float(abs(got - ref).max() / max(abs(ref).max(), 1e-12)))
        if worst > 1e-3:
            raise AssertionError(f"layer-wise values differ from the CPU by up to {worst:.2e} (relative)")
        return f"largest relative difference to the CPU {worst:.1e}"

    def determinism(self) -> str:
        a = self.pretrain_run("det_a", "run.deterministic=true")
        b = self.pretrain_run("det_b", "run.deterministic=true")
        self.pretrain_run("det_c", "run.deterministic=true", "run.max_steps=3")
        c = self.pretrain_run("det_c", "run.deterministic=true", "run.resume=auto")
        shas = {a["weights_sha256"], b["weights_sha256"], c["weights_sha256"]}
        if len(shas) != 1:
            raise AssertionError(
                f"weights differ: run 1 {a['weights_sha256'][:12]}, run 2 {b['weights_sha256'][:12]}"
                f", stopped at step 3 and resumed {c['weights_sha256'][:12]}"
            )
        return f"2 runs and a resumed run: identical weights after {a['steps']} steps (sha {a['weights_sha256'][:12]})"

    def graph_breaks(self) -> str:
        import torch._dynamo as dynamo

        found = {}
        for name in ("crate_mae_tiny", "vit_mae_base"):
            model = self.model(name).train()
            imgs, noise = self.batch_of(2)
            dynamo.reset()
            found[name] = dynamo.explain(model)(imgs, mask_ratio=0.75, noise=noise)
        breaks = {n: e.graph_break_count for n, e in found.items()}
        if any(breaks.values()):
            reasons = "; ".join(
                f"{n}: {str(e.break_reasons[0].reason).splitlines()[0]}" for n, e in found.items() if e.break_reasons
            )
            raise AssertionError(f"graph breaks {breaks} ({reasons})")
        return f"no graph breaks in a training forward ({', '.join(breaks)})"

    def recompiles(self, backend: str) -> str:
        import torch._dynamo as dynamo
        from torch._dynamo.utils import counters

        dynamo.reset()
        counters.clear()
        model = self.model()
        net = torch.compile(model, backend=backend)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(seed: int) -> None:
            torch.manual_seed(seed)
            imgs, noise = torch.randn_like(self.batch_of()[0]), torch.rand_like(self.batch_of()[1])
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                loss = net(imgs, mask_ratio=0.75, noise=noise).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        t = time.perf_counter()
        step(0)
        first = counters["frames"]["total"], time.perf_counter() - t
        for seed in range(1, 5):
            step(seed)
        after = counters["frames"]["total"]
        if after != first[0]:
            raise AssertionError(f"{after - first[0]} frame(s) compiled again after the first step (recompiles)")
        return f"compiled once ({backend}, {first[1]:.0f} s), 4 more steps without recompiling"

    def bf16_gap(self) -> str:
        gaps = {}
        for name in ("crate_mae_tiny", "vit_mae_base"):
            model = self.model(name).eval()
            imgs, noise = self.batch_of()
            with torch.no_grad():
                ref = model(imgs, mask_ratio=0.75, noise=noise).loss.float().item()
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    low = model(imgs, mask_ratio=0.75, noise=noise).loss.float().item()
            gaps[name] = abs(low - ref) / abs(ref)
        if max(gaps.values()) > 0.02:
            raise AssertionError(f"bf16 loss differs from fp32 by {gaps}")
        return "relative loss gap " + ", ".join(f"{n} {g:.1e}" for n, g in gaps.items())

    def host_syncs(self) -> str | tuple[str, str]:
        from torch.profiler import ProfilerActivity, profile

        cuda = self.device.type == "cuda"
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            s = self.pretrain_run("syncs", "run.max_steps=4")
        events = prof.events()
        steps = [e.time_range for e in events if e.name == "crate_mae.optimizer_step"]
        ranges = [e.time_range for e in events if e.name in ("crate_mae.optimizer_step", "crate_mae.micro_batch")]
        if not steps or s["steps"] != len(steps):
            raise AssertionError(f"profiler saw {len(steps)} optimizer steps, the run made {s['steps']}")
        if not cuda:
            return "SKIP", f"profiled {len(steps)} engine steps; a CPU run has no host-device synchronisation to count"
        syncs = [
            e
            for e in events
            if "Synchronize" in e.name  # cudaStreamSynchronize, cudaDeviceSynchronize, ...
            and any(r.start <= e.time_range.start and e.time_range.end <= r.end for r in ranges)
        ]
        per_step = len(syncs) / len(steps)
        if per_step > 1:
            names = sorted({e.name for e in syncs})
            raise AssertionError(
                f"{per_step:.1f} CUDA synchronisations per optimizer step (budget 1: the loss "
                f"check); {', '.join(names)}"
            )
        return f"{per_step:.1f} CUDA synchronisations per optimizer step over {len(steps)} steps"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--micro", action="store_true", help="tiny model at 32 px (the CPU smoke run)")
    p.add_argument("--backend", default=None, help="torch.compile backend (default: inductor on CUDA, eager on CPU)")
    p.add_argument("--only", nargs="*", help="run these items only")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backend = args.backend or ("inductor" if device.type == "cuda" else "eager")
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        check = Check(device, args.micro, Path(tmp))
        items: dict[str, Callable[[], str]] = {
            "visualize": check.visualize,
            "analysis_precision": check.analysis_precision,
            "determinism": check.determinism,
            "graph_breaks": check.graph_breaks,
            "recompiles": lambda: check.recompiles(backend),
            "bf16_gap": check.bf16_gap,
            "host_syncs": check.host_syncs,
        }
        for name, fn in items.items():
            if args.only and name not in args.only:
                continue
            t = time.perf_counter()
            try:
                detail = fn()
                status, detail = detail if isinstance(detail, tuple) else ("PASS", detail)
            except Exception as e:  # noqa: BLE001 -- every failure is reported, none stops the other checks
                status, detail = "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            results.append({"item": name, "status": status, "detail": detail, "seconds": time.perf_counter() - t})
            print(f"{status}  {name:<19} {detail}  ({results[-1]['seconds']:.0f} s)", flush=True)
    failed = [r["item"] for r in results if r["status"] == "FAIL"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    passed = sum(r["status"] == "PASS" for r in results)
    print(
        f"{passed}/{len(results)} passed on {device} ({name}), torch {torch.__version__}, "
        f"{time.perf_counter() - t0:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"device": str(device), "name": name, "torch": torch.__version__, "results": results}, indent=2)
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
