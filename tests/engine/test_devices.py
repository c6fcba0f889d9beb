"""GPU code paths checked on a CPU-only machine: fake device counts, fake CUDA RNG, fake bf16 support."""

from __future__ import annotations

import re

import pytest
import torch

from crate_mae.engine.distributed import init_distributed
from crate_mae.engine.run_state import capture_rng, restore_rng
from crate_mae.utils import amp_dtype


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set_device must not be reached"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(
        ValueError,
        match=r"LOCAL_RANK 1 needs GPU cuda:1 but this node has 1 visible GPU.*"
        r"--nproc_per_node=1",
    ):
        init_distributed("cuda")


class _FakeCuda:
    """Per-device CUDA generator states of a machine with ``n`` GPUs."""

    def __init__(self, n: int):
        self.states = {i: torch.tensor([i], dtype=torch.uint8) for i in range(n)}

    def get(self, device="cuda"):
        return self.states[torch.device(device).index]

    def set(self, state, device="cuda"):
        index = torch.device(device).index
        if index not in self.states:
            raise IndexError(f"no device {index}")
        self.states[index] = state


def test_rng_state_is_the_ranks_own_device_and_resumes_with_fewer_gpus(monkeypatch):
    eight = _FakeCuda(8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", eight.get)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("all devices saved"))
    state = capture_rng(torch.device("cuda", 5))
    assert torch.equal(state["cuda"], torch.tensor([5], dtype=torch.uint8))
    one = _FakeCuda(1)  # resumed on a node that shows this rank a single GPU
    monkeypatch.setattr(torch.cuda, "set_rng_state", one.set)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: pytest.fail("all devices restored"))
    restore_rng(state, torch.device("cuda", 0))
    assert torch.equal(one.states[0], torch.tensor([5], dtype=torch.uint8))


def test_amp_auto_falls_back_to_fp16_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype("auto", "cuda") == torch.float16  # V100 / T4: the engine adds a GradScaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype("auto", "cuda") == torch.bfloat16
    assert amp_dtype("auto", "cpu") is None


def test_declared_torch_floor_has_the_apis_we_call():
    """init_process_group(device_id=...) and GradScaler("cuda") need torch >= 2.3."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    major, minor = map(int, re.search(r'"torch>=(\d+)\.(\d+)', text).groups())
    assert (major, minor) >= (2, 3)


def test_per_sample_seeding_leaves_cuda_generators_alone(monkeypatch):
    """torch.manual_seed would reseed every CUDA generator from the data order (drop path on GPU would follow)."""
    from torch.utils.data import TensorDataset

    from crate_mae.engine.sampling import SeededSamples

    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: pytest.fail("CUDA generators reseeded"))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda s: pytest.fail("CUDA generator reseeded"))
    ds = TensorDataset(torch.rand(4, 3, 8, 8), torch.arange(4))
    before = torch.get_rng_state()
    a = SeededSamples(ds, seed=0, num_patches=4)[(0, 1)]
    b = SeededSamples(ds, seed=0)[(1, 2)]
    assert torch.equal(torch.get_rng_state(), before)  # the CPU generator is restored too
    assert a[1].shape == (4,) and b[1].item() == 2
