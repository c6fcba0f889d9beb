"""RandAugment at the magnitude where posterize keeps 0 bits (Pillow >= 13 rejects it inside timm)."""

import random

from PIL import Image

from crate_mae.evaluation.finetune import train_transform
from crate_mae.evaluation.finetune_config import FinetuneAugConfig


def test_rand_augment_survives_zero_bit_posterize():
    aug = FinetuneAugConfig(rand_augment="rand-n1-m10-mstd0-inc1", reprob=0.0)
    transform = train_transform(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), aug)
    ops = [op for t in transform.transforms for op in getattr(t, "ops", ())]
    posterize = [op for op in ops if op.name == "PosterizeIncreasing"]
    assert posterize, "the RandAugment string should include the increasing posterize op"
    img = Image.new("RGB", (32, 32), (200, 120, 40))
    for op in posterize:
        op.prob = 1.0
        out = op(img)  # magnitude 10 -> keep 0 bits: a black image, as Pillow < 13 made it
        assert out.getextrema() == ((0, 0), (0, 0), (0, 0))
    random.seed(0)
    for _ in range(50):
        assert transform(img).shape == (3, 32, 32)
