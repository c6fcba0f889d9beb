"""Probe entry points: cached features in, a result dict (:mod:`.results`) out.

from crate_mae.evaluation import FeatureSet, compute_features, linprobe, knn
train = compute_features("runs/cifar/model", "data/cifar10", "train")
val = compute_features("runs/cifar/model", "data/cifar10", "val")
print(linprobe(train, val)["metrics"])          # paper protocol (scikit-learn)
print(linprobe(train, val, protocol="mae")["metrics"])
print(knn(train, val)["metrics"])
"""

from __future__ import annotations

from typing import Any, Sequence

from .features import FeatureSet, check_compatible
from .knn import DEFAULT_KS, knn_scores
from .linear import DEFAULT_CS, logistic_probe, train_linear_head
from .metrics import top1_interval, topk_accuracy
from .results import make_result

PROTOCOLS = ("sklearn", "mae")


def _dataset_info(train: FeatureSet, val: FeatureSet) -> dict[str, Any]:
    return {
        "path": train.meta.get("dataset"),
        "train": train.meta.get("split"),
        "val": val.meta.get("split"),
        "num_train": len(train),
        "num_val": len(val),
        "num_classes": len(train.classes),
        "transform": train.meta.get("transform"),
    }


def linprobe(
    train: FeatureSet,
    val: FeatureSet,
    protocol: str = "sklearn",
    pool: str = "cls",
    layer: int | None = None,
    *,
    Cs: Sequence[float] = DEFAULT_CS,
    holdout: float = 0.1,
    max_iter: int = 1000,
    epochs: int = 90,
    batch_size: int = 256,
    blr: float | None = None,
    lr: float | None = None,
    weight_decay: float = 0.0,
    warmup_epochs: float = 10,
    optimizer: str = "lars",
    seed: int = 0,
    device=None,
    label: str | None = None,
) -> dict[str, Any]:
    """Linear-probe accuracy of ``pool`` features (at ``layer``, default the final output) of ``train`` -> ``val``.

    ``protocol='sklearn'``: :func:`.linear.logistic_probe` (``Cs``, ``holdout``, ``max_iter``);
    ``protocol='mae'``: :func:`.linear.train_linear_head` (``epochs``, ``batch_size``, ``blr`` or ``lr``,
    ``weight_decay``, ``warmup_epochs``, ``optimizer``)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    check_compatible(train, val)
    xt, xv = train.get(pool, layer), val.get(pool, layer)
    config: dict[str, Any] = {"protocol": protocol, "pool": pool, "layer": layer, "seed": seed, "label": label}
    if protocol == "sklearn":
        config.update(Cs=list(Cs), holdout=holdout, max_iter=max_iter)
        out = logistic_probe(xt, train.labels, xv, val.labels, Cs=Cs, holdout=holdout, max_iter=max_iter, seed=seed)
        details = {
            "top1_ci95": list(out["top1_ci95"]),
            "C": out["C"],
            "sweep_holdout_top1": {str(c): a for c, a in out["sweep"].items()},
            "n_iter": out["n_iter"],
            "converged": out["converged"],
        }
    else:
        config.update(
            epochs=epochs,
            batch_size=batch_size,
            blr=blr,
            lr=lr,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            optimizer=optimizer,
        )
        out = train_linear_head(
            xt,
            train.labels,
            xv,
            val.labels,
            len(train.classes),
            epochs=epochs,
            batch_size=batch_size,
            blr=blr,
            lr=lr,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            optimizer=optimizer,
            seed=seed,
            device=device,
        )
        details = {
            "top1_ci95": list(out["top1_ci95"]),
            "lr": out["lr"],
            "steps": out["steps"],
            "final_train_loss": out["final_train_loss"],
        }
    return make_result(
        "linprobe",
        {"top1": out["top1"], "top5": out["top5"]},
        checkpoint=train.meta.get("checkpoint"),
        checkpoint_sha256=train.checkpoint_sha256,
        dataset=_dataset_info(train, val),
        config=config,
        details=details,
    )


def knn(
    train: FeatureSet,
    val: FeatureSet,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    pool: str = "cls",
    layer: int | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Weighted k-NN accuracy for every k; metrics ``top1``/``top5`` are those of the best k (by top-1), and
    ``k{K}_top1`` / ``k{K}_top5`` each k's."""
    check_compatible(train, val)
    if not ks:
        raise ValueError("ks must name at least one k")
    scores = knn_scores(
        train.get(pool, layer), train.labels, val.get(pool, layer), list(ks), len(train.classes), temperature
    )
    per_k = {int(k): topk_accuracy(s, val.labels) for k, s in scores.items()}
    best = max(per_k, key=lambda k: (per_k[k]["top1"], -k))
    metrics = {"top1": per_k[best]["top1"], "top5": per_k[best]["top5"]}
    for k, acc in per_k.items():
        metrics[f"k{k}_top1"], metrics[f"k{k}_top5"] = acc["top1"], acc["top5"]
    config = {"ks": list(ks), "temperature": temperature, "pool": pool, "layer": layer, "label": label}
    return make_result(
        "knn",
        metrics,
        checkpoint=train.meta.get("checkpoint"),
        checkpoint_sha256=train.checkpoint_sha256,
        dataset=_dataset_info(train, val),
        config=config,
        details={"best_k": best, "top1_ci95": list(top1_interval(scores[best], val.labels))},
    )
