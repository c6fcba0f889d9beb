"""What every command promises before it does anything: --help, packaged configs by name, `python -m` entry points."""

import subprocess
import sys

import pytest

import crate_mae
from crate_mae.cli import build_parser, main
from crate_mae.engine.config import packaged_configs, resolve_config


def commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(sub.choices)


@pytest.mark.parametrize("command", commands())
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"crate-mae {command}" in capsys.readouterr().out


def test_packaged_configs_resolve_by_name_and_are_listed_in_help(capsys):
    names = packaged_configs()
    assert {"pretrain_cifar", "pretrain_photos", "demo", "finetune_cifar"} <= set(names)
    assert resolve_config("pretrain_photos") == names["pretrain_photos"]
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "pretrain_photos" in text and "pretrain_cifar" in text


def test_a_local_file_wins_over_a_packaged_config_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pretrain_cifar").write_text("optim: {epochs: 3}\n")
    assert resolve_config("pretrain_cifar").resolve() == tmp_path / "pretrain_cifar"


def test_an_unknown_config_name_lists_the_packaged_ones():
    with pytest.raises(FileNotFoundError, match="pretrain_photos"):
        resolve_config("pretrain_nothing")


def test_hub_is_reachable_from_the_package():
    assert callable(crate_mae.io.push_to_hub)
    with pytest.deprecated_call():  # the old place, for one release
        assert callable(crate_mae.hub.push_to_hub)


@pytest.mark.parametrize("module", ["crate_mae", "crate_mae.cli"])
def test_python_dash_m_runs_the_command_line(module):
    out = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("crate-mae ")


def test_pretrain_cli_reports_bad_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim: {batch_size: 0}\ndata: {demo: true}\n")
    assert main(["pretrain", "--config", str(cfg), "run.amp=fp8"]) == 1
    err = capsys.readouterr().err
    assert "optim.batch_size" in err and "run.amp" in err
