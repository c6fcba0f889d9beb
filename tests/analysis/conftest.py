import numpy as np
import pytest

import crate_mae


@pytest.fixture
def tiny_ckpt(tmp_path, tiny_model_kwargs):
    """A saved tiny norm-pix CRATE-MAE with pretraining's data statistics in its config."""
    model = crate_mae.create_model("crate_mae_tiny", norm_pix_loss=True, **tiny_model_kwargs)
    data = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "img_size": 32}
    return str(crate_mae.save_pretrained(model, tmp_path / "ckpt", extra={"data": data}))


@pytest.fixture
def image_dir(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    d = tmp_path / "imgs" / "class_a"
    d.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (45, 50, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return str(tmp_path / "imgs")
