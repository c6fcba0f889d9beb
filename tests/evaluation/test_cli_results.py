"""`crate-mae features | linprobe | knn | compare` end to end, and the result-file helpers."""

from __future__ import annotations

import json

import pytest
from tiny import TINY, cli_words

from crate_mae.cli import main
from crate_mae.evaluation import compare_table, make_result, read_result


def _result(task, metrics, label=None):
    return make_result(
        task,
        metrics,
        checkpoint="runs/x/model",
        checkpoint_sha256="ab" * 32,
        dataset={"path": "/data/cifar10-dev", "val": "val"},
        config={"label": label},
    )


def test_compare_table_layout():
    table = compare_table(
        [
            _result("linprobe", {"top1": 71.234, "top5": 98.0}, label="CRATE-MAE"),
            _result("knn", {"top1": 60.0, "k20_top1": 59.5}),
        ]
    )
    lines = table.splitlines()
    assert lines[0] == "| task | checkpoint | sha256 | dataset | top1 | top5 | k20_top1 |"
    assert lines[1] == "|---|---|---|---|---:|---:|---:|"
    assert lines[2] == "| linprobe | CRATE-MAE | abababababab | cifar10-dev | 71.23 | 98.00 | – |"
    assert lines[3] == "| knn | runs/x/model | abababababab | cifar10-dev | 60.00 | – | 59.50 |"


def test_read_result_rejects_other_json(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"top1": 3}))
    with pytest.raises(ValueError, match="not a crate-mae result file"):
        read_result(tmp_path / "x.json")


def test_cli_features_probe_compare(image_folder, tmp_path, capsys):
    over = cli_words({**TINY, "decoder_depth": 1})
    common = ["--ckpt", "crate_mae_tiny", "--data", str(image_folder), "--workers", "0", *over]
    for split in ("train", "val"):
        assert main(["features", *common, "--split", split, "--out", str(tmp_path / f"{split}.safetensors")]) == 0
    feats = [
        "--train-features",
        str(tmp_path / "train.safetensors"),
        "--val-features",
        str(tmp_path / "val.safetensors"),
    ]
    assert (
        main(
            [
                "linprobe",
                *feats,
                "--protocol",
                "both",
                "--epochs",
                "2",
                "--Cs",
                "0.1",
                "1",
                "--out",
                str(tmp_path / "lin.json"),
            ]
        )
        == 0
    )
    assert main(["knn", *feats, "--k", "5", "10", "--out", str(tmp_path / "knn.json")]) == 0
    lin = read_result(tmp_path / "lin_sklearn.json")
    assert lin["task"] == "linprobe" and lin["config"]["protocol"] == "sklearn"
    assert lin["dataset"]["num_train"] == 20 and lin["dataset"]["num_classes"] == 2
    assert read_result(tmp_path / "lin_mae.json")["config"]["optimizer"] == "lars"
    assert set(read_result(tmp_path / "knn.json")["metrics"]) >= {"top1", "k5_top1", "k10_top5"}
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "lin_sklearn.json"), str(tmp_path / "knn.json"), "--metrics", "top1"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 4 and "| linprobe |" in out and "| knn |" in out
    # features of one model, --ckpt naming another: refused with both fingerprints
    code = main(["knn", *feats, "--ckpt", "crate_mae_tiny", "--seed", "3"])
    assert code == 1 and "extracted from another checkpoint" in capsys.readouterr().err


def test_cli_linprobe_needs_a_source(capsys):
    assert main(["linprobe"]) == 1
    assert "--train-features and --val-features, or --ckpt and --data" in capsys.readouterr().err
