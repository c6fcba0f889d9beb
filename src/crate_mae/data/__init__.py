"""Data: readers for ImageFolder trees, flat image folders, CIFAR pickle batches and WebDataset shards; the
transfer data sets of the linear-probe table in torchvision's layouts (:mod:`.transfer`); MAE transforms; the
loader; and the embedded scikit-image demo photos (:mod:`crate_mae.data.demo`). See docs/data.md."""

from .build import DATA_KINDS, Repeated, build_dataset, detect_kind
from .cifar import CIFARBatches, load_cifar_pickle
from .folder import FlatImageFolder, ImageFiles, ImageFolderDataset, UnreadableImageError, is_image_file
from .loader import build_loader, resolve_num_workers, seed_worker
from .shard_writer import make_shards
from .shards import ShardDataset
from .transfer import DEFAULT_TRANSFER, TRANSFER_SETS, TransferData, find_transfer_data
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    book_pretrain_transform,
    denormalize,
    eval_transform,
    fix_rand_augment_posterize,
    posterize_zero_bits,
    pretrain_transform,
    resolve_data_config,
)

__all__ = [
    "CIFARBatches",
    "DATA_KINDS",
    "DEFAULT_TRANSFER",
    "FlatImageFolder",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFiles",
    "ImageFolderDataset",
    "Repeated",
    "ShardDataset",
    "TRANSFER_SETS",
    "TransferData",
    "UnreadableImageError",
    "book_pretrain_transform",
    "build_dataset",
    "build_loader",
    "denormalize",
    "detect_kind",
    "eval_transform",
    "find_transfer_data",
    "fix_rand_augment_posterize",
    "is_image_file",
    "load_cifar_pickle",
    "make_shards",
    "posterize_zero_bits",
    "pretrain_transform",
    "resolve_data_config",
    "resolve_num_workers",
    "seed_worker",
]
