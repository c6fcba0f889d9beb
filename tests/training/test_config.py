"""The pretraining config (crate_mae.training.config): defaults, overrides, every bad value named, the shipped
configs. The engine's shared parts (YAML reading, run and optimiser checks): tests/engine/test_config.py."""

import pytest
import yaml

from crate_mae.training import load_config


def test_defaults_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "crate_mae_small"},
                "data": {"path": "/x", "img_size": 32},
                "optim": {"epochs": 5, "warmup_epochs": 1},
            }
        )
    )
    cfg = load_config(path, ["optim.blr=3e-4", "optim.betas=[0.9, 0.99]", "model.overrides={patch_size: 4}"])
    assert cfg.model.name == "crate_mae_small" and cfg.optim.blr == 3e-4 and cfg.optim.betas == (0.9, 0.99)
    assert cfg.model.overrides == {"patch_size": 4} and cfg.optim.weight_decay == 0.05  # untouched default


@pytest.mark.parametrize(
    "override, named",
    [
        ("model.name=crate_tiny", "model.name"),  # encoder-only, cannot pretrain
        ("model.name=nope", "model.name"),
        ("model.mask_ratio=1.0", "model.mask_ratio"),
        ("model.overrides={embed_dimm: 3}", "model.overrides.embed_dimm"),
        ("model.overrides={img_size: 64}", "model.overrides.img_size"),
        ("data.img_size=30", "data.img_size"),  # not divisible by patch 16
        ("data.kind=tar", "data.kind"),
        ("data.std=[0.2, 0, 0.2]", "data.std"),
        ("data.mean=[0.5, 0.5]", "data.mean"),
        ("data.scale=[0.5, 0.2]", "data.scale"),
        ("data.num_workers=many", "data.num_workers"),
        ("data.cache=maybe", "data.cache"),
        ("optim.batch_size=0", "optim.batch_size"),
        ("optim.accum_iter=1.5", "optim.accum_iter"),
        ("optim.warmup_epochs=900", "optim.warmup_epochs"),
        ("optim.blr=-1", "optim.blr"),
        ("optim.betas=[0.9, 1.0]", "optim.betas"),
        ("optim.clip_grad=0", "optim.clip_grad"),
        ("run.amp=fp8", "run.amp"),
        ("run.log_every=0", "run.log_every"),
        ("run.keep_checkpoints=0", "run.keep_checkpoints"),
        ("run.compile=maybe", "run.compile"),
        ("run.grad_checkpointing=1", "run.grad_checkpointing"),
        ("data.path=5", "data.path"),
        ("model.overrides={ista_lambda: -0.1}", "model.overrides.ista_lambda"),
        ("model.overrides={ista_step_size: 0}", "model.overrides.ista_step_size"),
        ("run.knn_every_epochs=2", "run.knn_data"),  # monitoring needs a labelled folder
        ("optim.learning_rate=1", "optim.learning_rate"),  # unknown key
        ("train.epochs=1", "train"),  # unknown section
    ],
)
def test_each_bad_value_is_named(override, named):
    with pytest.raises(ValueError) as e:
        load_config(None, ["data.path=/x", "data.img_size=224", override])
    assert named in str(e.value)


def test_all_errors_reported_together():
    with pytest.raises(ValueError) as e:
        load_config(None, ["optim.batch_size=0", "run.amp=x", "model.mask_ratio=2"])
    msg = str(e.value)
    for key in ("optim.batch_size", "run.amp", "model.mask_ratio", "data.path"):
        assert key in msg


def test_shipped_configs_are_valid():
    from importlib import resources
    from pathlib import Path

    root = Path(str(resources.files("crate_mae") / "configs"))
    names = sorted(p.name for p in root.glob("pretrain_*.yaml")) + ["demo.yaml"]
    assert names == [
        "pretrain_cifar.yaml",
        "pretrain_in1k_crate_mae_base_book_recipe.yaml",
        "pretrain_in1k_crate_mae_base_mae_recipe.yaml",
        "pretrain_photos.yaml",
        "demo.yaml",
    ]
    mae = load_config(root / "pretrain_in1k_crate_mae_base_mae_recipe.yaml")
    assert (mae.model.name, mae.data.img_size, mae.model.mask_ratio) == ("crate_mae_base", 224, 0.75)
    assert (mae.optim.blr, mae.optim.weight_decay, mae.optim.betas) == (1.5e-4, 0.05, (0.9, 0.95))
    assert (mae.optim.warmup_epochs, mae.optim.epochs, mae.optim.param_groups) == (40, 800, "mae")
    assert mae.optim.batch_size * mae.optim.accum_iter * 8 == 4096
    book = load_config(root / "pretrain_in1k_crate_mae_base_book_recipe.yaml")
    assert (book.optim.blr, book.optim.weight_decay, book.data.augment) == (3e-5, 0.1, "book")
    assert (book.model.overrides["ista_step_size"], book.model.overrides["ista_lambda"]) == (1.0, 0.1)
    assert book.optim.batch_size * book.optim.accum_iter * 8 == 4096
    for name in names:
        load_config(root / name)
    photos = load_config("pretrain_photos")  # by name, as a pip user passes it
    assert (photos.data.split, photos.data.kind, photos.run.output_dir) == (None, "folder", "runs/photos")
    assert photos.run.fit_to_minutes > 0 and photos.run.min_steps > 0


def test_config_errors_reach_the_user_as_one_line_each(tmp_path, capsys):
    from crate_mae.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("run: {seed: 1\n")
    assert main(["pretrain", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err
