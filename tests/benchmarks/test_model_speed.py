"""CPU smoke run of benchmarks/model_speed.py at micro size: the case table, memory measured in child processes, the
resolution sweep with its plot, and the op-level profile all run and report every row (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "model_speed.py"
MICRO = [
    "--set",
    "patch_size=8",
    "depth=2",
    "decoder_depth=2",
    "embed_dim=32",
    "num_heads=2",
    "--repeats",
    "1",
    "--warmup",
    "0",
    "--threads",
    "1",
]


def _module():
    spec = importlib.util.spec_from_file_location("model_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_cases_with_memory_in_child_processes(tmp_path, capsys, one_thread):
    out = tmp_path / "rows.json"
    assert _module().main(["--cases", "tiny/32/2", "--memory", "--json", str(out), *MICRO]) == 0
    res = json.loads(out.read_text())
    rows = [(r["task"], r["contender"], r["threads"]) for r in res["rows"]]
    assert rows == [
        ("train", "official", 1),
        ("train", "ours", 1),
        ("features", "official", 1),
        ("features", "ours", 1),
    ]
    assert all(len(r["times_s"]) == 1 and r["ms"] > 0 for r in res["rows"])
    assert [(m["case"], m["task"]) for m in res["memory"]] == [("tiny/32/2", "train"), ("tiny/32/2", "features")]
    for m in res["memory"]:
        for impl in ("official", "ours"):
            assert m[impl]["rss_peak_mib"] > 0 and m[impl]["tensor_peak_mib"] > 0, m
    train = res["memory"][0]
    # a training step allocates activations and gradients; feature extraction far less
    assert train["ours"]["tensor_peak_mib"] > res["memory"][1]["ours"]["tensor_peak_mib"]
    text = capsys.readouterr().out
    assert text.count("| tiny/32/2 |") == 4 + 2  # four speed rows, two memory rows


@pytest.mark.slow
def test_resolution_sweep_writes_table_and_plot(tmp_path, capsys, one_thread):
    plot = tmp_path / "sweep.png"
    assert (
        _module().main(["--sweep", "--sizes", "32", "48", "--sweep-case", "tiny/0/1", "--plot", str(plot), *MICRO]) == 0
    )
    text = capsys.readouterr().out
    assert plot.stat().st_size > 0
    for px in (32, 48):
        assert text.count(f"| tiny/{px}/1 |") == 4 + 2


def test_profile_groups_cover_the_step(capsys, one_thread):
    assert _module().main(["--profile", "--cases", "tiny/32/1", *MICRO]) == 0
    lines = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| ") and not line.startswith("| group")
    ]
    groups = [line.split("|")[1].strip() for line in lines]
    assert groups == [
        "linear products (mm, addmm)",
        "attention (SDPA kernels; bmm, softmax)",
        "layer norm",
        "other forward/backward ops",
        "optimizer step",
        "total (wall)",
    ]
    values = {g: float(line.split("|")[2].replace(",", "")) for g, line in zip(groups, lines)}
    assert values["linear products (mm, addmm)"] > 0 and values["optimizer step"] > 0
    # the self times of the groups cannot exceed the wall time of the steps they were measured in
    assert sum(v for g, v in values.items() if g != "total (wall)") <= values["total (wall)"] * 1.05


def test_case_names_round_trip():
    module = _module()
    assert module.parse_case("base/224/4") == ("crate_mae_base", 224, 4)
    assert module.case_name("crate_mae_base", 224, 4) == "base/224/4"
    with pytest.raises(ValueError, match="SIZE/PX/BATCH"):
        module.parse_case("base-224")
