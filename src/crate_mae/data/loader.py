"""``build_loader``: a DataLoader with the reproducibility and distributed settings every stage wants."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..utils import usable_cores


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a worker from its torch seed (which DataLoader derives from its generator), so
    non-torch randomness in transforms is reproducible too (PyTorch "Reproducibility" notes)."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def resolve_num_workers(num_workers: int | str, device: torch.device | str) -> int:
    """``num_workers`` as given, or for ``"auto"`` a count chosen by the machine, from the cores this process may
    use (its CPU affinity, divided among the ``torchrun`` processes on this machine):

    - on a GPU: ``min(8, cores - 1)``: the model runs on the device, so the cores are free to decode and augment;
    - on a CPU: the cores the training threads leave free (``cores - torch.get_num_threads()``, at most 4); when
      they leave none, 0 with at most 4 cores (a worker would take time from the training threads, and with the
      decoded images cached loading in-process costs under a tenth of a 32-px step: docs/data.md), else
      ``min(4, cores // 4)``.
    """
    if num_workers != "auto":
        return int(num_workers)
    cores = usable_cores()
    cores //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if torch.device(device).type != "cpu":
        return max(0, min(8, cores - 1))
    free = cores - torch.get_num_threads()
    if free > 0:
        return min(4, free)
    return 0 if cores <= 4 else min(4, cores // 4)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    num_workers: int = 0,
    distributed: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """DataLoader over ``dataset``.

    - Order: a ``torch.Generator`` seeded with ``seed`` drives shuffling and the worker seeds, so two loaders built
      with the same arguments yield the same batches.
    - ``distributed=True`` (``torch.distributed`` initialised, e.g. under torchrun): a ``DistributedSampler`` over
      ``world_size`` ranks with the same ``seed``/``shuffle``/``drop_last``; each rank sees ``1/world_size`` of the
      data. **The caller must call** ``loader.sampler.set_epoch(epoch)`` at the start of every epoch, otherwise every
      epoch repeats the same order.
    - ``num_workers > 0``: persistent workers (no re-fork per epoch); ``pin_memory`` when CUDA is available.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "build_loader(distributed=True) needs an initialised torch.distributed process group "
                "(launch with torchrun and call init_process_group first)"
            )
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        shuffle = False  # the sampler shuffles
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
    )
