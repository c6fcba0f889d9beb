"""The transfer data sets found under a root in torchvision's layouts (or as ImageFolder trees), read without
checksums, checked against torchvision's own readers on generated replicas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _transfer_replicas import write_all, write_cifar, write_flowers, write_image_folder, write_pets
from torchvision.datasets import Flowers102, OxfordIIITPet

from crate_mae.data import TRANSFER_SETS, find_transfer_data
from crate_mae.data.transfer import read_flowers102, read_pets


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_all(tmp_path / "data")


def test_each_layout_is_found_with_its_standard_splits(root):
    for name, spec in TRANSFER_SETS.items():
        d = find_transfer_data(name, root)
        assert (d.kind, d.path, d.fit_splits, d.test_split) == (name, root / spec.folder, spec.fit, spec.test)
    sizes = {name: [len(find_transfer_data(name, root).build(p)) for p in ("fit", "test")] for name in TRANSFER_SETS}
    # replicas: CIFAR 3 classes x 6 train / 3 test; Flowers 3 classes x 2 per split (train + val fit);
    # Pets 3 breeds x 4 trainval / 2 test
    assert sizes == {"cifar10": [18, 9], "cifar100": [18, 9], "flowers102": [12, 6], "pets": [12, 6]}
    # the torchvision folder itself, or its parent, may be given as a data set's path
    assert find_transfer_data("pets", path=root / "oxford-iiit-pet").path == root / "oxford-iiit-pet"
    assert find_transfer_data("cifar10", path=root).path == root / "cifar-10-batches-py"


def test_flowers_reader_matches_torchvision(root, monkeypatch):
    # torchvision refuses files whose md5 differs from the originals; with that check lifted it reads the replica
    monkeypatch.setattr(Flowers102, "_check_integrity", lambda self: True)
    for split in ("train", "val", "test"):
        ours = find_transfer_data("flowers102", root)
        samples, classes = read_flowers102(ours.path, [split])
        theirs = Flowers102(str(root), split=split)
        assert classes == Flowers102.classes and len(classes) == 102
        assert [label for _, label in samples] == [theirs[i][1] for i in range(len(theirs))]
        ds = ours.build("test" if split == "test" else "fit")
        if split != "val":  # fit = train + val, train first
            for i in range(len(theirs)):
                assert torch.equal(_pixels(ds[i][0]), _tensor(theirs[i][0]))


def test_pets_reader_matches_torchvision(root):
    for split in ("trainval", "test"):
        samples, classes = read_pets(root / "oxford-iiit-pet", split)
        theirs = OxfordIIITPet(str(root), split=split)
        assert classes == theirs.classes == ["Abyssinian", "American Bulldog", "Bengal"]
        assert [label for _, label in samples] == [theirs[i][1] for i in range(len(theirs))]
        ds = find_transfer_data("pets", root).build("fit" if split == "trainval" else "test")
        for i in range(len(theirs)):
            assert torch.equal(_pixels(ds[i][0]), _tensor(theirs[i][0]))


def _tensor(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8)


def test_an_image_folder_stands_in_for_any_data_set(tmp_path, root):
    tree = write_image_folder(tmp_path / "flowers12", splits=("train", "val"))
    d = find_transfer_data("flowers102", path=tree, test_split="val")
    assert (d.kind, d.fit_splits, d.test_split) == ("imagefolder", ("train",), "val")
    assert (len(d.build("fit")), len(d.build("test"))) == (12, 12)
    # under the root by its name, any name
    write_image_folder(root / "mine", splits=("train", "test"))
    assert find_transfer_data("mine", root).kind == "imagefolder"
    # several fit splits are read as one
    assert len(find_transfer_data("x", path=tree, fit_splits=("train", "val"), test_split="val").build("fit")) == 24
    with pytest.raises(FileNotFoundError, match=r"split folder not found: .*flowers12/test .*\['train', 'val'\]"):
        find_transfer_data("flowers12", path=tree)


def test_a_missing_split_file_is_named(tmp_path):
    base = write_flowers(tmp_path / "f")
    (base / "setid.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"Flowers-102 file not found: .*flowers-102/setid\.mat$"):
        find_transfer_data("flowers102", tmp_path / "f").build("fit")
    base = write_pets(tmp_path / "p")
    (base / "annotations" / "test.txt").unlink()
    d = find_transfer_data("pets", tmp_path / "p")
    assert len(d.build("fit")) == 12  # the other split still reads
    with pytest.raises(FileNotFoundError, match=r"Pets split file not found: .*oxford-iiit-pet/annotations/test\.txt"):
        d.build("test")
    base = write_cifar(tmp_path / "c", "cifar10")
    (base / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match=r"test_batch"):
        find_transfer_data("cifar10", tmp_path / "c").build("test")


def test_bad_files_and_names_fail_with_one_clear_error(tmp_path, root):
    with pytest.raises(
        FileNotFoundError,
        match=r"data set pets: found neither torchvision's layout "
        r"\(oxford-iiit-pet\) or an ImageFolder tree",
    ):
        find_transfer_data("pets", tmp_path)
    with pytest.raises(ValueError, match="must be letters"):
        find_transfer_data("../x", root)
    (root / "flowers-102" / "imagelabels.mat").write_bytes(b"not a mat file")
    with pytest.raises(ValueError, match=r"cannot read .*imagelabels\.mat as a MATLAB file"):
        find_transfer_data("flowers102", root).build("fit")
    (root / "oxford-iiit-pet" / "annotations" / "test.txt").write_text("Bengal_1 x 1 1\n")
    with pytest.raises(ValueError, match=r"test\.txt:1: expected"):
        find_transfer_data("pets", root).build("test")


def test_an_unreadable_image_is_skipped_and_counted(root):
    jpg = root / "flowers-102" / "jpg" / "image_00002.jpg"
    jpg.write_bytes(jpg.read_bytes()[:200])
    ds = find_transfer_data("flowers102", root).build("fit")
    assert ds.read(1) is None and ds.num_skipped == 1 and ds.skipped_files == [str(jpg)]
    assert ds[1][1] == ds.samples[2][1]  # the loader's ds[i] goes on to the next readable image
    with pytest.raises(ValueError, match="image_00002.jpg"):
        find_transfer_data("flowers102", root).build("fit", strict=True)[1]
