"""Result files: one JSON per evaluation run, a one-line summary, and a Markdown table of several runs.

Schema (``crate_mae.result/1``)::

    {"format": "crate_mae.result/1", "task": "linprobe" | "knn" | "finetune",
     "metrics": {"top1": 71.3, "top5": 97.9, ...},        # flat name -> number; what `compare` tabulates
     "checkpoint": "runs/x/model", "checkpoint_sha256": "ab12...",
     "dataset": {"path": ..., "train": ..., "val": ..., "num_train": ..., "num_val": ..., "num_classes": ...},
     "config": {...},                                    # every setting that produced the numbers
     "details": {...},                                   # e.g. the C sweep, per-k accuracies
     "crate_mae_version": "0.1.0", "created": "2026-01-01T12:00:00+00:00"}

A transfer suite (``crate-mae eval-suite``, ``crate_mae.suite/1``) holds one such result per data set;
:func:`read_results` reads either kind as a list of results.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._version import __version__
from ..utils import atomic_write

FORMAT = "crate_mae.result/1"
SUITE_FORMAT = "crate_mae.suite/1"


def make_result(
    task: str,
    metrics: Mapping[str, float],
    *,
    checkpoint: str | None,
    checkpoint_sha256: str | None,
    dataset: Mapping[str, Any],
    config: Mapping[str, Any],
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "task": task,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "checkpoint": checkpoint,
        "checkpoint_sha256": checkpoint_sha256,
        "dataset": dict(dataset),
        "config": dict(config),
        "details": dict(details or {}),
        "crate_mae_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_result(result: Mapping[str, Any], path: str | os.PathLike) -> Path:
    text = json.dumps(result, indent=2, default=_default) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result file not found: {path}")
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(result, dict) or result.get("format") != FORMAT or "metrics" not in result:
        raise ValueError(f"{path} is not a crate-mae result file (expected format {FORMAT!r} with 'metrics')")
    result.setdefault("path", str(path))
    return result


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The results in a result file (one) or a ``suite.json`` (one per data set, see :func:`suite_rows`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if isinstance(data, dict) and data.get("format") == SUITE_FORMAT:
        return suite_rows(data, str(path))
    return [read_result(path)]


def suite_rows(suite: Mapping[str, Any], path: str | None = None) -> list[dict[str, Any]]:
    """One result per data set of a suite, task ``suite``: metrics ``top1``, ``top5`` (paper protocol) and, when
    the grid ran, ``grid_top1``, ``grid_top5`` (its best cell)."""
    if not suite.get("datasets"):
        raise ValueError(f"{path or 'suite'} holds no data set results")
    rows = []
    for name, r in suite["datasets"].items():
        metrics = {"top1": r["top1"], "top5": r["top5"]}
        if "grid" in r:
            metrics.update(grid_top1=r["grid"]["best"]["top1"], grid_top5=r["grid"]["best"]["top5"])
        row = make_result(
            "suite",
            metrics,
            checkpoint=suite.get("checkpoint"),
            checkpoint_sha256=suite.get("checkpoint_sha256"),
            dataset={**r["dataset"], "name": name},
            config={"label": suite.get("label")},
            details={"C": r.get("C"), "grid_best": r.get("grid", {}).get("best")},
        )
        row["created"] = suite.get("created", row["created"])
        if path:
            row["path"] = path
        rows.append(row)
    return rows


def summary_line(result: Mapping[str, Any]) -> str:
    """``linprobe  runs/x/model (sha ab12cd34ef56) on cifar10-dev val: top1 71.30  top5 97.90``"""
    ds = result.get("dataset", {})
    where = Path(str(ds.get("path", "?"))).name + (f" {ds['val']}" if ds.get("val") else "")
    metrics = "  ".join(f"{k} {_fmt(v)}" for k, v in result["metrics"].items())
    sha = (result.get("checkpoint_sha256") or "")[:12]
    return f"{result['task']}  {result.get('checkpoint')} (sha {sha}) on {where}: {metrics}"


def compare_table(results: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None) -> str:
    """A Markdown table, one row per result: task, checkpoint, sha, dataset, then the metric columns (``metrics``,
    or every metric name in order of first appearance); a metric a run lacks shows as an en dash."""
    if not results:
        raise ValueError("no results to compare")
    if metrics is None:
        metrics = list(dict.fromkeys(k for r in results for k in r["metrics"]))
    header = ["task", "checkpoint", "sha256", "dataset", *metrics]
    rows = []
    for r in results:
        ds = r.get("dataset", {})
        rows.append(
            [
                r.get("task", "?"),
                _label(r),
                (r.get("checkpoint_sha256") or "")[:12],
                ds.get("name") or Path(str(ds.get("path", "?"))).name,
                *(_fmt(r["metrics"].get(m)) for m in metrics),
            ]
        )
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 4 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _label(r: Mapping[str, Any]) -> str:
    label = r.get("config", {}).get("label")
    return label or str(r.get("checkpoint"))


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def _default(o: Any):
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"{o!r} is not JSON-serialisable")
