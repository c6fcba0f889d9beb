"""Supervised CRATE (Ma-Lab-Berkeley/CRATE model/crate.py): the official weights reproduce the official outputs, load
from every container, convert both ways, and the model keeps the contract of models/base.py."""

import pytest
import torch
from official_fixtures import TOL, official_fixture
from safetensors.torch import load_file, save_file
from tiny import TINY_ENCODER

import crate_mae
from crate_mae.io import CheckpointError, build_from_config
from crate_mae.models import SupervisedCrate
from crate_mae.models.crate_supervised import from_official, kwargs_from_official, to_official
from crate_mae.models.official import ISTA as OfficialISTA

SMALL = {**TINY_ENCODER, "num_classes": 5}


def micro(**overrides):
    path, io, meta = official_fixture("crate_micro")
    return crate_mae.load_checkpoint(path, num_heads=meta["num_heads"], **overrides), io, meta


def test_crate_micro_reproduces_the_official_outputs():
    """Logits, pre-pooling features and last-layer attention of the official code, in fp32 within the usual
    tolerance; the official parameter count."""
    model, io, meta = micro()
    assert isinstance(model, SupervisedCrate) and not model.training
    c = model.config
    assert (c.img_size, c.patch_size, c.embed_dim, c.depth, c.num_classes) == (32, 4, 64, 3, 10)
    assert (c.ista_step_size, c.ista_lambda) == (meta["ista_step_size"], meta["ista_lambda"])
    assert model.num_params("official") == meta["n_parameters"]
    with torch.no_grad():
        torch.testing.assert_close(model(io["imgs"]), io["logits"], **TOL)
        torch.testing.assert_close(model.forward_features(io["imgs"]), io["features"], **TOL)
        torch.testing.assert_close(model.attention_maps(io["imgs"], layer=-1), io["attn_last"], **TOL)


def test_crate_micro_train_mode_is_the_same_function():
    """No dropout anywhere (the official dropouts are 0): training differentiates what inference computes."""
    model, io, _ = micro()
    logits = model.train()(io["imgs"])
    torch.testing.assert_close(logits.detach(), io["logits"], **TOL)
    logits.sum().backward()
    assert model.pos_embed.table.grad is not None and model.patch_embed.pre_norm.weight.grad is not None


@pytest.mark.parametrize("wrap", ["raw", "model", "state_dict", "module"])
@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_official_containers(tmp_path, wrap, ext):
    """Raw, {'model': ..}, {'state_dict': ..} (what the official main.py saves) and DataParallel's module. prefix."""
    path, io, _ = official_fixture("crate_micro")
    sd = load_file(str(path))
    if wrap in ("module", "state_dict"):
        sd = {f"module.{k}": v for k, v in sd.items()}
    out = tmp_path / f"ckpt{ext}"
    if ext == ".safetensors":
        save_file(sd, str(out))
    else:
        torch.save(sd if wrap in ("raw", "module") else {wrap: sd, "epoch": 3, "best_acc1": 1.0}, out)
    model = crate_mae.load_checkpoint(out, num_heads=4)
    with torch.no_grad():
        torch.testing.assert_close(model(io["imgs"]), io["logits"], **TOL)


def test_heads_come_from_the_preset_of_the_width_or_must_be_given():
    official = to_official(crate_mae.create_model("crate_supervised_tiny", img_size=32, depth=1, num_classes=3))
    model = crate_mae.load_checkpoint(official)
    assert model.num_heads == 6 and model.model_name == "crate_supervised_tiny"  # 384 wide: CRATE_tiny
    path, _, _ = official_fixture("crate_micro")
    with pytest.raises(CheckpointError, match="cannot infer num_heads for width 64.*pass num_heads="):
        crate_mae.load_checkpoint(path)


def test_shapes_are_read_off_the_state_dict():
    sd = load_file(str(official_fixture("crate_micro")[0]))
    assert kwargs_from_official(sd) == dict(
        embed_dim=64, in_chans=3, patch_size=4, depth=3, num_classes=10, img_size=32
    )
    # a one-channel model: the patch dimension p*p*C is ambiguous without in_chans
    gray = to_official(SupervisedCrate(img_size=32, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=4))
    with pytest.raises(CheckpointError, match="patch dimension 16 is not p\\*p\\*3"):
        crate_mae.load_checkpoint(gray, num_heads=4)
    assert crate_mae.load_checkpoint(gray, in_chans=1, num_heads=4).config.patch_size == 4
    bad = dict(sd, **{"transformer.layers.0.0.fn.qkv.weight": torch.zeros(128, 64)})
    with pytest.raises(CheckpointError, match="dim_head \\* heads != dim"):
        crate_mae.load_checkpoint(bad, num_heads=4)


def test_truncated_official_state_dict_names_the_missing_keys():
    sd = load_file(str(official_fixture("crate_micro")[0]))
    del sd["transformer.layers.1.1.fn.weight"]
    with pytest.raises(CheckpointError, match="missing keys \\(1\\): blocks.1.ista.dictionary"):
        crate_mae.load_checkpoint(sd, num_heads=4)


def test_official_names_convert_both_ways():
    sd = load_file(str(official_fixture("crate_micro")[0]))
    model, _, _ = micro()
    back = to_official(model)
    assert sorted(back) == sorted(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    assert "<unrecognised>extra.weight" in from_official({**sd, "extra.weight": torch.zeros(1)})


def test_roundtrip_through_our_format(tmp_path):
    model, io, _ = micro()
    crate_mae.save_pretrained(model, tmp_path / "m")
    again = crate_mae.load_checkpoint(tmp_path / "m")
    assert isinstance(again, SupervisedCrate)
    assert again.config == model.config and again.model_name is model.model_name is None  # no preset: width 64
    with torch.no_grad():
        assert torch.equal(again(io["imgs"]), model(io["imgs"]))


def test_model_contract():
    model = crate_mae.create_model("crate_supervised_small", **SMALL).eval()
    assert not model.has_decoder and model.white_box
    assert model.config.architecture == "crate_supervised" and model.model_name == "crate_supervised_small"
    assert model.data_config == {} and model.provenance == {}
    imgs = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(imgs)
        assert feats.shape == (3, 17, 32)
        pooled = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pooled, model.fc_norm(feats[:, 0]))  # LN of the cls token, before the linear head
        torch.testing.assert_close(model.forward_head(feats), model(imgs))
        final, inter = model.forward_intermediates(imgs, output_fmt="NLC")
        torch.testing.assert_close(final, feats)  # no final norm: the last block's output is the feature
        torch.testing.assert_close(inter[-1], feats[:, 1:])
        trace = model.trace_layers(imgs)
        assert sorted(trace.encoder) == [0, 1]
        torch.testing.assert_close(trace.encoder[1].z_out, feats)
        torch.testing.assert_close(trace.latent, feats)
        attn = model.attention_maps(imgs, layer=0)
    assert attn.shape == (3, 4, 17, 17)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 4, 17))
    # config rebuilds the same architecture (what our format stores)
    rebuilt = build_from_config(model.config.to_dict())
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(imgs), model(imgs))
    model.reset_classifier(0)
    assert model(imgs).shape == (3, 32) and model.fc_norm.weight.shape == (32,)


def test_ista_lambda_is_a_keyword_and_the_step_is_the_official_one():
    model = crate_mae.create_model("crate_supervised_tiny", **SMALL)
    assert model.config.ista_lambda == 0.1 and model.blocks[0].ista.lambd == 0.1  # the official fixed value
    assert crate_mae.create_model("crate_supervised_tiny", **SMALL, ista_lambda=0.5).blocks[1].ista.lambd == 0.5
    ista = model.blocks[0].ista
    official = OfficialISTA(32, 0.1, 0.1)
    official.weight.data.copy_(ista.dictionary.data)
    x = torch.randn(2, 17, 32)
    torch.testing.assert_close(ista(x), official(x))
    with pytest.raises(ValueError, match="ista_lambda must be >= 0"):
        crate_mae.create_model("crate_supervised_tiny", **SMALL, ista_lambda=-1.0)


def test_one_head_has_no_output_projection_as_in_the_official_code():
    model = SupervisedCrate(img_size=16, patch_size=8, embed_dim=8, depth=1, num_heads=1, num_classes=2)
    assert not any(".attn.proj." in k for k in model.state_dict())
    assert "transformer.layers.0.0.fn.to_out.0.weight" not in to_official(model)


def test_other_input_sizes_resample_the_learned_table_without_changing_the_model():
    model, io, _ = micro()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    imgs = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        assert model(imgs).shape == (2, 10)
        assert model.attention_maps(imgs).shape == (2, 4, 1 + 12 * 10, 1 + 12 * 10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_inputs_and_configs_are_named():
    model = crate_mae.create_model("crate_supervised_tiny", **SMALL)
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="not a positive multiple of the patch size 8"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="embed_dim=30 is not divisible by num_heads=4"):
        crate_mae.create_model("crate_supervised_tiny", **{**SMALL, "embed_dim": 30})
    with pytest.raises(ValueError, match="global_pool must be 'token' or 'avg'"):
        crate_mae.create_model("crate_supervised_tiny", **SMALL, global_pool="mean")
