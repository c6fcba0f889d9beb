from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from crate_mae.data import IMAGENET_MEAN, IMAGENET_STD, denormalize, eval_transform, pretrain_transform


def _photo(w: int = 50, h: int = 40, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_pretrain_transform_shape_dtype_and_torch_seeded():
    t = pretrain_transform(24)
    img = _photo()
    torch.manual_seed(3)
    a = t(img)
    torch.manual_seed(3)
    b = t(img)
    torch.manual_seed(4)
    c = t(img)
    assert a.shape == (3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b)  # augmentation follows the torch generator (SeededSamples relies on this)
    assert not torch.equal(a, c)


def test_pretrain_transform_full_scale_no_flip_is_plain_normalisation():
    """scale=(1, 1) on a square image: no crop of area 1 with ratio != 1 fits, so RandomResizedCrop falls back to
    the whole image; at the same size that is the identity, leaving exactly ToTensor + Normalize."""
    img = _photo(32, 32)
    out = pretrain_transform(32, scale=(1.0, 1.0), hflip=False)(img)
    ref = (
        torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    ) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_eval_transform_resizes_shorter_side_then_centre_crops():
    ident = dict(mean=(0, 0, 0), std=(1, 1, 1))
    # 64 x 32, white left/right quarters, black centre half: the shorter side stays 32, the black centre is cropped.
    a = np.full((32, 64, 3), 255, np.uint8)
    a[:, 16:48] = 0
    out = eval_transform(32, crop_pct=1.0, **ident)(Image.fromarray(a))
    assert out.shape == (3, 32, 32) and out.max() < 0.02
    # 32 x 32 with an 8-pixel white frame: crop_pct 1 at 16 px keeps the whole (shrunk) frame, crop_pct 0.5 at
    # 16 px resizes to 16 / 0.5 = 32 (unchanged) and cuts out exactly the black 16 x 16 centre.
    b = np.full((32, 32, 3), 255, np.uint8)
    b[8:24, 8:24] = 0
    assert eval_transform(16, crop_pct=1.0, **ident)(Image.fromarray(b)).max() > 0.9
    out = eval_transform(16, crop_pct=0.5, **ident)(Image.fromarray(b))
    assert out.shape == (3, 16, 16) and out.abs().max() < 1e-6


def test_eval_transform_default_crop_pct_and_normalisation():
    img = Image.new("RGB", (300, 260), color=(124, 116, 104))  # ~ ImageNet mean colour
    out = eval_transform(224)(img)
    assert out.shape == (3, 224, 224)
    expected = (torch.tensor([124, 116, 104]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out.mean(dim=(1, 2)), expected, atol=1e-4, rtol=0)


def test_denormalize_inverts_normalize_and_clamps():
    img = _photo(16, 16)
    x = eval_transform(16, crop_pct=1.0)(img)
    back = denormalize(x)
    torch.testing.assert_close(back, torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255, atol=1e-5, rtol=0)
    batch = denormalize(torch.stack([x, x * 100]), IMAGENET_MEAN, IMAGENET_STD)
    assert batch.shape == (2, 3, 16, 16) and batch.min() >= 0 and batch.max() <= 1


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: pretrain_transform(0), "img_size"),
        (lambda: pretrain_transform(32, scale=(0.5, 0.2)), "scale"),
        (lambda: eval_transform(32, crop_pct=1.5), "crop_pct"),
        (lambda: eval_transform(32, std=(1, 0, 1)), "std"),
        (lambda: denormalize(torch.zeros(4, 16, 16, 1)), "channels"),
        (lambda: denormalize(torch.zeros(16, 16)), "shape"),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_zero_bit_posterize_is_a_black_image_and_timms_op_is_replaced():
    """timm's RandAugment posterize at 0 bits, which Pillow >= 13 rejects, gives Pillow < 13's black image; other
    bit counts are Pillow's posterize (8: unchanged)."""
    from PIL import Image, ImageOps
    from timm.data import create_transform

    from crate_mae.data import fix_rand_augment_posterize, posterize_zero_bits

    img = Image.new("RGB", (8, 8), (200, 120, 40))
    assert posterize_zero_bits(img, 0).getextrema() == ((0, 0), (0, 0), (0, 0))
    assert posterize_zero_bits(img, 8) is img
    assert posterize_zero_bits(img, 3).tobytes() == ImageOps.posterize(img, 3).tobytes()
    transform = create_transform(32, is_training=True, auto_augment="rand-n1-m10-mstd0-inc1")
    assert fix_rand_augment_posterize(transform) is transform
    ops = [op for t in transform.transforms for op in getattr(t, "ops", ()) if op.name == "PosterizeIncreasing"]
    assert ops and all(op.aug_fn is posterize_zero_bits for op in ops)
