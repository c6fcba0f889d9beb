"""Device selection."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA, full precision elsewhere (CPU autocast is slower than fp32 for these models)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else None
