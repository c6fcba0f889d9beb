"""Data order and per-sample randomness that do not depend on the number of processes, workers or restarts.

Two ideas make a run reproducible bit for bit across ``torchrun`` world sizes and kill/resume:

1. :class:`EpochSampler` draws one permutation per epoch from ``(seed, epoch)`` and cuts it into *global* batches
   of ``batch_size * world_size``; rank ``r`` takes the samples at positions ``r, r + world, ...`` of each global
   batch (DistributedSampler's striding). A 2-process run with batch B therefore sees, at every step, exactly the
   samples of a 1-process run with batch 2B. Resuming starts the iteration at a given step instead of replaying it.
2. :class:`SeededSamples` wraps a dataset so that sample ``i`` of epoch ``e`` is augmented under the RNG seed
   ``f(seed, e, i)`` and (pretraining) comes with its own masking noise drawn from the same seed. Augmentations and
   masks are thus a function of (seed, epoch, index) only, whichever worker or rank loads the sample.
"""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

_MIX = 0x9E3779B97F4A7C15  # 64-bit golden ratio, spreads nearby (epoch, index) pairs apart


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one (run seed, epoch, sample index) triple."""
    h = (seed * _MIX + epoch) & 0xFFFFFFFFFFFFFFFF
    h = (h * _MIX + index) & 0xFFFFFFFFFFFFFFFF
    h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class SeededSamples(Dataset):
    """``ds[(epoch, i)]``: the wrapped dataset's sample ``i`` produced under the seed :func:`sample_seed`
    ``(seed, epoch, i)``, so augmentation is a function of (seed, epoch, index) whatever the worker, rank or restart.

    With ``num_patches`` (pretraining) it returns ``(image, noise)``: the label is dropped and uniform masking noise
    of that length is drawn from the same seed; without (fine-tuning) it returns ``(image, label)``.

    Only the CPU generators are seeded (torch, python ``random`` and numpy, which timm's RandAugment, random
    erasing and mixup use) and all three are restored afterwards: ``torch.manual_seed`` would also reseed every
    CUDA generator, so with ``num_workers=0`` drop-path randomness on the GPU would depend on the data order.
    ``torch_only=True`` is for datasets whose randomness is torch's alone (torchvision v2 transforms): numpy and
    ``random`` are then left alone: the same samples, without saving, seeding and restoring numpy's generator, which
    took a fifth of the time of a 32-px JPEG sample (docs/data.md).
    """

    def __init__(self, dataset: Dataset, seed: int, num_patches: int | None = None, torch_only: bool = False):
        self.dataset, self.seed, self.num_patches, self.torch_only = dataset, seed, num_patches, torch_only

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; map-style ones have it

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        s = sample_seed(self.seed, epoch, index)
        if not self.torch_only:
            py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(s)
            if not self.torch_only:
                random.seed(s)
                np.random.seed(s % 2**32)
            item = self.dataset[index]
        if not self.torch_only:
            random.setstate(py_state)
            np.random.set_state(np_state)
        if self.num_patches is None:
            return item
        img = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(img, torch.Tensor):
            raise ValueError(
                f"dataset sample {index} is a {type(img).__name__}, expected a tensor image; "
                "give the dataset a transform that ends with ToTensor/Normalize"
            )
        noise = torch.rand(self.num_patches, generator=torch.Generator().manual_seed(s ^ 1))
        return img, noise


class EpochSampler(Sampler[list[tuple[int, int]]]):
    """Batch sampler: yields this rank's list of ``(epoch, index)`` keys for each step of epoch ``set_epoch(e)``.

    ``steps_per_epoch = len(dataset) // (batch_size * world_size)`` (the incomplete last global batch is dropped so
    every step averages the same number of samples on every rank). ``start_step`` skips already-trained steps after
    a resume without loading them.
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True
    ):
        self.global_batch = batch_size * world_size
        if num_samples < self.global_batch:
            raise ValueError(
                f"dataset has {num_samples} samples, fewer than one global batch "
                f"(batch_size {batch_size} x {world_size} processes = {self.global_batch})"
            )
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1 & 0xFFFFFFFF))
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        for step in range(self.start_step, self.steps_per_epoch):
            chunk = order[step * self.global_batch : (step + 1) * self.global_batch]
            yield [(self.epoch, i) for i in chunk[self.rank :: self.world_size]]
