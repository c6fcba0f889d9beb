"""Device and precision selection."""

from __future__ import annotations

import os

import torch

AMP_MODES = ("auto", "bf16", "fp16", "off")


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask where the platform keeps one (Linux), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity masks
        return os.cpu_count() or 1


def amp_dtype(mode: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``mode`` on ``device`` (None = full precision).

    ``auto``: bf16 on GPUs that support it, fp16 on older ones (V100, T4: the caller then needs a GradScaler to
    train), fp32 on CPU. On a CPU with native bf16 (AVX512-BF16), bf16 autocast trained the CIFAR-scale config at
    0.76x the speed of fp32, and crate_mae_tiny at 224 px at 1.22x (README "Speed"): CPU training is CIFAR-scale
    here, so ``auto`` keeps fp32 and exact fp32 features; ask for ``bf16`` for larger models."""
    device = torch.device(device)
    if mode == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError(f"run.amp = 'fp16' needs a CUDA device, running on {device}; use 'bf16' or 'off'")
        return torch.float16
    if mode == "off":
        return None
    raise ValueError(f"amp mode must be one of {AMP_MODES}, got {mode!r}")
