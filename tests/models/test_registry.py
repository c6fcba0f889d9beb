"""Every registered model builds, forwards and backwards at a tiny size; presets have the official sizes."""

import pytest
import torch
from tiny import TINY_ENCODER, tiny_kwargs

import crate_mae
from crate_mae.models import CrateMAE, ViTMAE, model_defaults
from crate_mae.models.registry import model_factory


@pytest.mark.parametrize("name", crate_mae.list_models())
def test_every_model_forwards_and_backwards(name):
    model = crate_mae.create_model(name, **tiny_kwargs(name))
    imgs = torch.randn(2, 3, 32, 32)
    if not model.has_decoder:
        logits = model(imgs)
        assert logits.shape == (2, 5)
        logits.sum().backward()
    else:
        out = model(imgs, mask_ratio=0.75)
        assert out.pred.shape == (2, 16, 8 * 8 * 3)
        assert out.mask.shape == (2, 16) and int(out.mask.sum(1)[0]) == 12
        assert torch.isfinite(out.loss)
        out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads if g is not None)
    assert sum(int(g is not None) for g in grads) > len(grads) // 2
    assert model.model_name == name


@pytest.mark.parametrize(
    "name,official_m",
    [
        ("crate_mae_tiny", 11.56),
        ("crate_mae_small", 25.41),
        ("crate_mae_base", 44.64),
        ("crate_mae_large", 154.27),
        ("vit_mae_base_paper", 143.79),
        ("vit_mae_base", 111.91),
    ],
)
def test_official_parameter_counts(name, official_m):
    model = crate_mae.create_model(name)
    assert round(model.num_params("official") / 1e6, 2) == official_m
    assert model.num_params("trainable") < model.num_params("official")


@pytest.mark.parametrize(
    "size,count", [("tiny", 6_090_856), ("small", 13_116_328), ("base", 22_796_008), ("large", 77_641_192)]
)
def test_supervised_crate_has_the_official_parameter_counts(size, count):
    """model/crate.py CRATE_tiny/small/base/large with 1000 classes, as the official code counts them (every tensor
    trains, the learned position table included)."""
    model = crate_mae.create_model(f"crate_supervised_{size}")
    assert model.num_params("official") == model.num_params("trainable") == count
    assert model.num_classes == 1000 and (model.patch_size, model.config.img_size) == (16, 224)
    if size == "large":
        assert (len(model.blocks), model.num_heads) == (24, 16)


def test_crate_mae_base_is_about_31_percent_of_paper_vit_mae_base():
    ratio = crate_mae.create_model("crate_mae_base").num_params("official") / crate_mae.create_model(
        "vit_mae_base_paper"
    ).num_params("official")
    assert 0.30 < ratio < 0.32


def test_presets():
    for size, (d, h, depth) in {
        "tiny": (384, 6, 12),
        "small": (576, 12, 12),
        "base": (768, 12, 12),
        "large": (1024, 16, 24),
    }.items():
        cfg = model_defaults(f"crate_mae_{size}")
        assert (cfg["embed_dim"], cfg["num_heads"], cfg["depth"], cfg["decoder_depth"]) == (d, h, depth, depth)
        assert (cfg["patch_size"], cfg["img_size"]) == (16, 224)


def test_unknown_model_and_bad_kwarg():
    with pytest.raises(ValueError, match="unknown model 'crate_mae_gigantic'"):
        crate_mae.create_model("crate_mae_gigantic")
    with pytest.raises(ValueError, match="bad argument"):
        crate_mae.create_model("crate_mae_tiny", not_a_kwarg=1)


def test_classes():
    assert isinstance(crate_mae.create_model("crate_mae_tiny", **TINY_ENCODER, decoder_depth=1), CrateMAE)
    assert isinstance(
        crate_mae.create_model(
            "vit_mae_base", **TINY_ENCODER, decoder_embed_dim=16, decoder_num_heads=2, decoder_depth=1
        ),
        ViTMAE,
    )


def test_one_registry_holds_presets_and_architectures():
    """The preset table and the architecture table (what config.json's "architecture" builds) live together."""
    assert crate_mae.models.is_registered("crate_mae_tiny") and not crate_mae.models.is_registered("crate_mae_gigantic")
    assert crate_mae.models.list_architectures() == ["crate", "crate_mae", "crate_supervised", "vit", "vit_mae"]
    factories = {crate_mae.models.architecture_factory(a) for a in crate_mae.models.list_architectures()}
    assert all(model_factory(name) in factories for name in crate_mae.list_models())
    model = crate_mae.models.build_model("crate_mae_tiny", **TINY_ENCODER, decoder_depth=1)
    assert crate_mae.models.architecture_factory(model.config.architecture) is CrateMAE
    with pytest.raises(ValueError, match="unknown architecture 'nope'"):
        crate_mae.models.architecture_factory("nope")
