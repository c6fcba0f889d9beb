"""The model contract (models/base.py) on every registered model, the way timm's tests/test_models.py checks every
timm model: each preset at its family's tiny size (tests/tiny.py), on the CPU, through the public API only.

A new preset is covered without a line here; a new family fails collection until FAMILIES and tests/tiny.py know
it.
"""

import pytest
import torch
from tiny import FAMILY_TINY, family, tiny_kwargs

import crate_mae
from crate_mae.models import CrateEncoder, CrateMAE, Intermediates, LayerTrace, MAEOutput, SupervisedCrate, ViTMAE

FAMILIES = {  # family: class, has_decoder, white_box, config["architecture"]
    "crate_mae": (CrateMAE, True, True, "crate_mae"),
    "crate": (CrateEncoder, False, True, "crate"),
    "crate_supervised": (SupervisedCrate, False, True, "crate_supervised"),
    "vit_mae": (ViTMAE, True, False, "vit_mae"),
    "vit_mae_paper": (ViTMAE, True, False, "vit_mae"),
}
MODELS = crate_mae.list_models()
AUTOENCODERS = [n for n in MODELS if FAMILIES[family(n)][1]]
CLASSIFIERS = [n for n in MODELS if not FAMILIES[family(n)][1]]
WHITE_BOX = [n for n in MODELS if FAMILIES[family(n)][2]]

N, L, D, HEADS = 2, 16, 32, 4  # batch; 32 px images in 8 px patches; tiny width and heads (tests/tiny.py)
PATCH_DIM = 8 * 8 * 3


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return crate_mae.create_model(name, **tiny_kwargs(name))


def images() -> torch.Tensor:
    return torch.randn(N, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def noise() -> torch.Tensor:
    return torch.rand(N, L, generator=torch.Generator().manual_seed(2))


def outputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Everything the model computes from ``x`` (autoencoders under fixed masking noise)."""
    with torch.no_grad():
        if model.has_decoder:
            return (*model(x, mask_ratio=0.75, noise=noise()), model.forward_features(x))
        return model(x), model.forward_features(x)


def test_every_family_has_a_tiny_size():
    assert sorted(FAMILY_TINY) == sorted(FAMILIES)


@pytest.mark.parametrize("name", MODELS)
def test_class_and_capabilities(name):
    """The class the preset names, class-level capabilities, and the three dicts of the contract."""
    cls, has_decoder, white_box, architecture = FAMILIES[family(name)]
    model = build(name)
    assert type(model) is cls
    assert model.has_decoder is cls.has_decoder is has_decoder
    assert model.white_box is cls.white_box is white_box
    assert model.config.architecture == architecture and model.model_name == name
    assert type(model.config) is cls.config_class
    assert {k: getattr(model.config, k) for k in tiny_kwargs(name)} == tiny_kwargs(name)
    assert isinstance(model.data_config, dict) and isinstance(model.provenance, dict)


@pytest.mark.parametrize("name", AUTOENCODERS)
def test_autoencoder_forward(name):
    model = build(name).eval()
    x = images()
    out = model(x, mask_ratio=0.75, noise=noise())
    assert isinstance(out, MAEOutput)
    loss, pred, mask, latent = out  # the official tuple order
    assert loss.shape == () and torch.isfinite(loss)
    assert pred.shape == (N, L, PATCH_DIM) and torch.isfinite(pred).all()
    assert mask.shape == (N, L) and mask.sum(1).tolist() == [12.0] * N
    tokens = 1 + L if model.config.mask_tokens_in_encoder else 1 + L // 4  # the frame: all tokens or visible ones
    assert latent.shape == (N, tokens, D)
    assert model.forward_features(x).shape == (N, 1 + L, D)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_forward(name):
    model = build(name).eval()
    x = images()
    feats = model.forward_features(x)
    assert feats.shape == (N, 1 + L, D)
    logits = model(x)
    assert logits.shape == (N, tiny_kwargs(name)["num_classes"]) and torch.isfinite(logits).all()
    torch.testing.assert_close(model.forward_head(feats), logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_save_and_load_round_trip_is_bit_identical(name, tmp_path):
    model = build(name).eval()
    crate_mae.save_pretrained(model, tmp_path / name)
    loaded = crate_mae.from_pretrained(tmp_path / name).eval()
    assert type(loaded) is type(model) and loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = images()
    assert all(torch.equal(u, v) for u, v in zip(outputs(model, x), outputs(loaded, x), strict=True))


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_keys_do_not_depend_on_the_seed(name):
    a, b = build(name, seed=0).state_dict(), build(name, seed=1).state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    assert len(a) > 0


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name):
    model = build(name).train()
    x = images()
    if model.has_decoder:
        loss = model(x, mask_ratio=0.75, noise=noise()).loss
    else:
        loss = torch.nn.functional.cross_entropy(model(x), torch.arange(N))
    loss.backward()
    params = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    assert params
    for k, p in params:
        assert p.grad is not None, f"{k} gets no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, k


@pytest.mark.parametrize("name", MODELS)
def test_eval_mode_is_deterministic(name):
    model = build(name).eval()
    x = images()
    assert all(torch.equal(u, v) for u, v in zip(outputs(model, x), outputs(model, x), strict=True))


@pytest.mark.parametrize("name", MODELS)
def test_num_params(name):
    model = build(name)
    trainable = model.num_params("trainable")
    assert trainable == model.num_params() == sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
    if family(name) == "crate":  # CRATE-MAE's encoder alone: the official code counts only the whole autoencoder
        with pytest.raises(ValueError, match="no official parameter count"):
            model.num_params("official")
    else:
        assert model.num_params("official") >= trainable
    with pytest.raises(ValueError, match="convention"):
        model.num_params("no_such_convention")


@pytest.mark.parametrize("name", AUTOENCODERS)
def test_reconstruct(name):
    """Images in the input's space; visible patches come from the input unchanged; the mode is left as it was."""
    model = build(name).train()
    x = images()
    r = model.reconstruct(x, mask_ratio=0.75, noise=noise())
    assert model.training
    assert sorted(r) == ["loss", "mask", "masked", "pred", "recon"]
    assert r["masked"].shape == r["recon"].shape == r["pred"].shape == x.shape
    assert r["mask"].shape == (N, L) and torch.isfinite(r["loss"])
    visible = r["mask"] == 0
    assert torch.equal(model.patchify(r["recon"])[visible], model.patchify(x)[visible])
    assert not model.patchify(r["masked"])[~visible].any()


@pytest.mark.parametrize("name", WHITE_BOX)
def test_white_box_layer_traces_and_attention_maps(name):
    model = build(name).eval()
    x = images()
    with torch.no_grad():
        inter = model.trace_layers(x)
        feats = model.forward_features(x)
    assert isinstance(inter, Intermediates)
    parts = {"encoder": inter.encoder, "decoder": inter.decoder} if model.has_decoder else {"encoder": inter.encoder}
    for part, traces in parts.items():
        assert sorted(traces) == [0, 1], part  # every layer by default; depth and decoder depth 2
        for layer, t in traces.items():
            assert isinstance(t, LayerTrace)
            for field in ("z_in", "mssa_in", "z_half", "z_out"):
                assert getattr(t, field).shape == (N, 1 + L, D), (part, layer, field)
            if part == "encoder":
                assert t.ista_in.shape == (N, 1 + L, D)
    torch.testing.assert_close(inter.latent, feats)  # unmasked: the latent is forward_features
    if model.has_decoder:
        assert not inter.mask.any() and inter.pred.shape == (N, L, PATCH_DIM)
    for layer in (0, -1):
        attn = model.attention_maps(x, layer=layer)
        assert attn.shape == (N, HEADS, 1 + L, 1 + L)
        torch.testing.assert_close(attn.sum(-1), torch.ones(N, HEADS, 1 + L))
    with pytest.raises(ValueError, match="out of range"):
        model.attention_maps(x, layer=2)
