"""Masked-completion pretraining, a Task of the run engine (:mod:`crate_mae.engine`): its config
(:mod:`.config`) and the task (:mod:`.pretrain`).

    from crate_mae.training import load_config, pretrain
    summary = pretrain(load_config("configs/demo.yaml", ["optim.epochs=2"]))
"""

from ..utils.deprecation import moved_names
from .config import (
    AUGMENTS,
    DataConfig,
    ModelConfig,
    PretrainConfig,
    PretrainRunConfig,
    config_from_dict,
    load_config,
)
from .pretrain import Pretraining, build_pretrain_dataset, knn_monitor, pretrain

__all__ = [
    "AUGMENTS",
    "DataConfig",
    "ModelConfig",
    "PretrainConfig",
    "PretrainRunConfig",
    "Pretraining",
    "build_pretrain_dataset",
    "config_from_dict",
    "knn_monitor",
    "load_config",
    "pretrain",
]

# The engine's names were re-exported here (``from ..engine import *``); they live in crate_mae.engine.
__getattr__ = moved_names(
    __name__,
    {
        **{
            name: f"crate_mae.engine:{name}"
            for name in (
                "NonFiniteLossError",
                "OptimConfig",
                "RunConfig",
                "Runner",
                "Task",
                "TrainState",
                "WarmupCosine",
                "build_optimizer",
                "effective_lr",
                "load_training_state",
                "run",
            )
        },
        "find_latest_checkpoint": "crate_mae.engine.run_state:find_latest_run_state",
        "list_checkpoints": "crate_mae.engine.run_state:list_run_states",
    },
)
