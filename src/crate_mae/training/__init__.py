"""Masked-completion pretraining, a Task of the run engine (:mod:`crate_mae.engine`, whose names are re-exported).

    from crate_mae.training import load_config, pretrain
    summary = pretrain(load_config("configs/demo.yaml", ["optim.epochs=2"]))
"""

from ..engine import *  # noqa: F403  (the engine's names, for one import line in scripts)
from ..engine import __all__ as _engine_all
from .pretrain import build_pretrain_dataset, pretrain

__all__ = [*_engine_all, "build_pretrain_dataset", "pretrain"]
