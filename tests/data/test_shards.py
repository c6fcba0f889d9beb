"""WebDataset shards: make_shards from image folders, ShardDataset by global index, equivalence with the folder
reader under the per-sample seeding of pretraining, corrupt data, manifest errors, the CLI."""

from __future__ import annotations

import json
import logging
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("wids", reason="the [shards] extra (webdataset, wids) is not installed")
pytest.importorskip("webdataset", reason="the [shards] extra (webdataset, wids) is not installed")

from _data_files import write_image, write_truncated_jpeg  # noqa: E402
from tiny import TINY, model_overrides  # noqa: E402

from crate_mae.cli import main  # noqa: E402
from crate_mae.data import (  # noqa: E402
    ShardDataset,
    UnreadableImageError,
    build_dataset,
    detect_kind,
    make_shards,
    pretrain_transform,
)
from crate_mae.data.shards import MANIFEST_NAME, SOURCES_NAME  # noqa: E402
from crate_mae.engine.sampling import EpochSampler, SeededSamples  # noqa: E402


def _tree(root: Path, counts=(("bird", 3), ("cat", 4), ("dog", 2))) -> Path:
    """``root/<class>/<i>.{png,jpg}``, 24 x 24 random images."""
    k = 0
    for cls, n in counts:
        for i in range(n):
            write_image(root / cls / f"{i}.{'jpg' if (k % 2) else 'png'}", k, size=(24, 24))
            k += 1
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return _tree(tmp_path / "src")


def _same(a, b) -> bool:
    return torch.equal(a[0], b[0]) and a[1] == b[1]


def test_shards_reproduce_the_folder_sample_by_sample(tree: Path, tmp_path: Path):
    # Odd formats are stored as the folder reader decodes them (lossless PNG), plain JPEG/PNG as their own bytes.
    Image.fromarray(np.arange(24 * 24, dtype=np.uint16).reshape(24, 24) * 100).save(tree / "cat" / "deep.png")
    Image.new("RGBA", (24, 24), (10, 200, 30, 128)).save(tree / "dog" / "alpha.png")
    Image.new("RGB", (24, 24), (1, 2, 3)).convert("P").save(tree / "dog" / "palette.png")
    out = tmp_path / "shards"
    desc = make_shards(tree, out, shard_size=4)
    folder = build_dataset(tree)
    assert detect_kind(out) == "shards"
    ds = build_dataset(out)
    assert isinstance(ds, ShardDataset)
    assert ds.classes == folder.classes == ["bird", "cat", "dog"] and len(ds) == len(folder) == 12
    assert ds.lengths == [4, 4, 4] and [ds.locate(i) for i in (0, 3, 4, 11)] == [(0, 0), (0, 3), (1, 0), (2, 3)]
    assert all(_same(ds[i], folder[i]) for i in range(len(ds)))
    assert _same(ds[-1], folder[11])
    with pytest.raises(IndexError):
        ds[12]
    info = desc["crate_mae"]
    assert info["class_counts"] == [3, 5, 4] and info["num_samples"] == 12 and info["skipped"] == []
    assert (out / SOURCES_NAME).read_text().splitlines() == [str(Path(p).relative_to(tree)) for p, _ in folder.samples]
    with tarfile.open(out / "shard-000001.tar") as t:
        names = t.getnames()
    assert names[:2] == ["000000004.cls", "000000004.png"] and "000000005.jpg" in names
    assert oct((out / "shard-000000.tar").stat().st_mode & 0o777) != oct(0o600)  # readable by the job's other users


def test_same_sources_give_byte_identical_shards(tree: Path, tmp_path: Path):
    make_shards(tree, tmp_path / "a", shard_size=5)
    make_shards(tree, tmp_path / "b", shard_size=5, workers=2)
    for name in ("shard-000000.tar", "shard-000001.tar", MANIFEST_NAME, SOURCES_NAME):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_manifest_is_a_wids_descriptor(tree: Path, tmp_path: Path):
    import wids

    make_shards(tree, tmp_path / "shards", shard_size=4)
    w = wids.ShardListDataset(
        str(tmp_path / "shards" / MANIFEST_NAME), cache_dir=str(tmp_path / "wids_cache"), transformations=lambda s: s
    )
    assert len(w) == 9
    sample = w[5]
    assert sample["__key__"] == "000000005" and int(sample[".cls"].read()) == 1


def test_flat_folder_is_unlabelled(tmp_path: Path):
    for i in range(3):
        write_image(tmp_path / "flat" / ("sub" if i else "") / f"{i}.png", i)  # top-level images: a flat folder
    make_shards(tmp_path / "flat", tmp_path / "shards", shard_size=2)
    ds = build_dataset(tmp_path / "shards")
    assert ds.classes == [] and [ds[i][1] for i in range(3)] == [-1, -1, -1]
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as t:
        assert not any(n.endswith(".cls") for n in t.getnames())


def test_per_sample_seeding_and_rank_split_match_the_folder(tree: Path, tmp_path: Path):
    """What makes pretraining resumable and world-size independent holds for shards exactly as for folders."""
    make_shards(tree, tmp_path / "shards", shard_size=4)
    tf = pretrain_transform(16)
    folder = SeededSamples(build_dataset(tree, transform=tf), num_patches=4, seed=3)
    shards = SeededSamples(build_dataset(tmp_path / "shards", transform=tf), num_patches=4, seed=3)
    one = EpochSampler(len(shards), batch_size=4, seed=3)
    two = [EpochSampler(len(shards), batch_size=2, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 1):
        for s in (one, *two):
            s.set_epoch(epoch)
        for batch, b0, b1 in zip(one, *two):
            assert sorted(batch) == sorted(b0 + b1)  # the 2 ranks together see exactly the 1-process batch
            for key in batch:
                (x, z), (y, w) = shards[key], folder[key]
                assert torch.equal(x, y) and torch.equal(z, w)
    # A sampler resumed mid-epoch yields the remaining batches of the uninterrupted one.
    one.set_epoch(1)
    full = list(one)
    one.set_epoch(1, start_step=1)
    assert list(one) == full[1:]


def test_dataloader_workers_and_pickling(tree: Path, tmp_path: Path):
    make_shards(tree, tmp_path / "shards", shard_size=4)
    ds = build_dataset(tmp_path / "shards", transform=pretrain_transform(16))
    keys = [(0, i) for i in range(len(ds))]
    seeded = SeededSamples(ds, num_patches=4, seed=0)
    ref = torch.stack([seeded[k][0] for k in keys])  # opens shards in this process
    clone = pickle.loads(pickle.dumps(SeededSamples(ds, num_patches=4, seed=0)))  # memory maps are not pickled
    assert ds._open and not clone.dataset._open
    assert torch.equal(clone[(0, 3)][0], ref[3])
    loader = torch.utils.data.DataLoader(seeded, batch_sampler=[keys[:5], keys[5:]], num_workers=2)
    assert torch.equal(torch.cat([x for x, _ in loader]), ref)


def test_pretraining_on_shards_equals_pretraining_on_the_folder(tree: Path, tmp_path: Path):
    from crate_mae.training import load_config, pretrain

    make_shards(tree, tmp_path / "shards", shard_size=4)
    base = [
        "model.name=crate_mae_tiny",
        f"model.overrides={model_overrides({**TINY, 'depth': 1, 'decoder_depth': 1})}",
        "data.img_size=16",
        "data.split=null",
        "optim.batch_size=4",
        "optim.epochs=1",
        "optim.warmup_epochs=0",
        "run.log_every=1",
        "run.vis_every_epochs=0",
        "run.progress=false",
        "run.deterministic=true",
        "run.vis_images=2",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = pretrain(
            load_config(None, base + [f"data.path={tree}", "data.num_workers=0", f"run.output_dir={tmp_path / 'a'}"])
        )
        b = pretrain(
            load_config(
                None,
                base + [f"data.path={tmp_path / 'shards'}", "data.num_workers=2", f"run.output_dir={tmp_path / 'b'}"],
            )
        )
    finally:
        torch.set_num_threads(threads)
    assert a["steps"] == b["steps"] == 2
    assert a["weights_sha256"] == b["weights_sha256"]


# -- corrupt data ------------------------------------------------------------------------------------------------------
def test_make_shards_skips_and_records_unreadable_files(tree: Path, tmp_path: Path, caplog):
    write_truncated_jpeg(tree / "cat" / "1b.jpg")
    (tree / "dog" / "empty.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="crate_mae.data"):
        desc = make_shards(tree, tmp_path / "shards", shard_size=4)
    assert desc["crate_mae"]["skipped"] == ["cat/1b.jpg", "dog/empty.png"]
    assert desc["crate_mae"]["num_samples"] == 9 and sum(s["nsamples"] for s in desc["shardlist"]) == 9
    assert sum("skipping unreadable image" in r.getMessage() for r in caplog.records) == 2
    ds = build_dataset(tmp_path / "shards")
    assert len(ds) == 9 and ds.num_skipped == 0

    with pytest.raises(UnreadableImageError, match=r"1b\.jpg.*strict"):
        make_shards(tree, tmp_path / "strict", shard_size=4, strict=True)
    assert not (tmp_path / "strict" / MANIFEST_NAME).exists()  # an incomplete folder has no manifest
    with pytest.raises(FileNotFoundError, match=r"\.tar file\(s\) but no shards\.json"):
        build_dataset(tmp_path / "strict")


def _corrupt_member(shard: Path, member: str) -> None:
    """Overwrite a member's bytes in place (same length), as bit rot would."""
    with tarfile.open(shard) as t:
        info = t.getmember(member)
    data = bytearray(shard.read_bytes())
    data[info.offset_data : info.offset_data + info.size] = b"\x00" * info.size
    shard.write_bytes(bytes(data))


def test_undecodable_sample_is_skipped_like_a_bad_file(tree: Path, tmp_path: Path, caplog):
    out = tmp_path / "shards"
    make_shards(tree, out, shard_size=4)
    good = build_dataset(out)
    ref = [good[i] for i in range(len(good))]
    _corrupt_member(out / "shard-000001.tar", "000000005.jpg")
    ds = build_dataset(out)
    with caplog.at_level(logging.WARNING, logger="crate_mae.data"):
        for _epoch in range(2):
            got = [ds[i] for i in range(len(ds))]
    assert _same(got[5], ref[6])  # the next readable sample, every time
    assert all(_same(got[i], ref[i]) for i in range(len(ds)) if i != 5)
    assert ds.num_skipped == 1 and "shard-000001.tar sample 1 (index 5)" in ds.skipped_files[0]
    assert sum("skipping unreadable" in r.getMessage() for r in caplog.records) == 1
    strict = build_dataset(out, strict=True)
    with pytest.raises(UnreadableImageError, match=r"shard-000001\.tar sample 1 \(index 5\).*strict"):
        strict[5]


def test_truncated_shard_skips_all_its_samples(tree: Path, tmp_path: Path):
    out = tmp_path / "shards"
    make_shards(tree, out, shard_size=4)
    ref = build_dataset(out)[8]
    shard = out / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    ds = build_dataset(out)
    for i in range(4, 8):
        assert _same(ds[i], ref)  # the first sample of the next shard
    assert ds.num_skipped == 1 and "shard-000001.tar (all 4 samples)" in ds.skipped_files[0]
    with pytest.raises(UnreadableImageError, match=r"shard-000001\.tar.*strict"):
        build_dataset(out, strict=True)[6]
    # The last shard wraps around to the first sample.
    (out / "shard-000002.tar").write_bytes(b"")
    assert _same(build_dataset(out)[8], build_dataset(out)[0])


def test_every_shard_unreadable_is_an_error(tree: Path, tmp_path: Path):
    out = tmp_path / "shards"
    make_shards(tree, out, shard_size=5)
    for p in out.glob("*.tar"):
        p.write_bytes(b"garbage" * 100)
    with pytest.raises(UnreadableImageError, match="none of the 9 samples"):
        build_dataset(out)[0]


def test_missing_shard_fails_at_start(tree: Path, tmp_path: Path):
    out = tmp_path / "shards"
    make_shards(tree, out, shard_size=4)
    (out / "shard-000002.tar").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard-000002\.tar"):
        build_dataset(out)


# -- bad input ---------------------------------------------------------------------------------------------------------
def test_bad_manifests_are_named(tree: Path, tmp_path: Path):
    out = tmp_path / "shards"
    make_shards(tree, out, shard_size=4)
    manifest = out / MANIFEST_NAME
    desc = json.loads(manifest.read_text())
    cases = [
        ("{not json", "not a JSON shard manifest"),
        (json.dumps({"shardlist": desc["shardlist"]}), "wids_version 1"),
        (json.dumps({**desc, "shardlist": []}), "lists no shards"),
        (json.dumps({**desc, "shardlist": [{"url": "https://example.org/a.tar", "nsamples": 3}]}), "not a local file"),
        (json.dumps({**desc, "shardlist": [{"url": "shard-000000.tar", "nsamples": 0}]}), "positive 'nsamples'"),
    ]
    for text, match in cases:
        manifest.write_text(text)
        with pytest.raises(ValueError, match=match) as e:
            build_dataset(out)
        assert str(manifest) in str(e.value)


def test_manifest_file_as_path_and_split_errors(tree: Path, tmp_path: Path):
    make_shards(tree, tmp_path / "shards" / "train", shard_size=4)
    manifest = tmp_path / "shards" / "train" / MANIFEST_NAME
    assert len(build_dataset(manifest)) == 9 and len(build_dataset(tmp_path / "shards", split="train")) == 9
    with pytest.raises(ValueError, match="split='train' cannot apply"):
        build_dataset(manifest, split="train")
    with pytest.raises(FileNotFoundError, match=r"val/shards\.json"):
        build_dataset(tmp_path / "shards", split="val", kind="shards")
    with pytest.raises(FileNotFoundError, match=r"src/shards\.json"):
        build_dataset(tree, kind="shards")


def test_make_shards_bad_arguments(tree: Path, tmp_path: Path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="full already exists and is not empty"):
        make_shards(tree, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="shard size must be a positive integer.*0"):
        make_shards(tree, tmp_path / "x", shard_size=0)
    with pytest.raises(FileNotFoundError, match="nope"):
        make_shards(tmp_path / "nope", tmp_path / "y")
    with pytest.raises(ValueError, match="reads image folders"):
        make_shards(tree, tmp_path / "z", kind="cifar10")


def test_missing_extra_is_one_clear_line(tree: Path, tmp_path: Path, monkeypatch, capsys):
    make_shards(tree, tmp_path / "shards", shard_size=4)
    monkeypatch.setitem(sys.modules, "wids", None)  # import wids -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'crate-mae\[shards\]'"):
        build_dataset(tmp_path / "shards")
    monkeypatch.setitem(sys.modules, "webdataset", None)
    assert main(["make-shards", str(tree), str(tmp_path / "again")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "crate-mae[shards]" in err


# -- command line ------------------------------------------------------------------------------------------------------
def test_cli_make_shards_splits_and_check_data(tmp_path: Path, capsys):
    src = tmp_path / "data"
    _tree(src / "train")
    _tree(src / "val", counts=(("bird", 1), ("cat", 1), ("dog", 1)))
    out = tmp_path / "shards"
    assert (
        main(["make-shards", str(src), str(out), "--split", "train", "--split", "val", "--shard-size", "4", "--quiet"])
        == 0
    )
    text = capsys.readouterr().out
    assert "wrote 9 samples (3 classes)" in text and "into 3 shard(s)" in text and "wrote 3 samples" in text
    assert main(["check-data", str(out), "--split", "val", "--img-size", "16"]) == 0
    text = capsys.readouterr().out
    assert "kind: shards" in text and "samples: 3" in text and "unreadable files: 0" in text
    assert "shards: 1 (largest 3 samples)" in text and "skipped as unreadable: 0" in text
    _corrupt_member(out / "train" / "shard-000000.tar", "000000001.jpg")
    assert main(["check-data", str(out), "--split", "train", "--img-size", "16"]) == 1
    text = capsys.readouterr().out
    assert "unreadable files: 1" in text and "shard-000000.tar sample 1" in text
