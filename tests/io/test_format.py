"""Our format (crate_mae.io.format): save and load back, atomic writes, tensors only (never pickled code), a bad
config.json named in one line, strict loading that names what does not fit."""

import json
import pickle

import pytest
import torch

import crate_mae
from crate_mae.io import CheckpointError, load_exact


def _same_outputs(a, b):
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        return torch.equal(a(imgs, noise=noise).pred, b(imgs, noise=noise).pred)


def test_save_and_load_our_format(tmp_path, tiny_model_kwargs):
    model = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs, ista_lambda=0.3)
    crate_mae.save_pretrained(model, tmp_path / "m", extra={"data": {"mean": [0.5] * 3}})
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["ista_lambda"] == 0.3 and cfg["crate_mae_version"] == crate_mae.__version__
    assert cfg["architecture"] == "crate_mae" and cfg["model"] == "crate_mae_tiny"
    loaded = crate_mae.load_checkpoint(tmp_path / "m")
    assert loaded.encoder.blocks[0].ista.lambd == 0.3 and loaded.data_config["mean"] == [0.5] * 3
    assert _same_outputs(model, loaded)
    assert _same_outputs(model, crate_mae.load_checkpoint(tmp_path / "m" / "model.safetensors"))
    assert not list((tmp_path / "m").glob("*.tmp"))  # atomic writes leave no temp files


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(CheckpointError, match="(holds|other) Python objects.*refusing to unpickle") as e:
        crate_mae.load_checkpoint(path)
    assert "weights_only=False" not in str(e.value)  # torch's advice is wrong for a hostile file
    assert "pickled code ran" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "text,why",
    [
        ('{"architecture": "crate_mae", "embed_dim": ', "not valid JSON \\(line 1, column"),
        ("[1, 2]", "must hold a JSON object of model settings, not a list"),
        ('{"architecture": "crate_mae", "embed_dim": "32"}', "embed_dim = '32' must be a int"),
        ('{"architecture": "crate_mae", "depth": null}', "depth = None must be a int"),
        ('{"architecture": "crate_mae", "norm_pix_loss": 1}', "norm_pix_loss = 1 must be a bool"),
        ('{"architecture": "crate_mae", "ista_lambda": -1.0}', "ista_lambda must be >= 0"),
        ('{"architecture": "nope"}', "unknown architecture 'nope'"),
    ],
)
def test_bad_config_json_is_one_line_naming_the_file(tmp_path, text, why):
    model = crate_mae.create_model(
        "crate_mae_tiny", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4, decoder_depth=1
    )
    crate_mae.save_pretrained(model, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=why) as e:
        crate_mae.load_checkpoint(tmp_path / "m")
    assert str(tmp_path / "m" / "config.json") in str(e.value) and "\n" not in str(e.value)


def test_load_exact_names_what_does_not_fit_and_may_allow_missing_prefixes(tiny_model_kwargs):
    model = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs)
    state = dict(model.state_dict())
    decoder = {k: state.pop(k) for k in list(state) if k.startswith("decoder.")}
    with pytest.raises(CheckpointError, match=r"here does not fit CrateMAE: missing keys \(\d+\): decoder\."):
        load_exact(model, state, "here")
    load_exact(model, state, "here", allow_missing_prefixes=("decoder.",))  # the decoder keeps its own weights
    assert all(torch.equal(model.state_dict()[k], v) for k, v in decoder.items())
