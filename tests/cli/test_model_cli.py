import json

import pytest
from official_fixtures import official_state_dict_path
from tiny import TINY, cli_words

from crate_mae.cli import main


def test_info_reports_both_conventions(capsys):
    assert main(["info", "crate_mae_base", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert round(info["params_official"] / 1e6, 2) == 44.64
    assert info["params_trainable"] == 43_745_280


def test_info_forward_with_overrides(capsys):
    assert (
        main(["info", "crate_mae_tiny", "img_size=32", "patch_size=8", "depth=1", "decoder_depth=1", "--forward"]) == 0
    )
    out = capsys.readouterr().out
    assert "params (official)" in out and "'masked': 12" in out


def test_models_list(capsys):
    assert main(["models", "crate_mae_*"]) == 0
    assert capsys.readouterr().out.split() == ["crate_mae_base", "crate_mae_large", "crate_mae_small", "crate_mae_tiny"]


def test_convert_official_fixture(tmp_path, capsys):
    src = official_state_dict_path("crate_mae_micro")
    assert main(["convert", str(src), str(tmp_path / "out"), "num_heads=4"]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_heads"] == 4


def test_errors_are_reported_not_raised(capsys, tmp_path):
    assert main(["info", "no_such_model"]) == 1
    assert "nor is it a registered model name" in capsys.readouterr().err
    assert main(["info", "crate_mae_tiny", "embed_dim=36", "num_heads=8"]) == 1
    assert "embed_dim=36 is not divisible by num_heads=8" in capsys.readouterr().err
    assert main(["info", "crate_mae_tiny", "oops"]) == 1


def test_every_command_names_a_model_the_same_way(tmp_path, capsys):
    """--ckpt takes a run directory, a checkpoint or a registered name (--seed for its init); KEY=VALUE overrides
    are positional anywhere on the line, in every command."""
    import crate_mae

    kwargs = {**TINY, "depth": 1, "decoder_depth": 1}
    small = cli_words(kwargs)
    run = tmp_path / "run"
    crate_mae.save_pretrained(crate_mae.create_model("crate_mae_tiny", **kwargs), run / "model")
    for ckpt in (str(run), str(run / "model"), str(run / "model" / "model.safetensors")):
        assert (
            main(
                [
                    "visualize",
                    "reconstruct",
                    "--ckpt",
                    ckpt,
                    "--out",
                    str(tmp_path / "v"),
                    "--num-images",
                    "1",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    assert (
        main(
            [
                "visualize",
                "reconstruct",
                "--ckpt",
                "crate_mae_tiny",
                "--seed",
                "3",
                "--out",
                str(tmp_path / "v"),
                *small,
                "--num-images",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert main(["info", str(run), "--json"]) == 0 and '"embed_dim": 32' in capsys.readouterr().out
    for argv in (
        ["analyze", "--model", "crate_mae_tiny"],
        ["visualize", "pca", "--set", "a=1"],
        ["features", "--override", "a=1"],
    ):
        with pytest.raises(SystemExit):
            main(argv)


def test_convert_official_supervised_crate(tmp_path, capsys):
    """`crate-mae convert` writes model/crate.py weights in our format; info and load_checkpoint read them back."""
    import torch
    from safetensors.torch import load_file

    import crate_mae

    src = official_state_dict_path("crate_micro")
    assert main(["convert", str(src), str(tmp_path / "out"), "num_heads=4", "--model-card"]) == 0
    assert "crate_supervised, 46,186 trainable parameters" in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architecture"] == "crate_supervised" and config["ista_lambda"] == 0.1
    assert config["weights_source"]["format"] == "crate_supervised_official"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "White-Box Transformers via Sparse Rate Reduction" in card and "pipeline_tag: image-classification" in card
    io = load_file(str(src.with_name("crate_micro.io.safetensors")))
    with torch.no_grad():
        torch.testing.assert_close(
            crate_mae.load_checkpoint(tmp_path / "out")(io["imgs"]), io["logits"], rtol=1e-4, atol=1e-5
        )
    assert main(["info", str(tmp_path / "out"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params_official"] == 46_186
