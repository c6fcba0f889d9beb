"""benchmarks/suite_cost.py: the FLOP count it bases its GPU estimate on, and a CPU run at micro size."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from tiny import TINY, cli_words

import crate_mae

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "suite_cost.py"
MICRO = {**TINY, "decoder_depth": 1}


def _module():
    # imported by name (not from a spec) so that its stand-in writer's worker processes can unpickle its functions
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    return importlib.import_module("suite_cost")


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
    words = cli_words(MICRO)
    assert (
        _module().main(
            [
                "crate_mae_tiny",
                *words,
                "--device",
                "cpu",
                "--seconds",
                "0.2",
                "--batch-size",
                "4",
                "--peak-tflops",
                "100",
                "--utilisation",
                "0.5",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["suite_images"] == 135_538 and r["img_s"] > 0
    assert r["estimates"] == [
        {
            "utilisation": 0.5,
            "img_s": 50e12 / r["flops_per_image"],
            "suite_minutes": 135_538 / (50e12 / r["flops_per_image"]) / 60,
        }
    ]
    assert "ESTIMATE (not measured) at 50% of 100 TFLOP/s" in text and "measured on CPU" in text


def test_stand_ins_are_found_in_torchvision_layouts(tmp_path, capsys):
    from crate_mae.data import find_transfer_data

    assert _module().main(["--stand-ins", str(tmp_path), "--cifar-images", "60", "--flowers-images", "6"]) == 0
    assert [len(find_transfer_data("cifar10", tmp_path).build(p)) for p in ("fit", "test")] == [50, 10]
    flowers = find_transfer_data("flowers102", tmp_path)
    assert [len(flowers.build(p)) for p in ("fit", "test")] == [4, 2]
    assert flowers.build("test").read(0)[0].shape == (3, 375, 500)
