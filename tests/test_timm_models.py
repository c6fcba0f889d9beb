"""The crate_* encoders as timm models: registry, timm's model contract (the checks timm's own test suite runs on
its models, tests/test_models.py), features_only, layer decay, local pretrained files."""

from pathlib import Path

import pytest
import timm
import torch
from official_fixtures import official_state_dict_path
from timm.optim import param_groups_layer_decay
from tiny import TINY_ENCODER

import crate_mae
from crate_mae.models import CrateEncoder, SupervisedCrate

SMALL = {**TINY_ENCODER, "depth": 3}


def test_registered_with_timm():
    assert timm.list_models("crate*") == [
        "crate_base",
        "crate_large",
        "crate_small",
        "crate_supervised_base",
        "crate_supervised_large",
        "crate_supervised_small",
        "crate_supervised_tiny",
        "crate_tiny",
    ]
    assert isinstance(timm.create_model("crate_supervised_tiny", depth=1), SupervisedCrate)
    model = timm.create_model("crate_base", num_classes=10)
    assert isinstance(model, CrateEncoder) and model.num_classes == 10 and model.embed_dim == 768
    assert model.pretrained_cfg["first_conv"] == "patch_embed.proj" and model.pretrained_cfg["classifier"] == "head"


def test_pretrained_explains_where_weights_come_from():
    with pytest.raises(ValueError, match="publishes no pretrained weights for crate_tiny.*pretrained_cfg_overlay") as e:
        timm.create_model("crate_tiny", pretrained=True)
    # the message names where the official weights are, and the README section it points to exists and links them
    assert "github.com/Ma-Lab-Berkeley/CRATE" in str(e.value) and "'Official weights'" in str(e.value)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Official weights") :]
    assert "https://github.com/Ma-Lab-Berkeley/CRATE" in section[: section.index("\n## ", 3)]


def test_timm_model_contract():
    """What timm's test_model_default_cfgs / test_model_forward_intermediates check, on crate_tiny."""
    model = timm.create_model("crate_tiny", num_classes=7, **SMALL).eval()
    cfg = model.pretrained_cfg
    x = torch.randn(2, *cfg["input_size"][:1], 32, 32)
    # first conv and classifier named in the cfg exist; reset_classifier / forward_head(pre_logits) behave
    assert dict(model.named_modules())[cfg["first_conv"]].in_channels == 3
    assert dict(model.named_modules())[cfg["classifier"]].out_features == 7
    feats = model.forward_features(x)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    # forward_intermediates: shapes agree with feature_info, NCHW and NLC, final features equal forward_features
    final, inter = model.forward_intermediates(x)
    assert len(inter) == len(model.feature_info) == 3
    for t, info in zip(inter, model.feature_info):
        assert t.shape == (2, info["num_chs"], 32 // info["reduction"], 32 // info["reduction"])
    torch.testing.assert_close(final, feats)
    nlc = model.forward_intermediates(x, indices=[0, -1], output_fmt="NLC", intermediates_only=True)
    assert [t.shape for t in nlc] == [(2, 16, 32)] * 2
    torch.testing.assert_close(nlc[1].transpose(1, 2).reshape(2, 32, 4, 4), inter[-1])
    normed = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", intermediates_only=True)[0]
    torch.testing.assert_close(normed, feats[:, 1:])
    # pruning keeps what the intermediates need
    kept = model.prune_intermediate_layers([0, 1], prune_head=True)
    assert kept == [0, 1] and len(model.blocks) == 2


def test_features_only():
    net = timm.create_model("crate_tiny", features_only=True, out_indices=(-2, -1), **SMALL)
    outs = net(torch.randn(2, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 4, 4)] * 2
    assert net.feature_info.channels() == [32, 32] and net.feature_info.reduction() == [8, 8]


def test_layer_decay_scales_through_group_matcher():
    """timm's param_groups_layer_decay gives facebookresearch/mae's per-parameter scales (get_layer_id_for_vit):
    stem decay^(depth+1), block i decay^(depth-i), final norm and head 1."""
    model = timm.create_model("crate_tiny", num_classes=5, **SMALL)
    groups = param_groups_layer_decay(
        model, weight_decay=0.05, layer_decay=0.5, no_weight_decay_list=model.no_weight_decay()
    )
    scale = {n: g["lr_scale"] for g in groups for n, p in model.named_parameters() if any(p is q for q in g["params"])}
    depth = 3
    assert scale["cls_token"] == scale["patch_embed.proj.weight"] == 0.5 ** (depth + 1)
    for i in range(depth):
        assert scale[f"blocks.{i}.attn.qkv.weight"] == scale[f"blocks.{i}.ista.dictionary"] == 0.5 ** (depth - i)
    assert scale["norm.weight"] == scale["head.weight"] == scale["head.bias"] == 1.0
    decayed = {
        n
        for g in groups
        if g["weight_decay"] > 0
        for n, p in model.named_parameters()
        if any(p is q for q in g["params"])
    }
    assert "cls_token" not in decayed and "norm.weight" not in decayed and "blocks.0.ista.dictionary" in decayed


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = crate_mae.create_model("crate_mae_tiny", **SMALL)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(imgs, noise=noise).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], msg=n)


def test_local_pretrained_files(tmp_path):
    """Our CRATE-MAE checkpoint and an official state dict both load as timm encoders (the head stays fresh)."""
    mae = crate_mae.create_model("crate_mae_tiny", **SMALL)
    crate_mae.save_pretrained(mae, tmp_path / "mae")
    enc = timm.create_model(
        "crate_tiny",
        pretrained=True,
        num_classes=4,
        **SMALL,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "mae" / "model.safetensors")),
    )
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x), mae.eval().forward_features(x))
    official = official_state_dict_path("crate_mae_micro")
    enc = timm.create_model(
        "crate_tiny",
        pretrained=True,
        img_size=32,
        patch_size=4,
        embed_dim=64,
        depth=3,
        num_heads=4,
        pretrained_cfg_overlay=dict(file=str(official)),
    )
    ref = crate_mae.load_checkpoint(official, num_heads=4)
    with torch.no_grad():
        torch.testing.assert_close(enc.eval().forward_features(x), ref.forward_features(x))


def test_supervised_crate_in_timm():
    """timm's contract on supervised CRATE: default cfg (1000 classes, ImageNet normalisation), classifier, head
    reset, intermediates, features_only, layer decay (the head's LayerNorm goes with the head)."""
    model = timm.create_model("crate_supervised_tiny", num_classes=7, **SMALL).eval()
    cfg = model.pretrained_cfg
    assert cfg["num_classes"] == 1000 and cfg["first_conv"] is None and cfg["classifier"] == "head"
    assert dict(model.named_modules())[cfg["classifier"]].out_features == 7
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    final, inter = model.forward_intermediates(x)
    torch.testing.assert_close(final, feats)
    assert [t.shape for t in inter] == [(2, 32, 4, 4)] * 3
    model.reset_classifier(0)
    assert model(x).shape == (2, 32)
    net = timm.create_model("crate_supervised_tiny", features_only=True, out_indices=(-1,), **SMALL)
    assert [tuple(o.shape) for o in net(x)] == [(2, 32, 4, 4)]
    model = timm.create_model("crate_supervised_tiny", num_classes=5, **SMALL)
    groups = param_groups_layer_decay(
        model, weight_decay=0.05, layer_decay=0.5, no_weight_decay_list=model.no_weight_decay()
    )
    scale = {n: g["lr_scale"] for g in groups for n, p in model.named_parameters() if any(p is q for q in g["params"])}
    assert scale["pos_embed.table"] == scale["patch_embed.proj.weight"] == scale["cls_token"] == 0.5**4
    assert scale["blocks.2.ista.dictionary"] == 0.5
    assert scale["fc_norm.weight"] == scale["head.weight"] == 1.0


def test_supervised_crate_official_file_as_timm_pretrained():
    """An official model/crate.py file loads through timm's pretrained path; a head of another size stays fresh."""
    official = official_state_dict_path("crate_micro")
    micro = dict(img_size=32, patch_size=4, embed_dim=64, depth=3, num_heads=4)
    ref = crate_mae.load_checkpoint(official, num_heads=4)
    same = timm.create_model(
        "crate_supervised_tiny",
        pretrained=True,
        num_classes=10,
        **micro,
        pretrained_cfg_overlay=dict(file=str(official)),
    ).eval()
    other = timm.create_model(
        "crate_supervised_tiny",
        pretrained=True,
        num_classes=3,
        **micro,
        pretrained_cfg_overlay=dict(file=str(official)),
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(same(x), ref(x))
        torch.testing.assert_close(other.forward_features(x), ref.forward_features(x))
    assert other.head.out_features == 3
