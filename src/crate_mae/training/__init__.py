"""Masked-completion pretraining: config, optimiser/schedule, one-epoch engine, checkpoints, torchrun DDP.

    from crate_mae.training import load_config, pretrain
    summary = pretrain(load_config("configs/demo.yaml", ["optim.epochs=2"]))
"""

from .checkpointing import find_latest_checkpoint, list_checkpoints, load_training_state
from .config import DataConfig, ModelConfig, OptimConfig, PretrainConfig, RunConfig, load_config
from .engine import NonFiniteLossError, TrainState, train_one_epoch
from .optim import WarmupCosine, build_optimizer, effective_lr
from .pretrain import build_pretrain_dataset, pretrain
from .visualize import reconstruct, save_reconstruction_grid

__all__ = ["DataConfig", "ModelConfig", "NonFiniteLossError", "OptimConfig", "PretrainConfig", "RunConfig",
           "TrainState", "WarmupCosine", "build_optimizer", "build_pretrain_dataset", "effective_lr",
           "find_latest_checkpoint", "list_checkpoints", "load_config", "load_training_state", "pretrain",
           "reconstruct", "save_reconstruction_grid", "train_one_epoch"]
