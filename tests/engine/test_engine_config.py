"""The configuration every task shares (crate_mae.engine.config): YAML files and dotted overrides read into
sections, errors named by file, override or key, the resolved config written back. The pretraining config is the
task that exercises it here; tests/training/test_config.py has pretraining's own keys."""

import pytest

from crate_mae.engine.config import save_config
from crate_mae.training.config import load_config


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["data.demo=true", "data.img_size=32", "optim.epochs=3", "optim.warmup_epochs=1"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_missing_file_and_malformed_override(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.yaml"):
        load_config(tmp_path / "nothere.yaml")
    with pytest.raises(ValueError, match="epochs"):
        load_config(None, ["epochs"])


def test_yaml_syntax_errors_name_the_file_or_the_override(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  batch_size: [8\n")
    with pytest.raises(ValueError, match=rf"{bad}: YAML syntax error: .* at line \d+, column \d+"):
        load_config(bad)
    with pytest.raises(ValueError, match=r"override 'model.overrides=\{patch_size: 4': the value is not valid YAML"):
        load_config(None, ["data.demo=true", "model.overrides={patch_size: 4"])
