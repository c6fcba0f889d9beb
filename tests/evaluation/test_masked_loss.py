"""Reconstruction loss with fixed masks in pixel and norm-pix units, and the mask-ratio sweep."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import TINY, TINY_ENCODER, cli_words
from torch.utils.data import DataLoader

import crate_mae
from crate_mae.cli import main
from crate_mae.data import build_dataset
from crate_mae.evaluation import mask_ratio_sweep, read_results, reconstruction_loss
from crate_mae.evaluation.features import eval_view
from crate_mae.evaluation.masked_loss import fixed_noise

MODEL = {**TINY, "decoder_depth": 1}
FAST = dict(num_workers=0, progress=False, device="cpu")  # fp32: the comparisons below are to fp32 CPU numbers


def _own_loss(model, data, ratio, seed, split="val"):
    """The model's own training loss on the split, one batch, with the same fixed noise."""
    transform, _ = eval_view(model)
    imgs = next(iter(DataLoader(build_dataset(data, split, transform), batch_size=100)))[0]
    noise = fixed_noise(len(imgs), 16, seed)
    with torch.no_grad():
        return model(imgs, mask_ratio=ratio, noise=noise).loss.item()


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_the_native_unit_is_the_models_own_loss(image_folder, norm_pix_loss):
    torch.manual_seed(0)
    model = crate_mae.create_model("crate_mae_tiny", norm_pix_loss=norm_pix_loss, **MODEL).eval()
    res = reconstruction_loss(model, image_folder, "val", mask_ratio=0.5, mask_seed=3, batch_size=7, **FAST)
    own = _own_loss(model, image_folder, 0.5, 3)
    native, other = ("loss_normpix", "loss_pixel") if norm_pix_loss else ("loss_pixel", "loss_normpix")
    assert res["metrics"][native] == pytest.approx(own, rel=1e-5)
    assert res["metrics"][other] > 0 and res["metrics"][other] != pytest.approx(own, rel=1e-3)
    assert res["task"] == "recon" and res["dataset"]["num_val"] == 20 and res["config"]["mask_seed"] == 3


def test_masks_are_fixed_per_image_whatever_the_batching(image_folder):
    kw = dict(ratios=[0.25, 0.75], overrides=MODEL, **FAST)
    a = mask_ratio_sweep("crate_mae_tiny", image_folder, batch_size=3, **kw)
    b = mask_ratio_sweep("crate_mae_tiny", image_folder, batch_size=20, **kw)
    c = mask_ratio_sweep("crate_mae_tiny", image_folder, batch_size=20, mask_seed=1, **kw)
    assert a["metrics"].keys() == {"loss_pixel@0.25", "loss_normpix@0.25", "loss_pixel@0.75", "loss_normpix@0.75"}
    for k, v in a["metrics"].items():
        assert b["metrics"][k] == pytest.approx(v, rel=1e-6)
        assert c["metrics"][k] != pytest.approx(v, rel=1e-6)  # other masks, other loss


def test_sweep_with_the_probe_on_the_masked_view(image_folder):
    res = mask_ratio_sweep(
        "crate_mae_tiny", image_folder, ratios=[0.25, 0.9], probe=True, Cs=[1.0], overrides=MODEL, **FAST
    )
    rows = res["details"]["rows"]
    assert [r["mask_ratio"] for r in rows] == [0.25, 0.9] and all(r["num_train"] == 20 for r in rows)
    # tinted classes: the cls token of a view with a quarter of the patches masked still tells them apart
    assert rows[0]["top1"] > 75 and res["metrics"]["top1@0.9"] == rows[1]["top1"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 autocast there)")
def test_on_cuda_bf16_autocast_gives_the_fp32_loss_to_bf16_precision(image_folder):
    model = crate_mae.create_model("crate_mae_tiny", **MODEL).eval()
    cpu = reconstruction_loss(model, image_folder, mask_seed=3, **FAST)
    gpu = reconstruction_loss(model, image_folder, mask_seed=3, **{**FAST, "device": "cuda"})
    assert gpu["config"]["precision"] == {"device": "cuda", "dtype": "bfloat16"}
    assert cpu["config"]["precision"] == {"device": "cpu", "dtype": "float32"}
    for k, v in cpu["metrics"].items():
        assert gpu["metrics"][k] == pytest.approx(v, rel=3e-2)


def test_bad_requests_fail_with_one_clear_error(image_folder):
    with pytest.raises(ValueError, match=r"mask ratios must be in \(0, 1\)"):
        mask_ratio_sweep("crate_mae_tiny", image_folder, ratios=[0.0], overrides=MODEL, **FAST)
    with pytest.raises(ValueError, match="without a decoder"):
        reconstruction_loss("crate_tiny", image_folder, overrides=TINY_ENCODER, **FAST)


def test_cli_recon_loss_and_mask_sweep_feed_compare(image_folder, tmp_path, capsys):
    words = cli_words(MODEL)
    rec, sweep = tmp_path / "recon.json", tmp_path / "sweep.json"
    assert (
        main(
            [
                "recon-loss",
                "--ckpt",
                "crate_mae_tiny",
                "--data",
                str(image_folder),
                "--workers",
                "0",
                "--out",
                str(rec),
                "--label",
                "tiny",
                *words,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "mask-sweep",
                "--ckpt",
                "crate_mae_tiny",
                "--data",
                str(image_folder),
                "--ratios",
                "0.5",
                "0.75",
                "--workers",
                "0",
                "--out",
                str(sweep),
                *words,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    r, s = json.loads(rec.read_text()), json.loads(sweep.read_text())
    assert r["metrics"]["loss_pixel"] == pytest.approx(s["metrics"]["loss_pixel@0.75"], rel=1e-6)
    assert f"| 0.75 | {s['metrics']['loss_pixel@0.75']:.4f} | {s['metrics']['loss_normpix@0.75']:.4f} |" in out
    assert sweep.with_suffix(".md").read_text().startswith("| mask ratio | masked loss (pixel) |")
    assert main(["compare", str(rec), str(sweep), "--metrics", "loss_pixel", "loss_pixel@0.5"]) == 0
    table = capsys.readouterr().out
    assert "| recon | tiny |" in table and "| mask_sweep |" in table
    assert len(read_results(rec)) == 1
