"""Names that moved out of the engine (the pretraining config to crate_mae.training, run state out of
"checkpointing", the fine-tuning config to its own module) still answer at their old paths for one release, each
with a DeprecationWarning naming the new home; the package itself never uses them."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import crate_mae.engine.run_lock as run_lock
import crate_mae.engine.run_state as run_state
import crate_mae.evaluation.finetune_config as finetune_config
import crate_mae.training.config as pretrain_config
from crate_mae.engine import optim, runner

MOVED = [
    ("crate_mae.engine.config", "load_config", pretrain_config.load_config),
    ("crate_mae.engine.config", "config_from_dict", pretrain_config.config_from_dict),
    ("crate_mae.engine.config", "PretrainConfig", pretrain_config.PretrainConfig),
    ("crate_mae.engine.config", "PretrainRunConfig", pretrain_config.PretrainRunConfig),
    ("crate_mae.engine.config", "ModelConfig", pretrain_config.ModelConfig),
    ("crate_mae.engine.config", "DataConfig", pretrain_config.DataConfig),
    ("crate_mae.engine.config", "AUGMENTS", pretrain_config.AUGMENTS),
    ("crate_mae.engine", "PretrainConfig", pretrain_config.PretrainConfig),
    ("crate_mae.engine", "ModelConfig", pretrain_config.ModelConfig),
    ("crate_mae.engine", "DataConfig", pretrain_config.DataConfig),
    ("crate_mae.engine", "load_config", pretrain_config.load_config),
    ("crate_mae.engine", "find_latest_checkpoint", run_state.find_latest_run_state),
    ("crate_mae.engine", "list_checkpoints", run_state.list_run_states),
    ("crate_mae.engine.checkpointing", "RunLock", run_lock.RunLock),
    ("crate_mae.engine.checkpointing", "LOCK_NAME", run_lock.LOCK_NAME),
    ("crate_mae.engine.checkpointing", "STATE_NAME", run_state.STATE_NAME),
    ("crate_mae.engine.checkpointing", "CKPT_DIR", run_state.CKPT_DIR),
    ("crate_mae.engine.checkpointing", "DamagedCheckpointError", run_state.DamagedRunStateError),
    ("crate_mae.engine.checkpointing", "save_checkpoint", run_state.save_run_state),
    ("crate_mae.engine.checkpointing", "read_checkpoint", run_state.read_run_state),
    ("crate_mae.engine.checkpointing", "checkpoint_dir", run_state.run_state_dir),
    ("crate_mae.engine.checkpointing", "list_checkpoints", run_state.list_run_states),
    ("crate_mae.engine.checkpointing", "find_latest_checkpoint", run_state.find_latest_run_state),
    ("crate_mae.engine.checkpointing", "is_complete", run_state.is_complete),
    ("crate_mae.engine.checkpointing", "resume_candidates", run_state.resume_candidates),
    ("crate_mae.engine.checkpointing", "resolve_resume", run_state.resolve_resume),
    ("crate_mae.engine.checkpointing", "load_training_state", run_state.load_training_state),
    ("crate_mae.engine.checkpointing", "capture_rng", run_state.capture_rng),
    ("crate_mae.engine.checkpointing", "restore_rng", run_state.restore_rng),
    ("crate_mae.training", "NonFiniteLossError", runner.NonFiniteLossError),
    ("crate_mae.training", "Runner", runner.Runner),
    ("crate_mae.training", "Task", runner.Task),
    ("crate_mae.training", "TrainState", runner.TrainState),
    ("crate_mae.training", "run", runner.run),
    ("crate_mae.training", "WarmupCosine", optim.WarmupCosine),
    ("crate_mae.training", "build_optimizer", optim.build_optimizer),
    ("crate_mae.training", "effective_lr", optim.effective_lr),
    ("crate_mae.training", "OptimConfig", pretrain_config.OptimConfig),
    ("crate_mae.training", "RunConfig", pretrain_config.RunConfig),
    ("crate_mae.training", "find_latest_checkpoint", run_state.find_latest_run_state),
    ("crate_mae.training", "list_checkpoints", run_state.list_run_states),
    ("crate_mae.training", "load_training_state", run_state.load_training_state),
    ("crate_mae.evaluation.finetune", "load_finetune_config", finetune_config.load_finetune_config),
    ("crate_mae.evaluation.finetune", "FinetuneModelConfig", finetune_config.FinetuneModelConfig),
    ("crate_mae.evaluation.finetune", "FinetuneDataConfig", finetune_config.FinetuneDataConfig),
    ("crate_mae.evaluation.finetune", "FinetuneOptimConfig", finetune_config.FinetuneOptimConfig),
]


@pytest.mark.parametrize("module, name, new", MOVED, ids=[f"{m}.{n}" for m, n, _ in MOVED])
def test_an_old_name_warns_and_is_the_new_object(module, name, new):
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=rf"{module}\.{name} is deprecated .*; use crate_mae\."):
        assert getattr(mod, name) is new


def test_unknown_names_are_still_attribute_errors():
    import crate_mae.engine.checkpointing as old

    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        old.nothing  # noqa: B018


def test_the_package_imports_no_deprecated_name():
    """Every module of the package imports without touching an alias (which would raise here)."""
    code = (
        "import importlib, pkgutil, warnings\n"
        "warnings.filterwarnings('error', r'crate_mae\\..* is deprecated and will be', DeprecationWarning)\n"
        "import crate_mae\n"
        "for m in pkgutil.walk_packages(crate_mae.__path__, 'crate_mae.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
