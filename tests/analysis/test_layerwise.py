import json

import numpy as np
import pytest
import torch
from tiny import TINY, cli_words, tiny_kwargs

import crate_mae
from crate_mae.analysis import LayerRecorder, coding_rate, compression_rate, measure_layers, sparsity
from crate_mae.analysis.layerwise import _project
from crate_mae.cli import main


@pytest.fixture
def model(tiny_model_kwargs):
    return crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs).eval()


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_match_trace_layers(model):
    imgs = torch.randn(3, 3, 32, 32)
    noise = torch.rand(3, 16)
    ref = model.trace_layers(imgs, mask_ratio=0.5, noise=noise)
    with LayerRecorder(model) as rec:
        model(imgs, mask_ratio=0.5, noise=noise)
        traces = rec.collect()
    assert set(traces) == {("encoder", 0), ("encoder", 1), ("decoder", 0), ("decoder", 1)}
    for (part, i), tr in traces.items():
        want = (ref.encoder if part == "encoder" else ref.decoder)[i]
        for name in ("z_in", "mssa_in", "z_half", "z_out"):
            torch.testing.assert_close(getattr(tr, name), getattr(want, name), msg=f"{part} {i} {name}")
        if part == "encoder":
            torch.testing.assert_close(tr.ista_in, want.ista_in)


def test_hooks_attach_and_detach_without_changing_outputs(model):
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    before = model(imgs, mask_ratio=0.75, noise=noise)
    assert _hook_count(model) == 0
    rec = LayerRecorder(model).attach()
    assert rec.attached and _hook_count(model) > 0
    during = model(imgs, mask_ratio=0.75, noise=noise)
    rec.detach()
    assert _hook_count(model) == 0
    after = model(imgs, mask_ratio=0.75, noise=noise)
    for out in (during, after):
        assert torch.equal(out.pred, before.pred) and torch.equal(out.loss, before.loss)
    # removed even when the forward pass fails
    with pytest.raises(ValueError):
        with LayerRecorder(model):
            model(torch.randn(1, 3, 30, 30))
    assert _hook_count(model) == 0


def test_measure_layers_equals_direct_computation(model):
    imgs = torch.randn(5, 3, 32, 32)
    stats = measure_layers(model, imgs, batch_size=2)  # batching must not matter
    inter = model.trace_layers(imgs)
    for part, traces, blocks in (
        ("encoder", inter.encoder, model.encoder.blocks),
        ("decoder", inter.decoder, model.decoder.blocks),
    ):
        for i, tr in traces.items():
            v = stats.values[(part, i)]
            attn = blocks[i].attn
            np.testing.assert_allclose(v["rc_mssa_in"], compression_rate(attn.project(tr.mssa_in)).numpy(), rtol=1e-5)
            np.testing.assert_allclose(v["rc_z_half"], compression_rate(attn.project(tr.z_half)).numpy(), rtol=1e-5)
            np.testing.assert_allclose(v["rate_out"], coding_rate(tr.z_out).numpy(), rtol=1e-5)
            np.testing.assert_allclose(v["sparsity"], sparsity(tr.z_out).numpy())
            np.testing.assert_allclose(v["l0"], 1 - v["sparsity"])
    # the encoder output passes a ReLU: a good share of exact zeros; the decoder has none
    assert stats.values[("encoder", 1)]["sparsity"].mean() > 0.1
    assert stats.values[("decoder", 1)]["sparsity"].max() == 0


def test_project_is_attn_project(model):
    x = torch.randn(2, 17, 32)
    attn = model.encoder.blocks[0].attn
    torch.testing.assert_close(_project(attn, x).float(), attn.project(x), rtol=1e-5, atol=1e-5)


def test_masked_measurement_is_seeded(model):
    imgs = torch.randn(4, 3, 32, 32)
    a = measure_layers(model, imgs, mask_ratio=0.75, seed=3)
    b = measure_layers(model, imgs, mask_ratio=0.75, seed=3)
    c = measure_layers(model, imgs, mask_ratio=0.75, seed=4)
    key = ("encoder", 0)
    np.testing.assert_array_equal(a.values[key]["rc_mssa_in"], b.values[key]["rc_mssa_in"])
    assert not np.allclose(a.values[key]["rc_mssa_in"], c.values[key]["rc_mssa_in"])


def test_analyze_command_writes_tables_and_plot(tmp_path, image_dir, capsys):
    out = tmp_path / "an"
    rc = main(
        [
            "analyze",
            "--ckpt",
            "crate_mae_tiny",
            *cli_words(TINY),
            "--data",
            image_dir,
            "--num-images",
            "3",
            "--convention",
            "raw",
            "--eps",
            "0.5",
            "--mask-ratio",
            "0.5",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0 and "encoder" in capsys.readouterr().out
    data = json.loads((out / "layerwise.json").read_text())
    assert data["meta"]["convention"] == "raw" and data["meta"]["eps"] == 0.5 and data["meta"]["mask_ratio"] == 0.5
    assert len(data["summary"]) == 4 and len(data["per_image"][0]["rc_mssa_in"]) == 3
    lines = (out / "layerwise.csv").read_text().strip().splitlines()
    assert lines[0].startswith("part,layer,rc_mssa_in_mean") and len(lines) == 5
    assert (out / "layerwise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_encoder_classifier_and_errors(tiny_encoder):
    clf = crate_mae.create_model("crate_tiny", num_classes=3, **tiny_encoder)
    stats = measure_layers(clf, torch.randn(2, 3, 32, 32))
    assert [k for k in stats.layers] == [("encoder", 0), ("encoder", 1)]
    with pytest.raises(ValueError, match="mask_ratio"):
        measure_layers(clf, torch.randn(2, 3, 32, 32), mask_ratio=0.5)
    vit = crate_mae.create_model(
        "vit_mae_base",
        **{**tiny_kwargs("vit_mae_base"), "depth": 1, "num_heads": 2, "decoder_embed_dim": 32, "decoder_depth": 1},
    )
    with pytest.raises(ValueError, match="CRATE model"):
        measure_layers(vit, torch.randn(2, 3, 32, 32))
