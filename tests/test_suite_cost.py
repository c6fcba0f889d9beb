"""benchmarks/suite_cost.py: the FLOP count it bases its GPU estimate on, and a CPU run at micro size."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import crate_mae

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "suite_cost.py"
MICRO = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, decoder_depth=1)


def _module():
    spec = importlib.util.spec_from_file_location("suite_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_count_every_product_of_the_encoder():
    m = crate_mae.create_model("crate_mae_tiny", **MICRO)
    L, D, N, depth = 16, 32, 17, 2
    patch = 2 * L * (8 * 8 * 3) * D
    # per block: U^T (qkv), U_out, the ISTA product with its D x D step matrix, attention's two products, and
    # the step matrix itself (I - eta D^T D: 2 D^3 per forward, shared by the batch)
    block = 3 * 2 * N * D * D + 2 * 2 * N * N * D + 2 * D**3
    assert _module().flops_per_image(m, 32, batch=1) == patch + depth * block


def test_cli_prints_the_measurement_and_the_labelled_estimate(tmp_path, capsys):
    out = tmp_path / "cost.json"
    words = [f"{k}={v}" for k, v in MICRO.items()]
    assert _module().main(["crate_mae_tiny", *words, "--device", "cpu", "--seconds", "0.2", "--batch-size", "4",
                           "--peak-tflops", "100", "--utilisation", "0.5", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["suite_images"] == 135_538 and r["img_s"] > 0
    assert r["estimates"] == [{"utilisation": 0.5, "img_s": 50e12 / r["flops_per_image"],
                               "suite_minutes": 135_538 / (50e12 / r["flops_per_image"]) / 60}]
    assert "ESTIMATE (not measured) at 50% of 100 TFLOP/s" in text and "measured on CPU" in text
