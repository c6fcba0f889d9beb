"""Fine-tuning: layer-decay groups, mixup targets, overfitting a 20-image set, resume, class-mismatch errors."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import TINY_ENCODER

import crate_mae
from crate_mae.evaluation.finetune import build_mixup, finetune, param_groups_lrd
from crate_mae.evaluation.finetune_config import FinetuneAugConfig, load_finetune_config

NO_AUG = [
    "aug.rand_augment=null",
    "aug.mixup=0",
    "aug.cutmix=0",
    "aug.smoothing=0",
    "aug.reprob=0",
    "aug.hflip=0",
    "aug.scale=[1, 1]",
]


def _cfg(data, out, *extra):
    return load_finetune_config(
        None,
        [
            f"data.path={data}",
            "data.num_workers=0",
            f"run.output_dir={out}",
            "run.progress=false",
            f"model.overrides={json.dumps(TINY_ENCODER)}",
            "model.drop_path_rate=0.0",
            "optim.batch_size=10",
            "optim.warmup_epochs=1",
            *extra,
        ],
    )


def _by_name(model, groups, key):
    return {n: g[key] for g in groups for n, p in model.named_parameters() if any(p is q for q in g["params"])}


def test_layer_decay_groups_scale_each_parameter():
    """The per-parameter scales of facebookresearch/mae's param_groups_lrd (depth 2 -> L = 3), now from timm's
    param_groups_layer_decay through group_matcher."""
    model = crate_mae.create_model("crate_tiny", num_classes=3, **TINY_ENCODER)
    groups = param_groups_lrd(model, weight_decay=0.05, layer_decay=0.5, no_weight_decay_list={"cls_token"})
    scale, decay = _by_name(model, groups, "lr_scale"), _by_name(model, groups, "weight_decay")
    assert set(scale) == {n for n, _ in model.named_parameters()}
    assert scale["cls_token"] == scale["patch_embed.proj.weight"] == 0.5**3
    assert scale["blocks.0.attn.qkv.weight"] == scale["blocks.0.ista.dictionary"] == 0.5**2
    assert scale["blocks.1.norm1.weight"] == 0.5
    assert scale["norm.weight"] == scale["head.weight"] == scale["head.bias"] == 1.0
    assert decay["blocks.0.attn.qkv.weight"] == decay["head.weight"] == 0.05
    assert decay["cls_token"] == decay["head.bias"] == decay["blocks.1.norm1.weight"] == 0.0


def test_layer_decay_schedule_applies_scales():
    from crate_mae.engine.optim import WarmupCosine

    model = crate_mae.create_model("crate_tiny", num_classes=3, **TINY_ENCODER)
    opt = torch.optim.AdamW(param_groups_lrd(model, 0.05, 0.5), lr=1.0)
    WarmupCosine(1.0, 10, 0).apply(opt, 0)
    assert sorted({g["lr"] for g in opt.param_groups}) == [0.125, 0.25, 0.5, 1.0]


def test_mixup_targets_are_soft_and_smoothed():
    aug = FinetuneAugConfig(mixup=0.8, cutmix=1.0, smoothing=0.1)
    mixup = build_mixup(aug, num_classes=10)
    imgs, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    mixed, target = mixup(imgs, labels)
    assert mixed.shape == imgs.shape and target.shape == (4, 10)
    torch.testing.assert_close(target.sum(1), torch.ones(4))
    assert target.min() >= 0.1 / 10 - 1e-6  # label smoothing floor
    assert build_mixup(FinetuneAugConfig(mixup=0.0, cutmix=0.0), 10) is None


@pytest.mark.slow
def test_finetune_overfits_twenty_images_and_resumes(image_folder, tmp_path):
    out = tmp_path / "ft"
    # val = the training images: a fine-tune that works must fit them
    common = [
        "data.val_split=train",
        "optim.epochs=8",
        "optim.batch_size=4",
        "optim.lr=0.003",
        "optim.layer_decay=1.0",
        "optim.weight_decay=0",
        *NO_AUG,
    ]
    first = finetune(_cfg(image_folder, out, *common, "run.max_steps=23"))  # stops mid-epoch 5
    assert first["details"]["stopped"] == "max_steps" and first["details"]["steps"] == 23
    result = finetune(_cfg(image_folder, out, *common, "run.resume=auto"))
    assert result["details"]["steps"] == 40 and result["details"]["stopped"] == "completed"
    assert result["metrics"]["best_top1"] == 100.0
    assert result["dataset"]["transform"]["img_size"] == 32  # the model's size, not the 224 default
    saved = json.loads((out / "result.json").read_text())
    assert saved["metrics"] == result["metrics"] and saved["task"] == "finetune"
    best = crate_mae.from_pretrained(out / "best")
    assert best.num_classes == 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r.get("event") == "epoch"] == list(range(1, 9))


def test_finetune_from_pretrained_checkpoint_with_full_recipe(image_folder, tmp_path):
    mae = crate_mae.create_model("crate_mae_tiny", decoder_depth=1, **TINY_ENCODER)
    crate_mae.save_pretrained(mae, tmp_path / "mae")
    cfg = _cfg(
        image_folder,
        tmp_path / "ft",
        f"model.checkpoint={tmp_path / 'mae'}",
        "model.global_pool=avg",
        "model.drop_path_rate=0.1",
        "optim.epochs=1",
        "aug.rand_augment=rand-m9-mstd0.5-inc1",
    )
    result = finetune(cfg)
    assert result["checkpoint_sha256"] == crate_mae.utils.file_sha256(tmp_path / "mae" / "model.safetensors")
    assert 0 <= result["metrics"]["top1"] <= 100


def test_finetune_rejects_mismatched_classes(tmp_path, make_folder):
    data = make_folder(tmp_path / "d", {"train": ["cat", "dog"], "val": ["cat", "fox"]}, per_class=2)
    cfg = _cfg(data, tmp_path / "ft", "optim.epochs=1", "optim.batch_size=2", *NO_AUG)
    with pytest.raises(ValueError, match=r"only in train split \(train\): dog; only in val split \(val\): fox"):
        finetune(cfg)


def test_vit_mae_checkpoint_fine_tunes_with_layer_decay(make_folder, tmp_path):
    mae = crate_mae.create_model(
        "vit_mae_base", decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4, **TINY_ENCODER
    )
    crate_mae.save_pretrained(mae, tmp_path / "mae")
    vit = crate_mae.load_encoder(tmp_path / "mae", num_classes=2)
    scale = _by_name(vit, param_groups_lrd(vit, 0.05, 0.5), "lr_scale")
    assert scale["pos_embed"] == scale["patch_embed.proj.weight"] == 0.5**3
    assert scale["blocks.1.mlp.fc1.weight"] == 0.5 and scale["head.weight"] == scale["norm.weight"] == 1.0
    data = make_folder(tmp_path / "d", {"train": ["a", "b"], "val": ["a", "b"]}, per_class=4)
    result = finetune(
        _cfg(data, tmp_path / "ft", f"model.checkpoint={tmp_path / 'mae'}", "optim.epochs=1", "optim.batch_size=4")
    )
    assert result["details"]["steps"] == 2 and result["dataset"]["transform"]["img_size"] == 32


def test_loaders_are_built_once_with_persistent_workers(image_folder, tmp_path, monkeypatch):
    import torch.utils.data as tud

    from crate_mae.engine import runner as engine
    from crate_mae.evaluation import finetune as ft_module

    built = []

    class Recording(tud.DataLoader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(engine, "DataLoader", Recording)
    monkeypatch.setattr(ft_module, "DataLoader", Recording)
    finetune(_cfg(image_folder, tmp_path / "ft", "optim.epochs=2", "optim.batch_size=4", "data.num_workers=1", *NO_AUG))
    assert len(built) == 2  # one train and one val loader for the whole run, not one val loader per epoch
    assert all(loader.persistent_workers for loader in built)


def test_the_checkpoint_is_read_once_and_the_optimiser_is_the_engines(image_folder, tmp_path, monkeypatch):
    """One read of model.checkpoint serves both the data config and the classifier; the optimiser is the engine's
    fused AdamW on exactly the layer-wise lr decay groups."""
    from crate_mae.engine import runner as engine
    from crate_mae.evaluation import finetune as ft_module

    mae = crate_mae.create_model("crate_mae_tiny", decoder_depth=1, **TINY_ENCODER)
    crate_mae.save_pretrained(mae, tmp_path / "mae")
    loads, sources = [], []
    real_load, real_encoder = ft_module.load_checkpoint, ft_module.load_encoder
    monkeypatch.setattr(ft_module, "load_checkpoint", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    monkeypatch.setattr(ft_module, "load_encoder", lambda src, **k: sources.append(src) or real_encoder(src, **k))
    optimisers = []
    real_runner = engine.Runner.__init__

    def spy(self, *args, **kwargs):
        real_runner(self, *args, **kwargs)
        optimisers.append((self.optimizer, self.task))

    monkeypatch.setattr(engine.Runner, "__init__", spy)
    finetune(
        _cfg(
            image_folder,
            tmp_path / "ft",
            f"model.checkpoint={tmp_path / 'mae'}",
            "optim.epochs=1",
            "optim.layer_decay=0.5",
            *NO_AUG,
        )
    )
    assert loads == [str(tmp_path / "mae")]
    assert len(sources) == 1 and isinstance(sources[0], torch.nn.Module)  # the loaded model, not the path again
    ((opt, task),) = optimisers
    want = param_groups_lrd(task.model, 0.05, 0.5, set(task.model.no_weight_decay()))
    assert all(g["fused"] for g in opt.param_groups)
    assert [(g["lr_scale"], g["weight_decay"], [id(p) for p in g["params"]]) for g in opt.param_groups] == [
        (g["lr_scale"], g["weight_decay"], [id(p) for p in g["params"]]) for g in want
    ]
