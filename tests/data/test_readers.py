from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from _data_files import write_cifar10, write_cifar100, write_image

from crate_mae.data import (
    CIFARBatches,
    FlatImageFolder,
    ImageFolderDataset,
    build_dataset,
    detect_kind,
    eval_transform,
    load_cifar_pickle,
)


# ----------------------------------------------------------------------------------------------- ImageFolder trees
def test_imagefolder_split_classes_labels(image_tree: Path):
    ds = build_dataset(image_tree, split="train", kind="imagefolder")
    assert isinstance(ds, ImageFolderDataset)
    assert ds.classes == ["cat", "dog"] and len(ds) == 5
    assert [label for _, label in ds.samples] == [0, 0, 0, 1, 1] == ds.targets
    x, y = ds[3]
    assert x.shape == (3, 16, 20) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and y == 1
    val = build_dataset(image_tree / "val", transform=eval_transform(8, crop_pct=1.0))
    assert val.classes == ds.classes and len(val) == 2 and val[1][0].shape == (3, 8, 8)


def test_imagefolder_keeps_empty_class_so_label_indices_agree(image_tree: Path):
    (image_tree / "val" / "emu").mkdir()
    ds = build_dataset(image_tree, split="val", kind="imagefolder")
    assert ds.classes == ["cat", "dog", "emu"] and ds.targets == [0, 1]


def test_imagefolder_pixels_match_file(tmp_path: Path):
    p = write_image(tmp_path / "a" / "c" / "x.png", seed=5)
    x, _ = build_dataset(tmp_path / "a", kind="imagefolder")[0]
    from PIL import Image

    ref = torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(x, ref)


# -------------------------------------------------------------------------------------------------- flat folders
def test_flat_folder_recursive_unlabelled_ignores_non_images(tmp_path: Path):
    root = tmp_path / "photos"
    write_image(root / "b.JPG", 0)
    write_image(root / "a.png", 1)
    write_image(root / "2020" / "c.webp", 2)
    write_image(root / ".hidden" / "d.png", 3)
    write_image(root / "._e.jpg", 4)  # macOS resource-fork style name
    (root / "notes.txt").write_text("not an image")
    ds = build_dataset(root, kind="folder")
    assert isinstance(ds, FlatImageFolder) and ds.classes == []
    assert [Path(p).relative_to(root).as_posix() for p, _ in ds.samples] == ["2020/c.webp", "a.png", "b.JPG"]
    assert all(ds[i][1] == -1 for i in range(len(ds)))


# --------------------------------------------------------------------------------------------------------- CIFAR
def test_cifar10_batches_train_test_and_pixel_layout(tmp_path: Path):
    base = write_cifar10(tmp_path, n_per_batch=4, num_train_batches=2)
    for path in (tmp_path, base):  # the batch folder or its parent
        train = build_dataset(path, split="train")
        assert isinstance(train, CIFARBatches) and train.kind == "cifar10" and len(train) == 8
    assert train.classes == [f"class{i}" for i in range(10)]
    assert train.targets == list(range(8)) and train.samples[5] == (f"{base / 'data_batch_2'}[1]", 5)
    test = build_dataset(tmp_path, split="test", kind="cifar10")
    assert len(test) == 4 and test.targets == [8, 9, 0, 1]
    assert len(build_dataset(tmp_path, split="val")) == 4  # val = test (CIFAR has no separate validation set)
    # Row layout: 1024 red, 1024 green, 1024 blue values, each a row-major 32 x 32 plane.
    with open(base / "data_batch_2", "rb") as f:
        row = pickle.load(f, encoding="bytes")[b"data"][1]
    x, y = train[5]
    assert x.shape == (3, 32, 32) and y == 5
    torch.testing.assert_close(x, torch.from_numpy(row.reshape(3, 32, 32).astype(np.float32) / 255))


def test_cifar10_without_meta_names_classes_by_index(tmp_path: Path):
    write_cifar10(tmp_path, meta=False)
    assert build_dataset(tmp_path, kind="cifar10").classes == [str(i) for i in range(10)]


def test_cifar100_fine_labels(tmp_path: Path):
    write_cifar100(tmp_path, n=5)
    ds = build_dataset(tmp_path, split="test")
    assert ds.kind == "cifar100" and len(ds) == 5 and len(ds.classes) == 100
    assert ds.targets == [0, 7, 14, 21, 28] and ds.classes[7] == "fine7"
    with pytest.raises(ValueError, match="holds cifar100 batches, not cifar10"):
        build_dataset(tmp_path, kind="cifar10")


def test_cifar_unpickler_refuses_code(tmp_path: Path):
    base = write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(base / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"refusing to load \w+\.print"):
        load_cifar_pickle(base / "test_batch")


def test_cifar_bad_split_and_missing_batches(tmp_path: Path):
    base = write_cifar10(tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        build_dataset(tmp_path, split="holdout")
    (base / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        build_dataset(tmp_path, split="test", kind="cifar10")


# ---------------------------------------------------------------------------------------------- detection, errors
def test_detect_kind(tmp_path: Path, image_tree: Path):
    assert detect_kind(image_tree, "train") == "imagefolder"
    assert detect_kind(image_tree / "train" / "cat") == "folder"
    write_cifar10(tmp_path / "c10")
    assert detect_kind(tmp_path / "c10") == "cifar10"
    write_cifar100(tmp_path / "c100")
    assert detect_kind(tmp_path / "c100" / "cifar-100-python") == "cifar100"


@pytest.mark.parametrize("kind", ["auto", "imagefolder", "folder"])
def test_missing_directory_names_the_path(tmp_path: Path, kind: str):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        build_dataset(tmp_path / "nope", kind=kind)


@pytest.mark.parametrize("kind", ["auto", "imagefolder", "folder", "cifar10"])
def test_empty_directory_names_the_path(tmp_path: Path, kind: str):
    empty = tmp_path / "empty"
    (empty / "some_class").mkdir(parents=True)
    (empty / "some_class" / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=str(empty)):
        build_dataset(empty, kind=kind)


def test_missing_split_lists_subfolders(image_tree: Path):
    with pytest.raises(FileNotFoundError, match=r"tree/test.*\['train', 'val'\].*split=None"):
        build_dataset(image_tree, split="test")


def test_unknown_kind_and_file_path(image_tree: Path):
    with pytest.raises(ValueError, match="unknown data kind 'lmdb'.*imagefolder"):
        build_dataset(image_tree, kind="lmdb")
    a_file = next((image_tree / "train" / "cat").iterdir())
    with pytest.raises(FileNotFoundError, match="not a directory"):
        build_dataset(a_file, kind="folder")


def test_imagefolder_on_flat_folder_explains(tmp_path: Path):
    write_image(tmp_path / "flat" / "a.png", 0)
    with pytest.raises(FileNotFoundError, match="no class sub-folders.*kind='folder'"):
        build_dataset(tmp_path / "flat", kind="imagefolder")
