from PIL import Image

from crate_mae.cli import main


def test_check_data_reports_unreadable_files(tmp_path, capsys):
    for i in range(3):
        Image.new("RGB", (40, 40), (i * 50, 10, 10)).save(tmp_path / f"ok{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["check-data", str(tmp_path), "--img-size", "32"]) == 1
    out = capsys.readouterr().out
    assert "samples: 4" in out and "unreadable files: 1" in out


def test_check_data_missing_path(tmp_path, capsys):
    assert main(["check-data", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
