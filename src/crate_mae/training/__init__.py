"""Masked-completion pretraining: config, optimiser/schedule, the run engine shared with fine-tuning, checkpoints,
torchrun DDP.

    from crate_mae.training import load_config, pretrain
    summary = pretrain(load_config("configs/demo.yaml", ["optim.epochs=2"]))
"""

from .checkpointing import find_latest_checkpoint, list_checkpoints, load_training_state
from .config import DataConfig, ModelConfig, OptimConfig, PretrainConfig, RunConfig, load_config
from .engine import NonFiniteLossError, Runner, Task, TrainState, run
from .optim import WarmupCosine, build_optimizer, effective_lr
from .pretrain import build_pretrain_dataset, pretrain
from .visualize import reconstruct, save_reconstruction_grid

__all__ = ["DataConfig", "ModelConfig", "NonFiniteLossError", "OptimConfig", "PretrainConfig", "RunConfig", "Runner",
           "Task", "TrainState", "WarmupCosine", "build_optimizer", "build_pretrain_dataset", "effective_lr",
           "find_latest_checkpoint", "list_checkpoints", "load_config", "load_training_state", "pretrain",
           "reconstruct", "run", "save_reconstruction_grid"]
