"""benchmarks/crate_supervised_cifar.py (the README's from-scratch supervised CRATE run) end to end on a generated
folder: the documented `crate-mae finetune` command trains, `evaluate` rebuilds the initial network, writes the
layer-wise init-vs-trained figure and the report."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "crate_supervised_cifar.py"


def _script():
    spec = importlib.util.spec_from_file_location("crate_supervised_cifar", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_then_evaluate(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k, name in enumerate(("cat", "dog", "fox")):
            d = tmp_path / "data" / split / name
            d.mkdir(parents=True)
            for i in range(4):
                img = rng.integers(0, 128, (32, 32, 3))
                img[..., k] += 127
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.png")
    script, out = _script(), tmp_path / "run"
    common = ["--data", str(tmp_path / "data"), "--out", str(out), "--epochs", "2", "--batch-size", "4"]
    assert script.main(["train", *common]) == 0
    assert script.main(["evaluate", *common]) == 0
    curves = json.loads((out / "figures" / "layerwise_init_vs_trained.json").read_text())
    assert set(curves) == {"init", "trained"} and len(curves["init"]["rc_mssa_in"]) == 4
    assert curves["init"] != curves["trained"]
    init = json.loads((out / "init" / "config.json").read_text())
    assert init["random_init"] and init["data"]["mean"] == [0.4914, 0.4822, 0.4465] and init["embed_dim"] == 128
    assert "<h2>Predictions</h2>" in (out / "report" / "index.html").read_text()
    assert (out / "figures" / "layerwise_init_vs_trained.png").read_bytes()[:4] == b"\x89PNG"
