"""Deprecated: run state is :mod:`crate_mae.engine.run_state` and the run lock :mod:`crate_mae.engine.run_lock`
("checkpoint" now means weight files only). The old names still work for one release, each with a
DeprecationWarning naming its new home."""

from __future__ import annotations

from ..utils.deprecation import moved_names

_STATE, _LOCK = "crate_mae.engine.run_state", "crate_mae.engine.run_lock"
__getattr__ = moved_names(
    __name__,
    {
        "STATE_NAME": f"{_STATE}:STATE_NAME",
        "CKPT_DIR": f"{_STATE}:CKPT_DIR",
        "DamagedCheckpointError": f"{_STATE}:DamagedRunStateError",
        "capture_rng": f"{_STATE}:capture_rng",
        "restore_rng": f"{_STATE}:restore_rng",
        "checkpoint_dir": f"{_STATE}:run_state_dir",
        "save_checkpoint": f"{_STATE}:save_run_state",
        "is_complete": f"{_STATE}:is_complete",
        "list_checkpoints": f"{_STATE}:list_run_states",
        "find_latest_checkpoint": f"{_STATE}:find_latest_run_state",
        "resume_candidates": f"{_STATE}:resume_candidates",
        "resolve_resume": f"{_STATE}:resolve_resume",
        "load_training_state": f"{_STATE}:load_training_state",
        "read_checkpoint": f"{_STATE}:read_run_state",
        "LOCK_NAME": f"{_LOCK}:LOCK_NAME",
        "RunLock": f"{_LOCK}:RunLock",
    },
)
