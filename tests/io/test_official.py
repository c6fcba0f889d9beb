"""Official weights (crate_mae.io.official): CRATE-MAE and facebookresearch/mae layouts in every container
(.pth, .safetensors, wrapped, module.-prefixed, in memory); heads from the presets; errors that name the keys."""

import pytest
import torch
from safetensors.torch import save_file

import crate_mae
from crate_mae.io import CheckpointError
from crate_mae.models.official import from_official as convert_official_crate

KW = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, decoder_depth=2)


def _same_outputs(a, b):
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        return torch.equal(a(imgs, noise=noise).pred, b(imgs, noise=noise).pred)


def _to_official(model):
    """Write our CRATE-MAE weights with the official key names (the inverse of convert_official_crate)."""
    sd = model.state_dict()
    out = {}
    for k, v in sd.items():
        k2 = (
            k.replace("encoder.blocks.", "blocks.")
            .replace("decoder.blocks.", "decoder_blocks.")
            .replace(".norm1.", ".layers.0.0.norm.")
            .replace(".ista.dictionary", ".layers.0.1.fn.weight")
        )
        if k2.startswith("blocks."):
            k2 = k2.replace(".attn.qkv.", ".layers.0.0.fn.qkv.").replace(".attn.proj.", ".layers.0.0.fn.to_out.0.")
            k2 = k2.replace(".norm2.", ".layers.0.1.norm.")
        elif k2.startswith("decoder_blocks."):
            k2 = k2.replace(".linear.weight", ".layers.0.0.fn.weight").replace(".norm2.", ".layers.0.1.norm.")
            k2 = k2.replace(".attn.qkv.", ".layers.0.1.fn.qkv.").replace(".attn.proj.", ".layers.0.1.fn.to_out.0.")
        k2 = {
            "encoder.cls_token": "cls_token",
            "decoder.norm.weight": "decoder_norm.weight",
            "decoder.norm.bias": "decoder_norm.bias",
        }.get(k2, k2)
        k2 = k2.replace("encoder.patch_embed", "patch_embed").replace("encoder.norm", "norm")
        out[k2] = v
    d = model.encoder.embed_dim
    table = model.encoder.pos_embed.table
    out["pos_embed"], out["decoder_pos_embed"] = table.clone(), table.clone()
    out["decoder_embed.weight"], out["decoder_embed.bias"] = torch.zeros(d, d), torch.zeros(d)
    return out


@pytest.mark.parametrize("wrap", ["raw", "model", "state_dict", "module"])
@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_official_crate_containers(tmp_path, wrap, ext):
    model = crate_mae.create_model("crate_mae_tiny", **KW)
    sd = _to_official(model)
    if wrap == "module":
        sd = {f"module.{k}": v for k, v in sd.items()}
    path = tmp_path / f"ckpt{ext}"
    if ext == ".safetensors":
        save_file(sd, str(path))
    else:
        obj = sd if wrap in ("raw", "module") else {wrap: sd, "epoch": 3}
        torch.save(obj, path)
    loaded = crate_mae.load_checkpoint(path, num_heads=4)
    assert loaded.config.img_size == 32 and loaded.config.depth == 2 and loaded.config.patch_size == 8
    assert _same_outputs(model, loaded)


def test_in_memory_state_dict_and_overrides():
    model = crate_mae.create_model("crate_mae_tiny", **KW)
    loaded = crate_mae.load_checkpoint({"model": _to_official(model)}, num_heads=4, ista_lambda=0.1)
    assert loaded.encoder.blocks[1].ista.lambd == 0.1 and loaded.encoder.blocks[1].ista.step_size == 0.1


def test_heads_inferred_from_official_width_or_required():
    model = crate_mae.create_model("crate_mae_tiny", **KW)
    with pytest.raises(CheckpointError, match="cannot infer num_heads for width 32"):
        crate_mae.load_checkpoint(_to_official(model))


def test_heads_from_preset_for_official_width():
    sd = _to_official(crate_mae.create_model("crate_mae_tiny", img_size=32, patch_size=16, depth=1, decoder_depth=1))
    assert crate_mae.load_checkpoint(sd).encoder.num_heads == 6  # width 384 -> tiny preset


def test_mismatched_and_truncated_checkpoints_are_named(tmp_path):
    model = crate_mae.create_model("crate_mae_tiny", **KW)
    sd = _to_official(model)
    del sd["blocks.1.layers.0.1.fn.weight"]
    sd["blocks.0.layers.0.0.fn.to_out.0.bias"] = torch.zeros(5)
    sd["surprise"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        crate_mae.load_checkpoint(sd, num_heads=4)
    msg = str(e.value)
    assert "encoder.blocks.1.ista.dictionary" in msg and "surprise" in msg
    assert "encoder.blocks.0.attn.proj.bias: checkpoint (5,) vs model (32,)" in msg
    path = tmp_path / "t.safetensors"
    save_file(_to_official(model), str(path))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        crate_mae.load_checkpoint(path)
    bad = tmp_path / "t.pth"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="t.pth cannot be read as tensors only"):
        crate_mae.load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        crate_mae.load_checkpoint(tmp_path / "missing.pth")


def test_convert_official_crate_keeps_unknown_keys_visible():
    out = convert_official_crate(
        {
            "blocks.0.layers.0.0.fn.qkv.weight": torch.zeros(1),
            "weird.key": torch.zeros(1),
            "decoder_embed.weight": torch.zeros(1),
        }
    )
    assert "encoder.blocks.0.attn.qkv.weight" in out and "<unrecognised>weird.key" in out
    assert not any("decoder_embed" in k for k in out)


def test_vit_mae_with_and_without_decoder(tmp_path):
    vit = crate_mae.create_model(
        "vit_mae_base", img_size=32, patch_size=8, embed_dim=768, depth=1, num_heads=12, decoder_depth=1
    )
    sd = dict(vit.state_dict())
    sd["pos_embed"] = vit.pos_embed.table
    loaded = crate_mae.load_checkpoint(sd)  # heads from the preset for width 768 / decoder width 512
    assert loaded.config.decoder_embed_dim == 512 and loaded.config.qkv_bias
    assert _same_outputs(vit, loaded)
    enc_only = {k: v for k, v in sd.items() if not k.startswith(("decoder", "mask_token"))}
    with pytest.warns(UserWarning, match="has no decoder"):
        enc = crate_mae.load_checkpoint(enc_only)
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(enc.forward_features(imgs), vit.forward_features(imgs))


def test_learned_position_table_is_reported():
    model = crate_mae.create_model("crate_mae_tiny", **KW)
    sd = _to_official(model)
    sd["pos_embed"] = torch.randn_like(sd["pos_embed"])
    with pytest.warns(UserWarning, match="not the fixed 2-D sin-cos table"):
        crate_mae.load_checkpoint(sd, num_heads=4)
