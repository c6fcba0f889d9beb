import math

import pytest
import torch

import crate_mae
from crate_mae.engine.optim import WarmupCosine, build_optimizer, effective_lr


def test_linear_scaling_rule():
    assert effective_lr(1.5e-4, 128, 4, 8) == pytest.approx(1.5e-4 * 4096 / 256)
    assert effective_lr(1.5e-4, 128, 4, 8, lr=1e-3) == 1e-3


def test_warmup_cosine_known_steps():
    s = WarmupCosine(base_lr=1.0, total_steps=100, warmup_steps=10, min_lr=0.1)
    assert s(0) == 0.0
    assert s(5) == pytest.approx(0.5)
    assert s(10) == pytest.approx(1.0)  # warm-up ends at the peak
    assert s(55) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert s(55 - 22.5) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert s(100) == pytest.approx(0.1)
    assert all(s(i) >= s(i + 1) for i in range(10, 100))  # monotone decay after warm-up


def test_schedule_sets_every_group():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias], "lr_scale": 0.5}], lr=1.0)
    WarmupCosine(2.0, 10, 0).apply(opt, 0)
    assert [g["lr"] for g in opt.param_groups] == [2.0, 1.0]


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(1.0, 10, 11)


def _groups(model, policy):
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95), param_groups=policy)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decay and no_decay and not decay & no_decay
    assert len(decay) + len(no_decay) == len(names)
    return opt, decay, no_decay


def test_mae_weight_decay_groups(tiny_model_kwargs):
    """facebookresearch/mae main_pretrain.py (timm add_weight_decay, no skip list): every >= 2-D parameter decays,
    the (1, 1, D) tokens included; 1-D ones (norms, biases) do not."""
    model = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs)
    opt, decay, no_decay = _groups(model, "mae")
    assert all(dict(model.named_parameters())[n].ndim >= 2 for n in decay)
    assert all(dict(model.named_parameters())[n].ndim == 1 for n in no_decay)
    assert {
        "encoder.cls_token",
        "mask_token",
        "encoder.blocks.0.attn.qkv.weight",
        "encoder.blocks.0.ista.dictionary",
        "decoder_pred.weight",
        "encoder.patch_embed.proj.weight",
    } <= decay
    assert {
        "encoder.norm.weight",
        "encoder.norm.bias",
        "decoder_pred.bias",
        "encoder.blocks.0.norm1.weight",
    } <= no_decay


def test_timm_weight_decay_groups_exempt_tokens(tiny_model_kwargs):
    model = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs)
    opt, decay, no_decay = _groups(model, "timm")
    assert {"encoder.cls_token", "mask_token", "encoder.norm.weight", "decoder_pred.bias"} <= no_decay
    assert {"encoder.blocks.0.attn.qkv.weight", "encoder.blocks.0.ista.dictionary"} <= decay
    with pytest.raises(ValueError, match="param_groups"):
        build_optimizer(model, 1e-3, 0.05, (0.9, 0.95), param_groups="adam")
    assert all(g["betas"] == (0.9, 0.95) for g in opt.param_groups)


def test_fused_adamw_on_cpu_steps_like_the_default_implementation(tiny_model_kwargs):
    """Our training path uses torch's fused AdamW where it exists; three steps equal the default implementation's
    up to float rounding."""
    import copy

    from timm.optim import param_groups_weight_decay

    torch.manual_seed(0)
    model = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs)
    ref = copy.deepcopy(model)
    opt = build_optimizer(model, 1e-2, 0.05, (0.9, 0.95))
    assert all(g["fused"] for g in opt.param_groups)
    ref_opt = torch.optim.AdamW(param_groups_weight_decay(ref, 0.05), lr=1e-2, betas=(0.9, 0.95))
    assert not any(g["fused"] for g in ref_opt.param_groups)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    for m, o in ((model, opt), (ref, ref_opt)):
        for _ in range(3):
            m(imgs, noise=noise).loss.backward()
            o.step()
            o.zero_grad()
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_given_param_groups_are_used_as_they_are_and_fused(tiny_model_kwargs):
    """Fine-tuning hands build_optimizer its layer-wise lr decay groups: the optimiser gets exactly those groups
    (params, weight decay, lr_scale), fused, with betas and lr set; a group without weight_decay gets the argument's;
    groups that leave a trainable parameter out are refused."""
    from crate_mae.evaluation.finetune import param_groups_lrd

    model = crate_mae.create_model(
        "crate_tiny", num_classes=3, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4
    )
    groups = param_groups_lrd(model, weight_decay=0.05, layer_decay=0.5, no_weight_decay_list={"cls_token"})
    opt = build_optimizer(model, 1e-3, 0.05, (0.9, 0.999), param_groups=groups)
    assert len(opt.param_groups) == len(groups)
    for g, want in zip(opt.param_groups, groups):
        assert [id(p) for p in g["params"]] == [id(p) for p in want["params"]]
        assert (g["weight_decay"], g["lr_scale"], g["betas"], g["lr"], g["fused"]) == (
            want["weight_decay"],
            want["lr_scale"],
            (0.9, 0.999),
            1e-3,
            True,
        )
    bare = [{"params": [p for p in model.parameters()]}]
    assert build_optimizer(model, 1e-3, 0.02, (0.9, 0.999), param_groups=bare).param_groups[0]["weight_decay"] == 0.02
    with pytest.raises(ValueError, match=r"leave 1 trainable parameters of CrateEncoder out \(e.g. head.bias\)"):
        build_optimizer(
            model,
            1e-3,
            0.05,
            (0.9, 0.999),
            param_groups=[{"params": [p for n, p in model.named_parameters() if n != "head.bias"]}],
        )
