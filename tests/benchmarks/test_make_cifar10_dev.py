"""benchmarks/make_cifar10_dev.py: the cifar10-dev rule on fake CIFAR-10 batches (3 train + 2 val per class)."""

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "make_cifar10_dev.py"


@pytest.fixture
def tool(monkeypatch):
    spec = importlib.util.spec_from_file_location("make_cifar10_dev", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "TRAIN_PER_CLASS", 3)
    monkeypatch.setattr(mod, "VAL_PER_CLASS", 2)
    return mod


def fake_batches(root: Path, per_class: int = 7) -> tuple[Path, np.ndarray, list[int]]:
    """Two train batches; labels in a shuffled order; each image filled with its row number (so a file shows
    which row it came from)."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    labels = list(np.random.default_rng(0).permutation(np.repeat(np.arange(10), per_class)))
    rows = np.repeat(np.arange(len(labels), dtype=np.uint8)[:, None], 3072, axis=1)
    half = len(labels) // 2
    for i, sl in enumerate((slice(0, half), slice(half, None)), 1):
        with open(base / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": rows[sl], b"labels": [int(x) for x in labels[sl]]}, f, protocol=2)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({b"data": rows[:10], b"labels": list(range(10))}, f, protocol=2)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    return base, rows, [int(x) for x in labels]


def test_the_first_images_of_each_class_in_batch_order_make_train_then_val(tool, tmp_path):
    base, rows, labels = fake_batches(tmp_path / "cifar")
    assert tool.main([str(base), str(tmp_path / "dev")]) == 0
    for c in range(10):
        order = [r for r, y in enumerate(labels) if y == c]  # this class's rows in the batches' order
        train = sorted(p.name for p in (tmp_path / "dev" / "train" / f"c{c}").iterdir())
        val = sorted(p.name for p in (tmp_path / "dev" / "val" / f"c{c}").iterdir())
        assert (train, val) == (["0000.jpg", "0001.jpg", "0002.jpg"], ["0003.jpg", "0004.jpg"])
        for rank, name in enumerate(train + val):
            img = Image.open(tmp_path / "dev" / ("train" if rank < 3 else "val") / f"c{c}" / name)
            assert img.size == (32, 32) and img.mode == "RGB"
            assert abs(int(np.asarray(img).mean().round()) - order[rank]) <= 2  # the row it claims to be


def test_the_rebuild_is_deterministic_and_compare_finds_a_changed_file(tool, tmp_path):
    base, _, _ = fake_batches(tmp_path / "cifar")
    tool.build(base, tmp_path / "a")
    tool.build(base, tmp_path / "b")
    assert tool.compare(tmp_path / "a", tmp_path / "b")["identical"] and not any(
        tool.compare(tmp_path / "a", tmp_path / "b")[k] for k in ("close", "different", "missing")
    )
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "b" / "val" / "c3" / "0004.jpg", quality=75)
    res = tool.compare(tmp_path / "a", tmp_path / "b")
    assert res["different"] == ["val/c3/0004.jpg"]
    assert tool.main([str(base), str(tmp_path / "c"), "--compare", str(tmp_path / "b")]) == 1


def test_batches_without_enough_images_per_class_are_refused(tool, tmp_path):
    base, _, _ = fake_batches(tmp_path / "cifar", per_class=4)
    with pytest.raises(ValueError, match="fewer than 5 training images"):
        tool.build(base, tmp_path / "dev")
