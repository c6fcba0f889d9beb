import numpy as np
import pytest
import torch

import crate_mae
from crate_mae.analysis.attention import cls_attention, crop_to_patch_multiple, mass_threshold_masks
from crate_mae.analysis.inputs import Normalization
from crate_mae.analysis.pca import official_pca, patch_features, two_stage_pca
from crate_mae.analysis.reconstruction import save_reconstructions
from crate_mae.cli import main
from crate_mae.models.base import MaskedAutoencoder
from crate_mae.models.masking import normalize_patches
from crate_mae.models.outputs import MAEOutput


def test_mass_threshold_keeps_smallest_set_with_that_mass():
    attn = torch.tensor([[0.5, 0.05], [0.3, 0.15]])
    # sorted descending 0.5, 0.3 hold 0.8 >= 0.6; 0.5 alone (0.5) is not enough
    assert mass_threshold_masks(attn, 0.6).tolist() == [[True, False], [True, False]]
    assert mass_threshold_masks(attn, 0.4).tolist() == [[True, False], [False, False]]
    assert mass_threshold_masks(attn, 1.0).all()
    with pytest.raises(ValueError, match="threshold"):
        mass_threshold_masks(attn, 0.0)


def test_crop_to_patch_multiple_is_centred():
    x = torch.arange(37 * 42).float().view(1, 1, 37, 42)
    y = crop_to_patch_multiple(x, 8)
    assert y.shape[-2:] == (32, 40)
    assert torch.equal(y, x[..., 2:34, 1:41])


def test_cls_attention_on_any_multiple_of_the_patch(tiny_model_kwargs):
    model = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    a = cls_attention(model, torch.randn(2, 3, 43, 59), layer=0)  # cropped to 40 x 56 -> 5 x 7 grid
    assert a.shape == (2, 4, 5, 7)
    assert torch.all(a.sum((-2, -1)) <= 1 + 1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # nothing changed in place


def test_two_stage_pca_finds_a_central_object():
    # 6x6 grid: central 2x2 "object" patches vs background, plus noise; the object has two parts.
    rng = np.random.default_rng(0)
    N, h, w, d = 3, 6, 6, 16
    bg, obj_a = rng.normal(size=(2, d)) * 4
    obj_b = obj_a + rng.normal(size=d)  # two parts of one object: far from the background, close to each other
    feats = np.tile(bg, (N, h, w, 1))
    feats[:, 2:4, 2:3] = obj_a
    feats[:, 2:4, 3:4] = obj_b
    feats += rng.normal(scale=0.1, size=feats.shape)
    res = two_stage_pca(torch.from_numpy(feats.reshape(N, h * w, d)).float(), (h, w))
    want = np.zeros((h, w), bool)
    want[2:4, 2:4] = True
    assert all(np.array_equal(f, want) for f in res.foreground)
    assert np.all(res.rgb[:, ~want] == 0)  # background black
    # the two object parts get different colours
    assert np.abs(res.rgb[:, 2, 2] - res.rgb[:, 2, 3]).max() > 0.5


def test_official_pca_style_shows_components_2_to_4_per_image():
    rng = np.random.default_rng(0)
    N, h, w, d = 2, 4, 4, 8
    basis = np.linalg.qr(rng.normal(size=(d, 4)))[0].T  # orthonormal directions
    coef = rng.normal(size=(N * h * w, 4)) * np.array([8.0, 4.0, 2.0, 1.0])  # four directions, decreasing variance
    feats = torch.from_numpy(coef @ basis + 0.01 * rng.normal(size=(N * h * w, d))).float().view(N, h * w, d)
    res = official_pca(feats, (h, w))
    assert res.rgb.shape == (N, h, w, 3) and res.foreground.all()
    for i in range(N):  # min-max per image: every image spans [0, 1] in each shown component
        assert np.allclose(res.rgb[i].reshape(-1, 3).min(0), 0) and np.allclose(res.rgb[i].reshape(-1, 3).max(0), 1)
        assert np.isclose(res.first[i].min(), 0) and np.isclose(res.first[i].max(), 1)
    assert np.all(np.diff(res.explained_variance_ratio) < 0)  # components 2, 3, 4 in order
    # the first RGB channel is component 2 (+- sign), i.e. the second-strongest direction
    c2 = coef[:, 1].reshape(N, h * w)
    for i in range(N):
        assert abs(np.corrcoef(res.rgb[i].reshape(-1, 3)[:, 0], c2[i])[0, 1]) > 0.99


def test_patch_features_kinds(tiny_model_kwargs):
    model = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs).eval()
    imgs = torch.randn(2, 3, 32, 32)
    f = patch_features(model, imgs, layer=-1, kind="mssa")
    blk = model.encoder.blocks[-1]
    inter = model.trace_layers(imgs)
    torch.testing.assert_close(f, blk.attn.qkv(inter.encoder[1].mssa_in)[:, 1:])
    torch.testing.assert_close(patch_features(model, imgs, 0, "output"), inter.encoder[0].z_out[:, 1:])
    with pytest.raises(ValueError, match="kind"):
        patch_features(model, imgs, kind="keys")


@pytest.mark.parametrize(
    "kind,extra",
    [
        ("reconstruct", ["--mask-ratio", "0.5", "--seed", "1"]),
        ("attention", ["--img-size", "0", "--layer", "0"]),
        ("pca", ["--features", "output"]),
        ("pca", ["--pca-style", "official", "--layer", "-2"]),
    ],
)
def test_visualize_commands_write_pngs(kind, extra, tiny_ckpt, image_dir, tmp_path):
    out = tmp_path / "out"
    rc = main(
        ["visualize", kind, "--ckpt", tiny_ckpt, "--images", image_dir, "--num-images", "2", "--out", str(out), *extra]
    )
    assert rc == 0
    png = out / f"{kind}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_visualize_errors(tiny_ckpt, tmp_path, capsys):
    assert main(["visualize", "pca", "--ckpt", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 1
    assert "nor is it a registered model name" in capsys.readouterr().err
    assert (
        main(
            [
                "visualize",
                "reconstruct",
                "--ckpt",
                tiny_ckpt,
                "--images",
                str(tmp_path / "nope"),
                "--out",
                str(tmp_path),
            ]
        )
        == 1
    )
    assert "not found" in capsys.readouterr().err


class _Oracle(torch.nn.Module):
    """Wraps a model and predicts the exact (optionally per-patch-normalised) target."""

    def __init__(self, model):
        super().__init__()
        self.model, self.norm_pix_loss, self.patch_size = model, model.norm_pix_loss, model.patch_size
        self.patchify, self.unpatchify, self.grid_size = model.patchify, model.unpatchify, model.grid_size

    def forward(self, imgs, mask_ratio=0.75, noise=None):
        out = self.model(imgs, mask_ratio=mask_ratio, noise=noise)
        target = self.model.patchify(imgs)
        pred = normalize_patches(target) if self.norm_pix_loss else target
        return MAEOutput(loss=out.loss, pred=pred, mask=out.mask, latent=out.latent)


def test_norm_pix_prediction_is_unnormalised_with_target_patch_stats(tiny_model_kwargs, tmp_path):
    imgs = torch.randn(2, 3, 32, 32)
    for norm_pix in (False, True):
        model = _Oracle(crate_mae.create_model("crate_mae_tiny", norm_pix_loss=norm_pix, **tiny_model_kwargs))
        r = MaskedAutoencoder.reconstruct(model, imgs, mask_ratio=0.75)  # the oracle stands in for the model
        torch.testing.assert_close(r["recon"], imgs, atol=1e-4, rtol=1e-4)
        visible = model.unpatchify(model.patchify(imgs) * (1 - r["mask"]).unsqueeze(-1))
        torch.testing.assert_close(r["masked"], visible)
        assert r["mask"].sum(1).tolist() == [12.0, 12.0]  # 75% of 16 patches
    png = save_reconstructions(model.model, imgs, Normalization((0.5,) * 3, (0.25,) * 3), tmp_path / "g.png")
    assert png.stat().st_size > 1000
