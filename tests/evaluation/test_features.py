"""Feature extraction: determinism, the file format, provenance checks, official weights."""

from __future__ import annotations

import pytest
import torch
from official_fixtures import official_state_dict_path

import crate_mae
from crate_mae.evaluation import FeatureSet, check_compatible, compute_features, extract_features, knn, linprobe


def _features(source, data, split, tiny_encoder, **kw):
    return compute_features(
        source,
        data,
        split,
        num_workers=0,
        progress=False,
        batch_size=7,
        model_overrides={**tiny_encoder, "decoder_depth": 1},
        **kw,
    )


def test_features_are_deterministic_and_round_trip(image_folder, tmp_path, tiny_encoder):
    a = _features("crate_mae_tiny", image_folder, "train", tiny_encoder, layers=[0, -1])
    b = _features("crate_mae_tiny", image_folder, "train", tiny_encoder, layers=[0, -1])
    assert a.cls.shape == (20, 32) and a.mean.shape == (20, 32) and a.classes == ["cat", "dog"]
    assert a.labels.tolist() == [0] * 10 + [1] * 10
    torch.testing.assert_close(a.cls, b.cls, rtol=0, atol=0)  # batched, unmasked, eval mode: bit-identical
    assert a.checkpoint_sha256 == b.checkpoint_sha256 and sorted(a.layers) == [0, 1]
    a.save(tmp_path / "f.safetensors")
    c = FeatureSet.load(tmp_path / "f.safetensors")
    torch.testing.assert_close(c.get("mean", 1), a.layers[1]["mean"])
    assert c.classes == a.classes and c.meta["transform"]["crop_pct"] == 1.0
    with pytest.raises(ValueError, match="layer 3 is not in this feature file"):
        c.get("cls", 3)


def test_an_unreadable_image_is_left_out_once_and_listed(image_folder, tiny_encoder):
    good = _features("crate_mae_tiny", image_folder, "train", tiny_encoder)
    bad = image_folder / "train" / "cat" / "3.png"
    bad.write_bytes(bad.read_bytes()[:60])
    fs = _features("crate_mae_tiny", image_folder, "train", tiny_encoder)
    assert len(fs) == 19 and fs.meta["num_images"] == 19 and fs.meta["skipped_files"] == [str(bad)]
    # the other 19 rows are those images' features: no neighbour stands in for the unreadable one
    keep = [i for i in range(20) if i != 3]
    torch.testing.assert_close(fs.cls, good.cls[keep], rtol=0, atol=0)
    assert fs.labels.tolist() == good.labels[keep].tolist()


def test_pooling_and_layers_match_the_model(tiny_encoder):
    model = crate_mae.create_model("crate_mae_tiny", decoder_depth=1, **tiny_encoder).eval()
    imgs = torch.randn(5, 3, 32, 32)
    out = extract_features(model, [(imgs, torch.arange(5))], layers=[0], device="cpu", progress=False)
    z = model.forward_features(imgs)
    torch.testing.assert_close(out["cls"], z[:, 0])
    torch.testing.assert_close(out["mean"], z[:, 1:].mean(1))
    inter = model.trace_layers(imgs, mask_ratio=0.0, encoder_layers=[0])
    torch.testing.assert_close(out["layers"][0]["cls"], inter.encoder[0].z_out[:, 0])


def test_vit_mae_and_encoder_classifiers_give_features(tiny_encoder):
    for model in (
        crate_mae.create_model(
            "vit_mae_base", decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4, **tiny_encoder
        ),
        crate_mae.create_model("crate_tiny", num_classes=3, **tiny_encoder),
    ):
        out = extract_features(
            model, [(torch.randn(2, 3, 32, 32), torch.zeros(2))], layers=[-1], device="cpu", progress=False
        )
        assert out["cls"].shape == (2, 32) and out["layers"][1]["mean"].shape == (2, 32)


def test_features_of_another_checkpoint_are_refused(image_folder, tiny_encoder):
    train = _features("crate_mae_tiny", image_folder, "train", tiny_encoder, seed=0)
    val = _features("crate_mae_tiny", image_folder, "val", tiny_encoder, seed=1)
    with pytest.raises(ValueError, match="different checkpoints"):
        check_compatible(train, val)
    val.meta["checkpoint_sha256"] = train.checkpoint_sha256
    val.classes = ["cat", "wolf"]
    with pytest.raises(ValueError, match="only in val features: wolf"):
        linprobe(train, val)


def test_probes_on_an_official_crate_mae_state_dict(make_folder, tmp_path):
    path = official_state_dict_path("crate_mae_micro")
    model = crate_mae.load_checkpoint(path, num_heads=4)
    data = make_folder(tmp_path / "d", {"train": ["a", "b", "c"], "val": ["a", "b", "c"]}, per_class=8)
    from crate_mae.io import checkpoint_sha256

    sha = checkpoint_sha256(path)
    train = compute_features(model, data, "train", fingerprint=sha, num_workers=0, progress=False)
    val = compute_features(model, data, "val", fingerprint=sha, num_workers=0, progress=False)
    assert train.cls.shape == (24, 64) and torch.isfinite(train.cls).all()
    lin = linprobe(train, val, Cs=(0.1, 1.0))
    nn_ = knn(train, val, ks=(5,))
    assert lin["checkpoint_sha256"] == sha and nn_["metrics"]["k5_top1"] == nn_["metrics"]["top1"]
    # The three colour-tinted classes are easy even for micro random-ish weights: well above chance (33 %).
    assert lin["metrics"]["top1"] > 60


def test_features_record_their_precision_and_refuse_to_mix(image_folder, tiny_encoder):
    a = _features("crate_mae_tiny", image_folder, "train", tiny_encoder, limit=4, device="cpu")
    assert a.meta["precision"] == {"device": "cpu", "dtype": "float32"}
    b = FeatureSet(
        cls=a.cls,
        mean=a.mean,
        labels=a.labels,
        classes=a.classes,
        meta={**a.meta, "precision": {"device": "cuda", "dtype": "bfloat16"}},
    )
    with pytest.raises(
        ValueError, match="computed differently: train .* on cpu in float32, val .* on cuda in bfloat16"
    ):
        check_compatible(a, b)
    check_compatible(a, a)
