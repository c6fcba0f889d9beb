"""Supervised CRATE in the evaluation commands: trained from random init on a labelled folder with `crate-mae
finetune NAME`, fine-tuned from official weights, and probed (features, linprobe, knn)."""

from __future__ import annotations

import json

import pytest
import torch
from official_fixtures import official_state_dict_path
from safetensors.torch import load_file
from timm.layers import DropPath
from tiny import TINY_ENCODER, model_overrides

import crate_mae
from crate_mae.cli import main
from crate_mae.evaluation import FeatureSet
from crate_mae.models import SupervisedCrate

OFFICIAL = official_state_dict_path("crate_micro")
NO_AUG = [
    "aug.rand_augment=null",
    "aug.mixup=0",
    "aug.cutmix=0",
    "aug.smoothing=0",
    "aug.reprob=0",
    "aug.hflip=0",
    "aug.scale=[1, 1]",
]


def test_finetune_trains_a_registered_supervised_crate_from_random_init(image_folder, tmp_path, capsys):
    """A user's labelled folder, a registered name, no checkpoint: the model starts at random init and learns the
    two classes (val = the training images, which a working run must fit)."""
    out = tmp_path / "scratch"
    assert (
        main(
            [
                "finetune",
                "--ckpt",
                "crate_supervised_tiny",
                "--data",
                str(image_folder),
                "--output-dir",
                str(out),
                f"model.overrides={model_overrides(TINY_ENCODER)}",
                "data.img_size=32",
                "data.num_workers=0",
                "data.val_split=train",
                "run.progress=false",
                "model.drop_path_rate=0",
                "optim.batch_size=4",
                "optim.epochs=6",
                "optim.warmup_epochs=1",
                "optim.lr=0.003",
                "optim.layer_decay=1.0",
                "optim.weight_decay=0",
                *NO_AUG,
            ]
        )
        == 0
    )
    result = json.loads((out / "result.json").read_text())
    assert result["checkpoint"] == "crate_supervised_tiny (scratch)" and result["checkpoint_sha256"] is None
    losses = [h["loss"] for h in result["details"]["history"]]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.15 and result["metrics"]["top1"] == 100.0
    best = crate_mae.load_checkpoint(out / "best")
    assert isinstance(best, SupervisedCrate) and best.config.num_classes == 2
    assert best.provenance["classes"] == ["cat", "dog"] and best.data_config["img_size"] == 32
    assert (best.config.embed_dim, best.config.depth, best.config.patch_size) == (32, 2, 8)
    # the network it started from (seed run.seed = 0, as the run builds it) does not know the classes
    torch.manual_seed(0)
    init = crate_mae.create_model("crate_supervised_tiny", num_classes=2, **TINY_ENCODER).eval()
    from crate_mae.data import build_dataset, eval_transform

    dc = best.data_config
    ds = build_dataset(image_folder, "train", eval_transform(32, 1.0, dc["mean"], dc["std"]))
    imgs, labels = torch.stack([x for x, _ in ds]), torch.tensor([y for _, y in ds])
    with torch.no_grad():
        assert torch.nn.functional.cross_entropy(init(imgs), labels) > 0.5
        assert torch.nn.functional.cross_entropy(best(imgs), labels) < 0.15


def test_finetune_from_official_weights_keeps_the_trunk_and_renews_the_head(image_folder, tmp_path):
    out = tmp_path / "ft"
    assert (
        main(
            [
                "finetune",
                "--ckpt",
                str(OFFICIAL),
                "--data",
                str(image_folder),
                "--output-dir",
                str(out),
                'model.overrides={"num_heads": 4}',
                "data.num_workers=0",
                "run.progress=false",
                "run.max_steps=2",
                "optim.batch_size=4",
                "optim.epochs=1",
                "optim.warmup_epochs=0",
                *NO_AUG,
            ]
        )
        == 0
    )
    result = json.loads((out / "result.json").read_text())
    assert result["checkpoint"] == str(OFFICIAL) and result["dataset"]["num_classes"] == 2
    assert result["config"]["data"]["img_size"] is None  # size and normalisation came from the checkpoint


def test_load_encoder_renews_the_head_and_applies_drop_path():
    official = load_file(str(OFFICIAL))
    clf = crate_mae.load_encoder(OFFICIAL, num_classes=2, num_heads=4, drop_path_rate=0.2)
    assert isinstance(clf, SupervisedCrate) and clf.head.out_features == 2
    assert torch.equal(clf.fc_norm.weight, official["mlp_head.0.weight"])  # the head's norm is part of the trunk
    assert isinstance(clf.blocks[-1].drop_path, DropPath) and clf.blocks[-1].drop_path.drop_prob == pytest.approx(0.2)
    assert clf.config.drop_path_rate == 0.2 and clf.config.num_classes == 2


def test_features_linprobe_and_knn_on_official_weights(image_folder, tmp_path, capsys):
    feats = tmp_path / "train.safetensors"
    assert (
        main(
            [
                "features",
                "--ckpt",
                str(OFFICIAL),
                "num_heads=4",
                "--data",
                str(image_folder),
                "--split",
                "train",
                "--out",
                str(feats),
                "--workers",
                "0",
                "--layers",
                "0",
            ]
        )
        == 0
    )
    fs = FeatureSet.load(feats)
    assert fs.cls.shape == (20, 64) and fs.meta["architecture"] == "crate_supervised" and sorted(fs.layers) == [0]
    model = crate_mae.load_checkpoint(OFFICIAL, num_heads=4)
    img = fs.meta["transform"]
    from crate_mae.data import build_dataset, eval_transform

    ds = build_dataset(image_folder, "train", eval_transform(img["img_size"], img["crop_pct"], img["mean"], img["std"]))
    with torch.no_grad():
        z = model.forward_features(torch.stack([ds[0][0], ds[19][0]]))
    torch.testing.assert_close(fs.cls[[0, 19]], z[:, 0])  # the cls token of the last layer (no final norm)
    for cmd, extra in (("linprobe", ["--protocol", "sklearn"]), ("knn", ["--k", "5"])):
        out = tmp_path / f"{cmd}.json"
        assert (
            main(
                [
                    cmd,
                    "--ckpt",
                    str(OFFICIAL),
                    "num_heads=4",
                    "--data",
                    str(image_folder),
                    "--workers",
                    "0",
                    "--out",
                    str(out),
                    *extra,
                ]
            )
            == 0
        )
        result = json.loads(out.read_text())
        assert result["task"] == cmd and 0 <= result["metrics"]["top1"] <= 100
