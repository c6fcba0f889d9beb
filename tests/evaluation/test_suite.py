"""The transfer suite on generated replicas of the four data sets: protocol, grid, outputs, resume, CLI, torchrun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _transfer_replicas import truncate, write_all, write_image_folder
from processes import free_port, repeatable_env
from tiny import TINY, cli_words

from crate_mae.cli import main
from crate_mae.evaluation import FeatureSet, compare_table, linprobe, read_results, run_suite
from crate_mae.evaluation import suite as suite_mod
from crate_mae.evaluation.linear import logistic_probe

MODEL = {**TINY, "depth": 4, "decoder_depth": 1}
WORDS = cli_words(MODEL)
CS = (0.01, 1.0)
FAST = dict(overrides=MODEL, Cs=CS, grid_Cs=CS, num_workers=0, probe_jobs=1, progress=False, max_iter=200)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = write_all(tmp_path_factory.mktemp("transfer") / "data")
    truncate(root / "flowers-102" / "jpg" / "image_00002.jpg")  # in train: skipped and counted
    truncate(root / "flowers-102" / "jpg" / "image_00015.jpg")  # in test (and in rank 1's share under torchrun)
    return root


@pytest.fixture(scope="module")
def suite(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    return out, run_suite("crate_mae_tiny", root, "cifar10,cifar100,flowers102,pets", out, **FAST)


def test_suite_json_holds_what_the_table_needs(suite):
    out, s = suite
    assert json.loads((out / "suite.json").read_text()) == json.loads(json.dumps(s))
    assert s["format"] == "crate_mae.suite/1" and len(s["checkpoint_sha256"]) == 64 and s["random_init"]
    assert s["protocol"]["view"] == {
        "img_size": 32,
        "crop_pct": 224 / 256,
        "resize": 36,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    counts = {n: (r["dataset"]["num_train"], r["dataset"]["num_test"]) for n, r in s["datasets"].items()}
    assert counts == {"cifar10": (18, 9), "cifar100": (18, 9), "flowers102": (11, 5), "pets": (12, 6)}
    flowers = s["datasets"]["flowers102"]["dataset"]
    assert [Path(f).name for f in flowers["skipped_files"]["fit"]] == ["image_00002.jpg"]
    assert [Path(f).name for f in flowers["skipped_files"]["test"]] == ["image_00015.jpg"]
    assert flowers["fit_splits"] == ["train", "val"] and flowers["test_split"] == "test"
    for r in s["datasets"].values():
        assert 0 <= r["top1"] <= r["top5"] <= 100 and r["C"] in CS
        assert r["top1_ci95"][0] <= r["top1"] <= r["top1_ci95"][1]  # the bootstrap interval over the test images
        assert r["seconds"]["total"] >= r["seconds"]["features"] > 0
        assert r["checkpoint_sha256"] == s["checkpoint_sha256"]
    # separable replicas: the paper's probe beats chance (1/3) on every data set, even from a random init
    assert all(r["top1"] > 60 for r in s["datasets"].values()), {n: r["top1"] for n, r in s["datasets"].items()}


def test_the_paper_number_is_linprobe_on_the_cached_features(suite):
    out, s = suite
    for name, r in s["datasets"].items():
        fit, test = (
            FeatureSet.load(next((out / "features").glob(f"{name}-*.{p}.safetensors"))) for p in ("fit", "test")
        )
        assert fit.meta["suite_dataset"] == name and fit.meta["checkpoint_sha256"] == s["checkpoint_sha256"]
        ref = linprobe(fit, test, Cs=CS, max_iter=200)
        assert (r["top1"], r["top5"], r["C"]) == (ref["metrics"]["top1"], ref["metrics"]["top5"], ref["details"]["C"])


def test_the_grid_is_separate_and_its_best_cell_is_chosen_on_held_out_train(suite):
    out, s = suite
    r = s["datasets"]["cifar10"]
    cells = r["grid"]["cells"]
    assert len(cells) == 2 * 2 * len(CS) and r["grid"]["last4_blocks"] == [0, 1, 2]
    best = max(cells, key=lambda c: c["holdout_top1"])
    assert r["grid"]["best"]["holdout_top1"] == best["holdout_top1"]
    fit, test = (FeatureSet.load(next((out / "features").glob(f"cifar10-*.{p}.safetensors"))) for p in ("fit", "test"))
    x = suite_mod.grid_features(fit, "mean", "last4")
    assert x.shape == (18, 4 * 32)  # final output + blocks 0, 1, 2
    cell = next(c for c in cells if (c["pool"], c["layers"], c["C"]) == ("mean", "last4", 1.0))
    ref = logistic_probe(
        x, fit.labels, suite_mod.grid_features(test, "mean", "last4"), test.labels, Cs=[1.0], max_iter=200
    )
    assert (cell["top1"], cell["top5"]) == (ref["top1"], ref["top5"])
    md = (out / "suite.md").read_text()
    head = md.splitlines()[4]
    assert "paper protocol top-1" in head and "best grid cell top-1" in head
    for model, params in suite_mod.BOOK_MODELS:
        assert f"{model} ({params}, book)" in head
    row = next(line for line in md.splitlines() if line.startswith("| CIFAR-10 (`cifar10`)"))
    assert f"| {r['top1']:.2f} | {r['grid']['best']['top1']:.2f} |" in row
    assert row.endswith("| 79.4 | 80.9 | 79.9 | 87.9 |")


def test_compare_reads_suite_json(suite, capsys):
    out, s = suite
    rows = read_results(out / "suite.json")
    assert [r["dataset"]["name"] for r in rows] == ["cifar10", "cifar100", "flowers102", "pets"]
    assert rows[0]["metrics"] == {
        "top1": s["datasets"]["cifar10"]["top1"],
        "top5": s["datasets"]["cifar10"]["top5"],
        "grid_top1": s["datasets"]["cifar10"]["grid"]["best"]["top1"],
        "grid_top5": s["datasets"]["cifar10"]["grid"]["best"]["top5"],
    }
    assert main(["compare", str(out / "suite.json"), "--metrics", "top1", "grid_top1"]) == 0
    table = capsys.readouterr().out
    assert table == compare_table(rows, ["top1", "grid_top1"]) + "\n" and "| suite |" in table and "| pets |" in table


def test_a_killed_suite_resumes_without_recomputing_finished_data_sets(root, tmp_path, monkeypatch):
    calls = {"extract": [], "probe": []}
    real_extract, real_probe = suite_mod.extract_dataset, suite_mod.probe_dataset

    def extract(*a, **k):
        calls["extract"].append(k["desc"].split()[0])
        return real_extract(*a, **k)

    def probe(fit, test, data, **k):
        calls["probe"].append(data.name)
        if data.name == "pets" and len(calls["probe"]) < 3:
            raise KeyboardInterrupt  # killed while probing the second data set
        return real_probe(fit, test, data, **k)

    monkeypatch.setattr(suite_mod, "extract_dataset", extract)
    monkeypatch.setattr(suite_mod, "probe_dataset", probe)
    kw = dict(FAST, grid=False)
    with pytest.raises(KeyboardInterrupt):
        run_suite("crate_mae_tiny", root, "cifar10,pets", tmp_path, **kw)
    assert calls == {"extract": ["cifar10", "pets"], "probe": ["cifar10", "pets"]}
    first = run_suite("crate_mae_tiny", root, "cifar10,pets", tmp_path, **kw)
    assert calls == {"extract": ["cifar10", "pets"], "probe": ["cifar10", "pets", "pets"]}  # nothing done twice
    again = run_suite("crate_mae_tiny", root, "cifar10,pets", tmp_path, **kw)
    assert calls["probe"] == ["cifar10", "pets", "pets"] and again["datasets"] == first["datasets"]
    # another C list changes the probe, not the features; another seed changes the model, so both
    run_suite("crate_mae_tiny", root, "pets", tmp_path, **{**kw, "Cs": (0.1,)})
    assert calls == {"extract": ["cifar10", "pets"], "probe": ["cifar10", "pets", "pets", "pets"]}
    run_suite("crate_mae_tiny", root, "pets", tmp_path, **{**kw, "grid": True})  # the grid from the same features
    assert calls == {"extract": ["cifar10", "pets"], "probe": ["cifar10", "pets", "pets", "pets", "pets"]}
    run_suite("crate_mae_tiny", root, "pets", tmp_path / "seed1", **{**kw, "seed": 1})
    assert calls["extract"] == ["cifar10", "pets", "pets"]


def test_cli_with_image_folders_overrides_and_seed(tmp_path, capsys):
    tree = write_image_folder(tmp_path / "flowers12", splits=("train", "val"))
    out = tmp_path / "out"
    argv = [
        "eval-suite",
        "--ckpt",
        "crate_mae_tiny",
        "--datasets",
        f"flowers12={tree}",
        "--test-split",
        "val",
        "--out",
        str(out),
        "--seed",
        "3",
        "--workers",
        "0",
        "--probe-jobs",
        "1",
        "--Cs",
        "1",
        "--grid-Cs",
        "1",
        "--max-iter",
        "100",
        *WORDS,
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    s = json.loads((out / "suite.json").read_text())
    r = s["datasets"]["flowers12"]
    assert s["label"] == "crate_mae_tiny (random init, seed 3)" and r["dataset"]["kind"] == "imagefolder"
    assert (r["dataset"]["num_train"], r["dataset"]["num_test"]) == (12, 12)
    row = next(line for line in printed.splitlines() if line.startswith("| flowers12 |"))
    assert f"| {r['top1']:.2f} |" in row and row.endswith("| – | – | – | – |")
    # a data set that is not there: one line, exit 1
    assert (
        main(
            ["eval-suite", "--ckpt", "crate_mae_tiny", "--root", str(tmp_path), "--datasets", "pets", "--out", str(out)]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data set pets: found neither torchvision's layout (oxford-iiit-pet)" in err[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 autocast there)")
def test_on_cuda_features_are_bf16_and_probe_like_fp32(root, tmp_path):
    kw = dict(FAST, grid=False)
    gpu = run_suite("crate_mae_tiny", root, "cifar10,flowers102", tmp_path / "gpu", device="cuda", **kw)
    cpu = run_suite("crate_mae_tiny", root, "cifar10,flowers102", tmp_path / "cpu", device="cpu", **kw)
    for name in ("cifar10", "flowers102"):
        g, c = gpu["datasets"][name], cpu["datasets"][name]
        assert g["features"]["precision"] == {"device": "cuda", "dtype": "bfloat16"}
        assert c["features"]["precision"] == {"device": "cpu", "dtype": "float32"}
        assert g["dataset"] == c["dataset"] and g["top1"] > 60
        fg, fc = (
            FeatureSet.load(next((tmp_path / d / "features").glob(f"{name}-*.fit.safetensors"))) for d in ("gpu", "cpu")
        )
        # bf16 autocast against fp32: 1.2-1.5 % of the norm under CPU bf16 autocast, single values off by up to 0.13
        assert (fg.cls - fc.cls).norm() / fc.cls.norm() < 0.05


@pytest.mark.slow
def test_torchrun_shards_feature_extraction(root, tmp_path):
    """2 gloo processes share out each data set's images; rank 0 gets every row in order: same features, same
    table as one process."""
    args = [
        "eval-suite",
        "--ckpt",
        "crate_mae_tiny",
        "--root",
        str(root),
        "--datasets",
        "flowers102,pets",
        "--workers",
        "0",
        "--probe-jobs",
        "1",
        "--Cs",
        *map(str, CS),
        "--no-grid",
        "--max-iter",
        "200",
        "--device",
        "cpu",
        *WORDS,
    ]
    env = repeatable_env()
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            "-m",
            "crate_mae",
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, "-m", "crate_mae", *args, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.stdout.count("| Oxford-IIIT Pets") == 1  # rank 0 alone prints the table
    a, b = (json.loads((tmp_path / d / "suite.json").read_text()) for d in ("one", "two"))
    for name in ("flowers102", "pets"):
        assert b["datasets"][name]["features"]["world_size"] == 2
        assert b["datasets"][name]["dataset"] == a["datasets"][name]["dataset"]  # skipped files of both ranks
        for part in ("fit", "test"):
            fa, fb = (
                FeatureSet.load(next((tmp_path / d / "features").glob(f"{name}-*.{part}.safetensors")))
                for d in ("one", "two")
            )
            assert torch.equal(fa.labels, fb.labels)
            torch.testing.assert_close(fb.cls, fa.cls, rtol=1e-4, atol=1e-5)  # two processes: not bit for bit
    assert len(b["datasets"]["flowers102"]["dataset"]["skipped_files"]["test"]) == 1
