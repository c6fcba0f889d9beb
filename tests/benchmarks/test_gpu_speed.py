"""CI smoke run of benchmarks/gpu_speed.py on the CPU at micro size: every row runs and is in the one table, and a
configuration that fails is reported in its row while the others still run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_speed.py"
MODES = [
    ("official", "fp32", False),
    ("official", "bf16", False),
    ("ours", "fp32", False),
    ("ours", "bf16", False),
    ("ours", "bf16", True),
]


def _run(tmp_path, *argv: str) -> tuple[int, list[dict]]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # micro models: threads cost more than they give on a shared CI machine
    try:
        spec = importlib.util.spec_from_file_location("gpu_speed", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        rc = module.main(["--micro", "--device", "cpu", "--json", str(tmp_path / "rows.json"), *argv])
    finally:
        torch.set_num_threads(threads)
    return rc, json.loads((tmp_path / "rows.json").read_text())["rows"]


@pytest.mark.slow
def test_gpu_speed_runs_every_row_on_cpu_at_micro_size(tmp_path, capsys):
    rc, rows = _run(tmp_path)
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| crate_mae")]
    expected = [
        (m, t, *mode) for m in ("crate_mae_base", "crate_mae_tiny") for t in ("pretrain", "features") for mode in MODES
    ]
    assert [(r["model"].split()[0], r["task"], r["impl"], r["precision"], r["compiled"]) for r in rows] == expected
    assert len(table) == len(expected) and rc == 0
    for row, line in zip(rows, table):
        assert row["status"] == "ok" and row["img_s"] > 0 and row["flops_img"] > 0, row
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1:5] == [row["task"], row["impl"], row["precision"], "yes" if row["compiled"] else "no"]
        assert cells[7] and cells[-1] == "ok"  # the ratio to official fp32 is filled in
    # ours does fewer FLOPs than the official computation of the same function (one-product ISTA)
    flops = {(r["model"], r["task"], r["impl"]): r["flops_img"] for r in rows}
    assert all(flops[m, t, "ours"] < flops[m, t, "official"] for m, t, _ in flops)


@pytest.mark.slow
def test_a_failing_configuration_is_reported_in_its_row(tmp_path, capsys):
    rc, rows = _run(tmp_path, "--models", "crate_mae_tiny", "--compile-backend", "no_such_backend")
    status = {(r["task"], r["impl"], r["precision"], r["compiled"]): r["status"] for r in rows}
    assert len(status) == 10 and rc == 1
    for (task, impl, precision, compiled), s in status.items():
        assert s.startswith("FAIL") if compiled else s == "ok", (task, impl, precision, compiled, s)
    assert "no_such_backend" in status["pretrain", "ours", "bf16", True]
    assert capsys.readouterr().out.count("| FAIL") == 2


@pytest.mark.slow
def test_gpu_speed_resolution_sweep_rows_on_cpu_at_micro_size(tmp_path, capsys):
    """The sweep (issue 24): every size, task and mode has a row in the JSON and in the second table, ratios to
    official fp32 at the same size filled in."""
    rc, _ = _run(tmp_path, "--models", "crate_mae_tiny", "--budget-s", "0", "--sweep-sizes", "32", "48")
    sweep = json.loads((tmp_path / "rows.json").read_text())["sweep"]
    assert rc == 0
    assert [(r["px"], r["task"], r["impl"], r["precision"]) for r in sweep] == [
        (px, t, impl, prec)
        for px in (32, 48)
        for t in ("pretrain", "features")
        for impl, prec in (("official", "fp32"), ("ours", "fp32"), ("ours", "bf16"))
    ]
    assert all(r["status"] == "ok" and r["img_s"] > 0 for r in sweep)
    assert [r["tokens"] for r in sweep[::6]] == [17, 37]  # cls + (px / 8)^2 patches at micro size
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| 32 |", "| 48 |"))]
    assert len(lines) == len(sweep)
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[8].endswith("x") and cells[-1] == "ok"
