"""One frozen config dataclass per architecture (models/base.py ModelConfig): what the constructor takes, what
config.json holds and what the model contract exposes as ``model.config``; and the contract every model keeps, so that
no caller needs to probe attributes."""

import dataclasses
import json

import pytest
import torch
import torch.nn as nn

import crate_mae
from crate_mae.io import CheckpointError, build_from_config
from crate_mae.models import (
    Capabilities,
    CrateEncoder,
    CrateEncoderConfig,
    CrateMAE,
    CrateMAEConfig,
    MAEViTClassifier,
    SupervisedCrate,
    SupervisedCrateConfig,
    ViTConfig,
    ViTMAE,
    ViTMAEConfig,
    vit_classifier,
)

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)
CASES = [  # (class, its config, small keywords)
    (CrateMAE, CrateMAEConfig, dict(TINY, decoder_depth=1)),
    (CrateEncoder, CrateEncoderConfig, dict(TINY, num_classes=3)),
    (SupervisedCrate, SupervisedCrateConfig, dict(TINY, num_classes=3)),
    (ViTMAE, ViTMAEConfig, dict(TINY, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)),
    (MAEViTClassifier, ViTConfig, dict(TINY, num_classes=3)),
]
IDS = [c.architecture for _, c, _ in CASES]


@pytest.mark.parametrize("cls,config_class,kw", CASES, ids=IDS)
def test_a_config_builds_the_model_the_keywords_build(cls, config_class, kw):
    config = config_class(**kw)
    torch.manual_seed(0)
    model = cls(config)
    torch.manual_seed(0)
    again = cls(**kw)  # the keyword signature of earlier releases
    assert model.config is config and again.config == config and model.model_name is None
    assert cls.config_class is config_class and model.config.architecture == config_class.architecture
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.embed_dim = 64
    with pytest.raises(TypeError, match="not both"):
        cls(config, depth=1)
    other = CrateEncoderConfig() if config_class is not CrateEncoderConfig else CrateMAEConfig()
    with pytest.raises(TypeError, match=f"takes a {config_class.__name__}"):
        cls(other)
    with pytest.raises(TypeError):
        cls(bogus=1)


@pytest.mark.parametrize("cls,config_class,kw", CASES, ids=IDS)
def test_to_dict_and_from_dict_round_trip(cls, config_class, kw):
    config = config_class(**kw)
    d = config.to_dict()
    assert d["architecture"] == config_class.architecture and list(d)[1:] == [
        f.name for f in dataclasses.fields(config)
    ]
    assert json.loads(json.dumps(d)) == d
    assert config_class.from_dict(d) == config
    assert config_class.from_dict({**d, "run": "ignored"}) == config
    assert config_class.from_dict({**d, "img_size": [32, 32]}).img_size == (32, 32)  # JSON's list, a tuple again
    with pytest.raises(ValueError, match="somewhere: depth = '2' must be a int"):
        config_class.from_dict({**d, "depth": "2"}, "somewhere")
    with pytest.raises(ValueError, match="somewhere: architecture 'nope'"):
        config_class.from_dict({**d, "architecture": "nope"}, "somewhere")


def test_configs_validate_themselves():
    with pytest.raises(ValueError, match="embed_dim=30 is not divisible by num_heads=4"):
        CrateMAEConfig(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="decoder_depth must be >= 1"):
        CrateMAEConfig(decoder_depth=0)
    with pytest.raises(ValueError, match="global_pool must be 'token' or 'avg'"):
        CrateEncoderConfig(global_pool="max")
    with pytest.raises(ValueError, match="num_classes must be >= 0"):
        SupervisedCrateConfig(num_classes=-1)
    with pytest.raises(ValueError, match="decoder_embed_dim \\(512\\) must equal embed_dim"):
        ViTMAEConfig(mask_tokens_in_encoder=True)
    assert CrateMAEConfig(num_heads=6, embed_dim=384).decoder_num_heads == 6  # None means num_heads; stored resolved


def test_encoder_configs_derive_from_the_autoencoder_config():
    mae = CrateMAEConfig(**TINY, decoder_depth=1, ista_lambda=0.3, pos_embed_mode="sincos", drop_path_rate=0.1)
    enc = CrateEncoderConfig.from_mae(mae, num_classes=5, drop_path_rate=0.2)
    assert (enc.embed_dim, enc.depth, enc.ista_lambda, enc.pos_embed_mode) == (32, 2, 0.3, "sincos")
    assert (enc.num_classes, enc.global_pool, enc.drop_path_rate) == (5, "token", 0.2)
    assert CrateMAE(mae).encoder.config == CrateEncoderConfig.from_mae(mae)
    vit = ViTConfig.from_mae(
        ViTMAEConfig(**TINY, qkv_bias=False, decoder_embed_dim=32, decoder_num_heads=4), num_classes=2
    )
    assert (vit.embed_dim, vit.qkv_bias, vit.num_classes) == (32, False, 2)
    assert isinstance(vit_classifier(vit), MAEViTClassifier) and vit_classifier(**TINY).config == ViTConfig(**TINY)


def test_dict_reads_still_work_for_one_release_with_a_warning():
    model = crate_mae.create_model("crate_mae_tiny", **TINY, decoder_depth=1)
    with pytest.deprecated_call():
        assert model.config["embed_dim"] == 32
    with pytest.deprecated_call():
        assert model.config.get("depth") == 2 and model.config.get("nope", 7) == 7
    with pytest.deprecated_call():
        assert dict(model.config) == model.config.to_dict()
    with pytest.deprecated_call():
        assert "architecture" in model.config and "model" not in model.config
    with pytest.deprecated_call(), pytest.raises(KeyError, match="model.model_name"):
        model.config["model"]
    with pytest.deprecated_call(), pytest.raises(KeyError, match="model.model_name"):
        model.config.get("model")
    assert model.model_name == "crate_mae_tiny"


def test_changes_after_construction_replace_the_config():
    clf = crate_mae.create_model("crate_tiny", **TINY)
    before = clf.config
    clf.reset_classifier(4, "avg")
    clf.set_drop_path(0.1)
    assert (clf.config.num_classes, clf.config.global_pool, clf.config.drop_path_rate) == (4, "avg", 0.1)
    assert before.num_classes == 0 and before.global_pool == "token"  # the old one is left as it was
    with pytest.raises(ValueError, match="global_pool"):
        clf.reset_classifier(2, "max")
    assert clf.num_classes == 4 and clf.config.num_classes == 4  # refused before anything changed
    rebuilt = build_from_config(clf.config.to_dict())
    assert rebuilt.config == clf.config and rebuilt.head.out_features == 4
    vit = vit_classifier(**TINY, num_classes=3)
    vit.reset_classifier(0, "avg")
    assert (vit.config.num_classes, vit.config.global_pool) == (0, "avg")


def test_a_config_json_of_earlier_releases_loads_and_is_written_back_the_same(tmp_path):
    """The keys and values save_pretrained wrote before configs were dataclasses (crate-mae 0.1.0)."""
    old = {
        "architecture": "crate_supervised",
        "classes": ["a", "b", "c"],
        "crate_mae_version": crate_mae.__version__,
        "data": {"img_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "depth": 1,
        "drop_path_rate": 0.0,
        "embed_dim": 32,
        "global_pool": "token",
        "img_size": 32,
        "in_chans": 3,
        "ista_lambda": 0.1,
        "ista_step_size": 0.1,
        "model": "crate_supervised_tiny",
        "num_classes": 3,
        "num_heads": 4,
        "patch_size": 8,
    }
    model = build_from_config(old, where="old config.json")
    assert isinstance(model, SupervisedCrate) and model.model_name == "crate_supervised_tiny"
    assert model.provenance == {"classes": ["a", "b", "c"]} and model.data_config == old["data"]
    crate_mae.save_pretrained(model, tmp_path / "m")
    text = (tmp_path / "m" / "config.json").read_text()
    assert text == json.dumps(old, indent=2, sort_keys=True)
    no_name = {k: v for k, v in old.items() if k != "model"}  # a model built by its constructor has no preset name
    unnamed = build_from_config(no_name)
    assert unnamed.model_name is None
    crate_mae.save_pretrained(unnamed, tmp_path / "u")
    assert json.loads((tmp_path / "u" / "config.json").read_text()) == no_name
    with pytest.raises(CheckpointError, match="old config.json: embed_dim = 32.0 must be a int"):
        build_from_config({**old, "embed_dim": 32.0}, where="old config.json")


@pytest.mark.parametrize("name", crate_mae.list_models())
def test_every_model_keeps_the_contract(name):
    """What callers may rely on without probing: the model of every preset and the ViT classifier."""
    kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4)
    if name.startswith(("crate_mae_", "vit_mae_")):
        kw["decoder_depth"] = 1
    if name.startswith("vit_mae_"):
        kw.update(decoder_embed_dim=32, decoder_num_heads=4)
    model = crate_mae.create_model(name, **kw)
    _check_contract(model, name)
    if model.has_decoder:
        _check_contract(crate_mae.load_encoder(model, num_classes=2), name)


def _check_contract(model: nn.Module, name: str) -> None:
    assert isinstance(model, Capabilities) and model.model_name == name
    assert isinstance(model.config, type(model).config_class) and model.data_config == {} and model.provenance == {}
    assert isinstance(model.has_decoder, bool) and isinstance(model.white_box, bool)
    assert isinstance(model.no_weight_decay(), set) and "cls_token" in {
        k.split(".")[-1] for k in model.no_weight_decay()
    }
    assert model.num_params("trainable") == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert len(model.encoder_blocks()) == model.config.depth
    model.set_grad_checkpointing(True)
    model.set_grad_checkpointing(False)
    if model.has_decoder:
        with pytest.raises(ValueError, match="layer-wise lr decay needs an encoder classifier"):
            model.group_matcher()
    else:
        assert set(model.group_matcher()) == {"stem", "blocks"}
