"""Corrupt / truncated / unreadable files: skipped deterministically, counted, warned about once; strict fails."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from _data_files import write_image, write_truncated_jpeg

from crate_mae.data import UnreadableImageError, build_dataset, build_loader, eval_transform


@pytest.fixture
def tree_with_bad_files(tmp_path: Path) -> Path:
    root = tmp_path / "tree" / "train"
    for i in range(4):
        write_image(root / "a" / f"{i}.jpg", i)
    write_truncated_jpeg(root / "a" / "1b_truncated.jpg")  # sorts between 1.jpg and 2.jpg
    (root / "b").mkdir()
    write_image(root / "b" / "ok.png", 10)
    (root / "b" / "empty.png").write_bytes(b"")  # zero bytes: unidentified
    (root / "b" / "text.jpg").write_text("this is not a JPEG")  # wrong content
    return tmp_path / "tree"


def _names(ds):
    return [Path(p).name for p, _ in ds.samples]


def test_bad_files_are_skipped_counted_and_warned_once(tree_with_bad_files: Path, caplog):
    ds = build_dataset(tree_with_bad_files, split="train", transform=eval_transform(8, crop_pct=1.0))
    names = _names(ds)
    assert names == ["0.jpg", "1.jpg", "1b_truncated.jpg", "2.jpg", "3.jpg", "empty.png", "ok.png", "text.jpg"]
    bad = names.index("1b_truncated.jpg")
    ref_next = ds[bad + 1]
    with caplog.at_level(logging.WARNING, logger="crate_mae.data"):
        for _epoch in range(3):
            got = [ds[i] for i in range(len(ds))]
    # The truncated file yields the next readable sample (image and label), every time.
    torch.testing.assert_close(got[bad][0], ref_next[0])
    assert got[bad][1] == ref_next[1] == 0
    # empty.png -> ok.png; text.jpg (last) wraps around to the first file.
    torch.testing.assert_close(got[names.index("empty.png")][0], got[names.index("ok.png")][0])
    torch.testing.assert_close(got[names.index("text.jpg")][0], got[0][0])
    assert got[names.index("text.jpg")][1] == 0
    assert ds.num_skipped == 3
    assert sorted(Path(p).name for p in ds.skipped_files) == ["1b_truncated.jpg", "empty.png", "text.jpg"]
    warnings = [r.getMessage() for r in caplog.records if "skipping unreadable image" in r.getMessage()]
    assert len(warnings) == 3  # once per file over three epochs
    assert any("1b_truncated.jpg" in w and "truncated" in w for w in warnings)


def test_strict_raises_naming_the_file(tree_with_bad_files: Path):
    ds = build_dataset(tree_with_bad_files, split="train", strict=True)
    ds[0]
    with pytest.raises(UnreadableImageError, match=r"1b_truncated\.jpg.*strict"):
        ds[_names(ds).index("1b_truncated.jpg")]
    with pytest.raises(ValueError, match=r"empty\.png"):  # UnreadableImageError is a ValueError
        ds[_names(ds).index("empty.png")]


def test_all_files_unreadable_is_an_error(tmp_path: Path):
    write_truncated_jpeg(tmp_path / "bad" / "x.jpg")
    ds = build_dataset(tmp_path / "bad", kind="folder")
    with pytest.raises(UnreadableImageError, match="none of the 1 image files"):
        ds[0]


def test_skipping_works_inside_dataloader_workers(tree_with_bad_files: Path):
    """A full epoch through 2 worker processes: no crash, every batch full size, bad slots filled by the same
    readable neighbours as in-process (the skip counters live in each worker's copy of the dataset)."""
    ds = build_dataset(tree_with_bad_files, split="train", transform=eval_transform(8, crop_pct=1.0))
    loader = build_loader(ds, batch_size=4, shuffle=False, num_workers=2)
    batches = list(loader)
    assert ds.num_skipped == 0  # the workers met the bad files, not this process
    assert [b[0].shape[0] for b in batches] == [4, 4]
    serial = torch.stack([ds[i][0] for i in range(len(ds))])
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), serial)
    assert ds.num_skipped == 3
