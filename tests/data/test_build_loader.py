from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler, TensorDataset

from crate_mae.data import build_loader


def _ds(n: int = 10) -> TensorDataset:
    return TensorDataset(torch.arange(n))


def _order(loader) -> list[int]:
    return torch.cat([b[0] for b in loader]).tolist()


def test_seeded_order_is_reproducible_and_seed_dependent():
    a = _order(build_loader(_ds(), batch_size=3, shuffle=True, seed=5))
    assert a == _order(build_loader(_ds(), batch_size=3, shuffle=True, seed=5))
    assert a != _order(build_loader(_ds(), batch_size=3, shuffle=True, seed=6))
    assert sorted(a) == list(range(10))
    assert _order(build_loader(_ds(), batch_size=3, shuffle=False)) == list(range(10))


def test_drop_last_and_workers_settings():
    loader = build_loader(_ds(), batch_size=4, shuffle=False, num_workers=1, drop_last=True)
    assert loader.persistent_workers and loader.pin_memory == torch.cuda.is_available()
    assert [len(b[0]) for b in loader] == [4, 4]
    assert not build_loader(_ds(), batch_size=4, shuffle=False).persistent_workers


def test_distributed_needs_a_process_group():
    with pytest.raises(ValueError, match="init_process_group"):
        build_loader(_ds(), batch_size=2, shuffle=True, distributed=True)


def test_distributed_sampler_single_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = build_loader(_ds(), batch_size=4, shuffle=True, distributed=True, seed=3)
        assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.seed == 3
        loader.sampler.set_epoch(0)
        e0 = _order(loader)
        loader.sampler.set_epoch(1)
        e1 = _order(loader)
        assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "kwargs, match", [(dict(batch_size=0), "batch_size"), (dict(batch_size=2, num_workers=-1), "num_workers")]
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_loader(_ds(), **kwargs)
