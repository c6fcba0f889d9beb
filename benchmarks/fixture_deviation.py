"""How far this machine's outputs are from the official code's, for every stored output of every fixture.

    python benchmarks/fixture_deviation.py

The fixtures in tests/fixtures were built and run by the official code (Ma-Lab-Berkeley/CRATE and
facebookresearch/mae) on another machine; tests/models/test_official_fixtures.py holds our model to them within
rtol 1e-4 / atol 1e-5 in fp32. This prints the largest absolute deviation of each output on this machine (it depends
on the CPU's kernels, ``ATEN_CPU_CAPABILITY`` and the thread count) and the largest over all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

import crate_mae

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def deviations() -> dict[str, dict[str, float]]:
    out = {}
    for name in ("crate_mae_micro", "paper_vit_mae_micro", "vit_mae_micro"):
        meta = json.loads((FIXTURES / f"{name}.json").read_text())
        io = load_file(str(FIXTURES / f"{name}.io.safetensors"))
        # what official weight files do not store, as the test passes it
        keys = (
            ["num_heads"]
            if name == "crate_mae_micro"
            else ["num_heads", "decoder_num_heads", "norm_pix_loss", "mask_tokens_in_encoder"]
        )
        kw = {k: meta[k] for k in keys if k in meta}
        model = crate_mae.load_checkpoint(FIXTURES / f"{name}.official_state_dict.safetensors", **kw)
        with torch.no_grad():
            o = model(io["imgs"], mask_ratio=meta["mask_ratio"], noise=io["noise"])
            ours = {"latent": o.latent, "pred": o.pred, "loss": o.loss.reshape(1), "mask": o.mask}
            if "features" in io:
                ours["features"] = model.forward_features(io["imgs"])
            if "attn_last" in io:
                ours["attn_last"] = model.attention_maps(io["imgs"], layer=-1)
        out[name] = {k: (v.double() - io[k].double()).abs().max().item() for k, v in ours.items()}
    return out


def main() -> None:
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )
    worst = 0.0
    for name, devs in deviations().items():
        print(f"{name}: " + ", ".join(f"{k} {v:.1e}" for k, v in devs.items()))
        worst = max(worst, *devs.values())
    print(f"largest absolute deviation from the official outputs: {worst:.1e} (tests allow rtol 1e-4, atol 1e-5)")


if __name__ == "__main__":
    main()
