"""The run engine, what every task shares: the run and optimiser configs (:mod:`.config`), optimiser/schedule, the
Runner + Task loop (:mod:`.runner`), run state (:mod:`.run_state`) and the folder lock (:mod:`.run_lock`), torchrun
DDP, seeded sampling. The tasks are pretraining (:mod:`crate_mae.training`) and fine-tuning
(:mod:`crate_mae.evaluation.finetune`)."""

from ..utils.deprecation import moved_names
from .config import OptimConfig, RunConfig
from .optim import WarmupCosine, build_optimizer, effective_lr
from .run_state import find_latest_run_state, list_run_states, load_training_state
from .runner import NonFiniteLossError, Runner, Task, TaskContext, TrainState, run

__all__ = [
    "NonFiniteLossError",
    "OptimConfig",
    "RunConfig",
    "Runner",
    "Task",
    "TaskContext",
    "TrainState",
    "WarmupCosine",
    "build_optimizer",
    "effective_lr",
    "find_latest_run_state",
    "list_run_states",
    "load_training_state",
    "run",
]

# Moved: the pretraining config to crate_mae.training; "checkpoint" now names weight files only.
__getattr__ = moved_names(
    __name__,
    {
        **{
            name: f"crate_mae.training.config:{name}"
            for name in ("DataConfig", "ModelConfig", "PretrainConfig", "load_config")
        },
        "find_latest_checkpoint": "crate_mae.engine.run_state:find_latest_run_state",
        "list_checkpoints": "crate_mae.engine.run_state:list_run_states",
    },
)
