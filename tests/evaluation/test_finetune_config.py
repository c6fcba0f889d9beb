"""The fine-tuning config (crate_mae.evaluation.finetune_config): every bad value named at once, the shipped
config valid."""

from __future__ import annotations

import pytest

from crate_mae.evaluation.finetune_config import load_finetune_config


def test_finetune_config_errors_are_collected(tmp_path):
    with pytest.raises(ValueError) as e:
        load_finetune_config(None, ["optim.layer_decay=1.5", "aug.mixup=-1", "model.global_pool=max", "optim.bogus=1"])
    assert "optim.bogus: unknown key" in str(e.value)
    with pytest.raises(ValueError) as e:
        load_finetune_config(None, ["optim.layer_decay=1.5", "aug.mixup=-1", "model.global_pool=max"])
    for key in ("optim.layer_decay", "aug.mixup", "model.global_pool", "data.path"):
        assert key in str(e.value)
    assert load_finetune_config(None, ["data.path=x", "optim.lr=3e-4"]).optim.lr == 3e-4


def test_shipped_finetune_config_is_valid():
    from importlib import resources
    from pathlib import Path

    cfg = load_finetune_config(Path(str(resources.files("crate_mae") / "configs" / "finetune_cifar.yaml")), [])
    assert (cfg.optim.layer_decay, cfg.aug.mixup, cfg.aug.smoothing) == (0.75, 0.8, 0.1)


def test_finetune_config_names_bad_paths_and_lambda():
    with pytest.raises(ValueError) as e:
        load_finetune_config(None, ["data.path=5", "model.overrides={ista_lambda: -1}"])
    assert "data.path = 5" in str(e.value) and "model.overrides.ista_lambda = -1" in str(e.value)
