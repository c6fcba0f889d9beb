"""The analysis tools on every CRATE-family model: supervised CRATE (official weights included) measured at the
official vis_utils hook points, emergent-segmentation views, and the report of a classifier."""

import pytest
import torch
from official_fixtures import official_state_dict_path
from tiny import TINY, TINY_ENCODER, cli_words

import crate_mae
from crate_mae.analysis.attention import (
    cls_attention,
    mass_threshold_masks,
    segmentation_views,
    views_from_attention,
)
from crate_mae.analysis.coding_rate import compression_rate, sparsity
from crate_mae.analysis.layerwise import measure_layers
from crate_mae.analysis.predictions import class_names, is_classifier, top_predictions
from crate_mae.analysis.report import write_report
from crate_mae.cli import main

OFFICIAL = official_state_dict_path("crate_micro")
SUPERVISED = {**TINY_ENCODER, "num_classes": 3}


def family():
    """One small model of each CRATE architecture."""
    return {
        "crate_mae_tiny": crate_mae.create_model("crate_mae_tiny", **TINY).eval(),
        "crate_tiny": crate_mae.create_model("crate_tiny", **TINY_ENCODER, num_classes=3).eval(),
        "crate_supervised_tiny": crate_mae.create_model("crate_supervised_tiny", **SUPERVISED).eval(),
    }


def test_layerwise_on_official_supervised_crate_uses_the_vis_utils_hook_points():
    """Ma-Lab-Berkeley/CRATE vis_utils/crate_hook.py hooks each layer's qkv Linear (R^c of U^T LN(Z^l)) and the
    PreNorm(ISTA) output (zeros of Z^{l+1}); measure_layers must give exactly those numbers."""
    model = crate_mae.load_checkpoint(OFFICIAL, num_heads=4)
    imgs = torch.randn(4, 3, 32, 32)
    seen = {}
    hooks = [
        blk.attn.qkv.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(("qkv", i), out))
        for i, blk in enumerate(model.blocks)
    ]
    hooks += [
        blk.ista.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(("ista", i), out))
        for i, blk in enumerate(model.blocks)
    ]
    with torch.no_grad():
        model(imgs)
    for h in hooks:
        h.remove()
    stats = measure_layers(model, imgs)
    assert [k for k in stats.layers] == [("encoder", 0), ("encoder", 1), ("encoder", 2)]  # no decoder rows
    for i in range(3):
        heads = seen[("qkv", i)].double().view(4, 65, 4, 16).transpose(1, 2)  # 'b n (h d) -> b h n d'
        torch.testing.assert_close(
            torch.from_numpy(stats.values[("encoder", i)]["rc_mssa_in"]), compression_rate(heads, "official")
        )
        torch.testing.assert_close(
            torch.from_numpy(stats.values[("encoder", i)]["sparsity"]), sparsity(seen[("ista", i)]).double()
        )
    with pytest.raises(ValueError, match="mask_ratio > 0 needs a CRATE-MAE model"):
        measure_layers(model, imgs, mask_ratio=0.5)


def test_analyze_command_on_official_weights(tmp_path, capsys):
    out = tmp_path / "an"
    assert (
        main(
            [
                "analyze",
                "--ckpt",
                str(OFFICIAL),
                "num_heads=4",
                "--out",
                str(out),
                "--num-images",
                "3",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert all((out / f"layerwise.{ext}").is_file() for ext in ("json", "csv", "png"))
    rows = (out / "layerwise.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and all(r.startswith("encoder,") for r in rows[1:])


def test_segmentation_views_by_hand():
    """Two heads on a 2 x 2 grid: each keeps the one patch holding 70 % of its mass; the union holds both."""
    attn = torch.tensor([[[[0.7, 0.1], [0.1, 0.1]], [[0.05, 0.05], [0.2, 0.7]]]])
    v = views_from_attention(attn, threshold=0.6)
    assert v.masks.tolist() == [[[[True, False], [False, False]], [[False, False], [False, True]]]]
    assert v.union.tolist() == [[[True, False], [False, True]]]
    assert v.owner.tolist() == [[[0, -1], [-1, 1]]]


def test_segmentation_views_on_every_crate_model():
    """Last layer by default; per-head masks are DINO's mass masks of the cls attention, the union is their OR."""
    imgs = torch.randn(2, 3, 32, 32)
    for name, model in family().items():
        v = segmentation_views(model, imgs)
        with torch.no_grad():
            last = model.attention_maps(imgs, layer=-1)[:, :, 0, 1:].reshape(2, 4, 4, 4)
        torch.testing.assert_close(v.attn, last, msg=name)
        assert torch.equal(v.masks, mass_threshold_masks(cls_attention(model, imgs), 0.6)), name
        assert torch.equal(v.union, v.masks.any(1)) and v.union.any(), name
        assert ((v.owner >= 0) == v.union).all(), name


@pytest.mark.parametrize(
    "ckpt,words", [(str(OFFICIAL), ["num_heads=4"]), ("crate_mae_tiny", cli_words({**TINY, "decoder_depth": 1}))]
)
def test_visualize_attention_writes_the_segmentation_view(ckpt, words, tmp_path, image_dir):
    out = tmp_path / "pics"
    for kind in ("attention", "pca"):
        assert (
            main(
                [
                    "visualize",
                    kind,
                    "--ckpt",
                    ckpt,
                    *words,
                    "--images",
                    image_dir,
                    "--num-images",
                    "2",
                    "--out",
                    str(out),
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    for png in ("attention.png", "segmentation.png", "pca.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_a_classifier_shows_its_top5_predictions(tmp_path):
    model = crate_mae.create_model("crate_supervised_tiny", **SUPERVISED).eval()
    model.provenance["classes"] = ["cat", "dog", "fox"]  # what fine-tuning records with the weights
    assert is_classifier(model) and class_names(model) == (["cat", "dog", "fox"], "recorded with the weights")
    imgs = torch.randn(2, 3, 32, 32)
    page = write_report(model, tmp_path / "rep", images=imgs, num_images=2).read_text()
    assert "<h2>Predictions</h2>" in page and "Masked completion" not in page
    assert page.count("<img") == 4  # layer-wise curves, predictions, attention (+ union), PCA
    probs, idx = top_predictions(model, imgs, k=5)
    assert probs.shape == (2, 3)  # k is capped at the number of classes
    best = ["cat", "dog", "fox"][idx[0, 0]]
    assert f'<td class="">{best} ({probs[0, 0].item():.1%})</td>' in page


def test_report_command_on_official_weights(tmp_path, image_dir):
    assert (
        main(
            [
                "report",
                "--ckpt",
                str(OFFICIAL),
                "num_heads=4",
                "--out",
                str(tmp_path / "rep"),
                "--num-images",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "<h2>Predictions</h2>" in page and "class names: none recorded with the weights" in page
    assert "46,186" in page  # the official parameter count on the model card
    assert (
        main(
            [
                "report",
                "--ckpt",
                str(OFFICIAL),
                "num_heads=4",
                "--images",
                image_dir,
                "--out",
                str(tmp_path / "rep2"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    page = (tmp_path / "rep2" / "index.html").read_text()
    assert all(f'<td class="k">class_a/{i}.png</td>' in page for i in range(3))  # rows named by file and folder


def test_imagenet_names_for_a_1000_way_head_without_recorded_classes():
    model = crate_mae.create_model("crate_supervised_tiny", img_size=32, patch_size=8, depth=1)
    names, source = class_names(model)
    assert len(names) == 1000 and names[1] == "goldfish" and source.startswith("ImageNet-1K")
    assert not is_classifier(crate_mae.create_model("crate_supervised_tiny", img_size=32, depth=1, num_classes=0))
