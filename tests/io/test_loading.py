"""Loading (crate_mae.io.loading): load_checkpoint is the one path, the other entry points are thin aliases of it
with the modes they have always returned; classifiers from masked autoencoders; the deprecated names still work."""

import subprocess
import sys
import warnings

import pytest
import torch
from tiny import TINY_ENCODER, tiny_kwargs

import crate_mae
import crate_mae.io.loading as loading
from crate_mae.io import load_model, load_weights_into


def test_load_encoder_from_crate_mae_and_vit(tmp_path, tiny_model_kwargs):
    model = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs)
    crate_mae.save_pretrained(model, tmp_path / "m")
    clf = crate_mae.load_encoder(tmp_path / "m", num_classes=10, global_pool="avg")
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(clf.forward_features(imgs), model.forward_features(imgs))
    assert clf(imgs).shape == (2, 10)
    crate_mae.save_pretrained(clf, tmp_path / "clf")
    again = crate_mae.load_checkpoint(tmp_path / "clf")
    with torch.no_grad():
        assert torch.equal(again(imgs), clf(imgs))
    # create_model(pretrained=...) puts a CRATE-MAE encoder under a fresh head
    fresh = crate_mae.create_model("crate_tiny", **TINY_ENCODER, num_classes=4, pretrained=str(tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(fresh.forward_features(imgs), model.forward_features(imgs))
    vit = crate_mae.create_model("vit_mae_base", **tiny_kwargs("vit_mae_base"))
    vclf = crate_mae.load_encoder(vit, num_classes=3)
    with torch.no_grad():
        assert torch.allclose(vclf.forward_features(imgs), vit.forward_features(imgs), atol=1e-6)
    assert vclf(imgs).shape == (2, 3)


def test_vit_classifier_roundtrip(tmp_path):
    """A fine-tuned ViT-MAE encoder (timm VisionTransformer) is saved and read back in our format."""
    vit = crate_mae.create_model("vit_mae_base", **tiny_kwargs("vit_mae_base"))
    clf = crate_mae.load_encoder(vit, num_classes=3, global_pool="avg")
    crate_mae.save_pretrained(clf, tmp_path / "vit")
    again = crate_mae.load_checkpoint(tmp_path / "vit")
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(imgs), clf(imgs))
    assert again.global_pool == "avg" and crate_mae.load_encoder(again, num_classes=5)(imgs).shape == (2, 5)


def test_every_entry_point_goes_through_load_checkpoint(tmp_path, monkeypatch, tiny_model_kwargs):
    mae = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs)
    crate_mae.save_pretrained(mae, tmp_path / "m")
    calls = []
    one_path = loading.load_checkpoint

    def spy(source, **kw):
        calls.append(source)
        return one_path(source, **kw)

    monkeypatch.setattr(loading, "load_checkpoint", spy)
    entry_points = {
        "from_pretrained": lambda: crate_mae.from_pretrained(tmp_path / "m"),
        "create_model(pretrained=)": lambda: crate_mae.create_model(
            "crate_tiny", **TINY_ENCODER, num_classes=3, pretrained=tmp_path / "m"
        ),
        "load_weights_into": lambda: load_weights_into(
            crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs), tmp_path / "m"
        ),
        "load_encoder": lambda: crate_mae.load_encoder(tmp_path / "m", num_classes=3),
        "load_model": lambda: load_model(tmp_path / "m"),
    }
    for name, call in entry_points.items():
        calls.clear()
        call()
        assert calls, f"{name} did not go through load_checkpoint"


def test_the_modes_each_entry_point_returns(tmp_path, tiny_model_kwargs):
    """load_checkpoint sets eval mode (once, on its way out); the aliases keep the modes they always returned."""
    mae = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs)
    crate_mae.save_pretrained(mae, tmp_path / "m")
    crate_mae.save_pretrained(crate_mae.create_model("crate_tiny", **TINY_ENCODER, num_classes=3), tmp_path / "clf")
    assert mae.training
    assert not crate_mae.load_checkpoint(tmp_path / "m").training
    assert crate_mae.from_pretrained(tmp_path / "m").training  # as built: call .eval() for inference
    assert crate_mae.create_model("crate_tiny", **TINY_ENCODER, num_classes=3, pretrained=tmp_path / "m").training
    assert crate_mae.load_encoder(tmp_path / "m", num_classes=3).training  # a new module
    assert not crate_mae.load_encoder(tmp_path / "clf", num_classes=3).training  # as load_checkpoint gave it
    target = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs).eval()
    assert not load_weights_into(target, tmp_path / "m").training  # its mode untouched
    assert not load_model(tmp_path / "m")[0].training
    assert not load_model("crate_mae_tiny", **tiny_model_kwargs)[0].training


def test_from_pretrained_reads_our_format_only(tmp_path, tiny_model_kwargs):
    crate_mae.save_pretrained(crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs), tmp_path / "run" / "model")
    with pytest.raises(FileNotFoundError, match="no config.json in"):
        crate_mae.from_pretrained(tmp_path / "run")  # a run directory is load_checkpoint's, not from_pretrained's
    assert crate_mae.load_checkpoint(tmp_path / "run").model_name == "crate_mae_tiny"
    with pytest.raises(ValueError, match="apply to 'hf-hub:ORG/NAME' sources"):
        crate_mae.load_checkpoint(tmp_path / "run", download=True)


def test_deprecated_names_warn_and_give_the_new_objects():
    import crate_mae.checkpoint
    import crate_mae.hub

    with pytest.deprecated_call(match="use crate_mae.io.load_model"):
        assert crate_mae.checkpoint.load_model is crate_mae.io.load_model
    with pytest.deprecated_call(match="use crate_mae.io.load_exact"):
        assert crate_mae.checkpoint._load_exact is crate_mae.io.load_exact
    with pytest.deprecated_call(match="architecture_factory"):
        assert crate_mae.checkpoint.ARCHITECTURES["crate_mae"] is crate_mae.models.CrateMAE
    with pytest.deprecated_call(match="use crate_mae.io.push_to_hub"):
        assert crate_mae.hub.push_to_hub is crate_mae.io.push_to_hub
    with pytest.deprecated_call(match="use crate_mae.models.build_model"):
        from crate_mae.models import create_model
    assert create_model is crate_mae.models.build_model
    with pytest.deprecated_call(match="use build_model"):
        assert crate_mae.models.registry.create_model is crate_mae.models.build_model
    with pytest.raises(AttributeError):
        crate_mae.checkpoint.no_such_name  # noqa: B018
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert crate_mae.io.hub.push_to_hub is crate_mae.io.push_to_hub  # the new places do not warn


def test_no_module_of_the_package_uses_a_deprecated_name():
    """Import every module with crate-mae's own deprecation warnings as errors (in a fresh interpreter, so that
    nothing is imported already)."""
    code = """
import pkgutil, warnings
warnings.filterwarnings("error", message=r"crate_mae\\.", category=DeprecationWarning)
import crate_mae
skip = {"crate_mae.checkpoint", "crate_mae.hub"}  # the deprecated shims themselves
for m in pkgutil.walk_packages(crate_mae.__path__, "crate_mae."):
    if m.name not in skip and not m.name.endswith("__main__"):
        __import__(m.name)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
