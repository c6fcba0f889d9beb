"""Every command that reads photos treats a corrupt file the same way (skip with one warning naming it, --strict
fails); visualize runs where the model is; analysis measures without TF32."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny import TINY, cli_words

from crate_mae.cli import main

COMMANDS = {
    "analyze": lambda ckpt, imgs, out: ["analyze", "--ckpt", ckpt, "--data", imgs, "--out", out, "--num-images", "4"],
    "visualize": lambda ckpt, imgs, out: [
        "visualize",
        "attention",
        "--ckpt",
        ckpt,
        "--images",
        imgs,
        "--out",
        out,
        "--num-images",
        "4",
    ],
    "report": lambda ckpt, imgs, out: ["report", "--ckpt", ckpt, "--images", imgs, "--out", out, "--num-images", "4"],
}


@pytest.fixture
def with_corrupt(image_dir):
    from pathlib import Path

    bad = Path(image_dir) / "class_a" / "1b_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return image_dir, str(bad)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_corrupt_image_is_skipped_with_one_warning_naming_it(
    command, with_corrupt, tiny_ckpt, tmp_path, caplog, capsys
):
    images, bad = with_corrupt
    args = COMMANDS[command](tiny_ckpt, images, str(tmp_path / "out"))
    with caplog.at_level(logging.WARNING, logger="crate_mae.data"):
        assert main([*args, "--device", "cpu"]) == 0
    warnings = [r.getMessage() for r in caplog.records if bad in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("skipping unreadable image")
    assert main([*args, "--device", "cpu", "--strict"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bad in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("kind", ["reconstruct", "attention", "pca"])
def test_visualize_puts_the_images_on_the_models_device(kind, tmp_path, image_dir, monkeypatch):
    """On `meta` (standing in for CUDA) the pictures would fail on a device mismatch if the images stayed on the
    CPU; the plotting itself is replaced, since meta tensors hold no values."""
    from crate_mae.analysis import attention, pca, reconstruction

    seen = []

    def spy(model, imgs, *args, **kwargs):
        seen.append((imgs.device.type, next(model.parameters()).device.type))

    for module, name in (
        (reconstruction, "save_reconstructions"),
        (attention, "save_attention"),
        (attention, "save_segmentation"),
        (pca, "save_pca"),
    ):
        monkeypatch.setattr(module, name, spy)
    assert (
        main(
            [
                "visualize",
                kind,
                "--ckpt",
                "crate_mae_tiny",
                *cli_words({**TINY, "decoder_depth": 1}),
                "--images",
                image_dir,
                "--device",
                "meta",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert seen == [("meta", "meta")] * (2 if kind == "attention" else 1)  # attention: + segmentation.png


def test_layerwise_measurements_run_without_tf32(tiny_model_kwargs):
    import crate_mae
    from crate_mae.analysis import measure_layers

    model = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs)
    flags = []
    model.encoder.patch_embed.register_forward_pre_hook(
        lambda m, a: flags.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
    )
    torch.backends.cudnn.allow_tf32 = True  # cuDNN's default, which GPU convolutions then use
    measure_layers(model, torch.randn(2, 3, 32, 32))
    assert flags == [(False, False)] and torch.backends.cudnn.allow_tf32 is True
