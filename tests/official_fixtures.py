"""The official fixtures in tests/fixtures (provenance in each NAME.json and tests/fixtures/README.md): where they
are, how to read one, and the tolerance their float outputs are compared within.

The fixtures were built and run by the official code on another machine. Float results are therefore compared within
TOL, never bit for bit: the same fp32 program differs by a few 1e-6 between CPU kernels (``ATEN_CPU_CAPABILITY=
default`` / ``avx2`` / ``avx512``) and thread counts. Masks are integer decisions and must match exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOL = dict(rtol=1e-4, atol=1e-5)


def official_state_dict_path(name: str) -> Path:
    """``tests/fixtures/NAME.official_state_dict.safetensors``: the model at initialisation, official key names."""
    return FIXTURES / f"{name}.official_state_dict.safetensors"


def official_fixture(name: str) -> tuple[Path, dict[str, torch.Tensor], dict]:
    """``(state dict path, inputs and outputs, provenance)`` of the fixture ``name`` (e.g. ``crate_mae_micro``)."""
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    io = load_file(str(FIXTURES / f"{name}.io.safetensors"))
    return official_state_dict_path(name), io, meta
