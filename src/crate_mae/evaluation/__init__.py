"""Evaluation of frozen and fine-tuned encoders: cached features, linear probes (scikit-learn and MAE's
BatchNorm + LARS), weighted k-NN, layer-decay fine-tuning, the paper's transfer suite (:mod:`.suite`), masked
reconstruction loss and mask-ratio sweeps (:mod:`.masked_loss`), and result files / comparison tables.

    from crate_mae.evaluation import compute_features, linprobe, knn
    train = compute_features(ckpt, "data/cifar10", "train"); val = compute_features(ckpt, "data/cifar10", "val")
    linprobe(train, val)["metrics"], knn(train, val)["metrics"]
"""

from .features import FeatureSet, check_compatible, check_same_classes, compute_features, extract_features
from .knn import knn_evaluate, knn_scores
from .lars import LARS
from .linear import LinearProbeHead, logistic_probe, train_linear_head
from .masked_loss import mask_ratio_sweep, reconstruction_loss
from .metrics import top1_interval, topk_accuracy, topk_correct
from .probe import knn, linprobe
from .results import compare_table, make_result, read_result, read_results, summary_line, write_result
from .suite import run_suite

__all__ = [
    "FeatureSet",
    "LARS",
    "LinearProbeHead",
    "check_compatible",
    "check_same_classes",
    "compare_table",
    "compute_features",
    "extract_features",
    "knn",
    "knn_evaluate",
    "knn_scores",
    "linprobe",
    "logistic_probe",
    "make_result",
    "mask_ratio_sweep",
    "read_result",
    "read_results",
    "reconstruction_loss",
    "run_suite",
    "summary_line",
    "top1_interval",
    "topk_accuracy",
    "topk_correct",
    "train_linear_head",
    "write_result",
]
