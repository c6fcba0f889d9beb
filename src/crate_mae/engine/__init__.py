"""The run engine shared by pretraining and fine-tuning: config dataclasses, optimiser/schedule, the Runner + Task
loop (runner.py), checkpoints + folder lock, torchrun DDP, seeded sampling."""

from .checkpointing import find_latest_checkpoint, list_checkpoints, load_training_state
from .config import DataConfig, ModelConfig, OptimConfig, PretrainConfig, RunConfig, load_config
from .optim import WarmupCosine, build_optimizer, effective_lr
from .runner import NonFiniteLossError, Runner, Task, TrainState, run

__all__ = ["DataConfig", "ModelConfig", "NonFiniteLossError", "OptimConfig", "PretrainConfig", "RunConfig", "Runner",
           "Task", "TrainState", "WarmupCosine", "build_optimizer", "effective_lr", "find_latest_checkpoint",
           "list_checkpoints", "load_config", "load_training_state", "run"]
