from __future__ import annotations

from pathlib import Path

from _data_files import write_truncated_jpeg

from crate_mae.data.__main__ import main


def test_check_command_reports_unreadable_files(image_tree: Path, capsys):
    assert main([str(image_tree), "--split", "train", "--img-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "kind: imagefolder   samples: 5   classes: 2 ['cat', 'dog']" in out and "unreadable files: 0" in out
    bad = write_truncated_jpeg(image_tree / "train" / "dog" / "zz.jpg")
    assert main([str(image_tree), "--split", "train", "--img-size", "8", "--transform", "pretrain"]) == 1
    out = capsys.readouterr().out
    assert "decoded 6 samples" in out and f"unreadable: {bad}" in out


def test_check_command_missing_path(tmp_path: Path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err


def test_check_command_restores_thread_count(image_tree: Path):
    import torch

    before = torch.get_num_threads()
    main([str(image_tree), "--split", "val", "--img-size", "8"])
    assert torch.get_num_threads() == before
