"""End-to-end pretraining runs on a tiny model and 48 random 32 px images (subprocesses, so each run gets the same
single-threaded float arithmetic and can be killed)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from processes import free_port, repeatable_env
from safetensors.torch import load_file

from crate_mae.engine.run_state import find_latest_run_state, list_run_states, load_training_state

SCRIPT = Path(__file__).parents[1] / "_pretrain_tensors.py"


def run(out: Path, *overrides: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [sys.executable, str(SCRIPT), f"run.output_dir={out}", *overrides],
        env=repeatable_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=240,
    )
    if check and p.returncode != 0:
        raise AssertionError(f"run failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


def summary(out: Path, rank: int = 0) -> dict:
    return json.loads((out / f"summary_rank{rank}.json").read_text())


def test_run_folder_contents_and_learning(tmp_path):
    out = tmp_path / "run"
    run(out, "run.ckpt_every_steps=4", "run.vis_every_epochs=1", "run.vis_images=2", "optim.epochs=3")
    s = summary(out)
    assert s["steps"] == 18 and s["epochs"] == 3 and s["stopped"] == "completed"
    assert s["effective_batch"] == 8 and s["lr"] == pytest.approx(1e-2 * 8 / 256)
    assert s["fixed_loss_after"] < 0.9 * s["fixed_loss_before"]  # it learns the gradient pattern
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "event" not in r]
    assert steps == list(range(1, 19))
    assert all({"loss", "lr", "img_per_s"} <= r.keys() for r in rows if "event" not in r)
    assert [r["epoch"] for r in rows if r.get("event") == "epoch"] == [1, 2, 3]
    assert {p.name for p in (out / "recon").iterdir()} == {"epoch_0001.png", "epoch_0002.png", "epoch_0003.png"}
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "config.yaml").is_file()
    ckpts = list_run_states(out)
    assert [p.name for p in ckpts] == ["step_00000016", "step_00000018"]  # every 4 steps + epoch ends, keep 2
    state = load_training_state(ckpts[-1])  # weights_only=True inside
    assert (state["step"], state["epoch"], state["iter_in_epoch"]) == (18, 3, 0)
    cfg = json.loads((ckpts[-1] / "config.json").read_text())
    assert cfg["data"]["img_size"] == 32 and len(cfg["data"]["mean"]) == 3
    import crate_mae

    model = crate_mae.from_pretrained(out / "model")
    assert torch.equal(model.state_dict()["mask_token"], weights(out)["mask_token"])


@pytest.mark.slow
def test_kill_and_resume_is_bit_exact(tmp_path):
    ref = tmp_path / "ref"
    run(ref, "run.ckpt_every_steps=1")
    out = tmp_path / "killed"
    kill_after = random.Random(20).randint(2, 9)  # optimizer steps (of 12); seeded so a failure reproduces
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), f"run.output_dir={out}", "run.ckpt_every_steps=1"],
        env=repeatable_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        latest = find_latest_run_state(out)
        if latest is not None and int(latest.name.split("_")[1]) >= kill_after:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists()
    killed_at = load_training_state(find_latest_run_state(out))["step"]
    assert killed_at < 12
    run(out, "run.ckpt_every_steps=1", "run.resume=auto")
    a, b = weights(ref), weights(out)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), f"weights differ after kill at step {killed_at} and resume"
    assert summary(ref)["weights_sha256"] == summary(out)["weights_sha256"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "event" not in r] == list(range(1, 13))  # no duplicated rows after resume


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "nan"
    # One poisoned sample; the data order is a function of the seed, so the failing step is known in advance.
    from crate_mae.engine.sampling import EpochSampler

    batches = list(EpochSampler(48, 8, seed=0))
    bad_step = next(i for i, b in enumerate(batches) if (0, 5) in b) + 1
    p = run(out, "run.ckpt_every_steps=1", env={"NAN_AT": "5"}, check=False)
    assert p.returncode != 0
    assert f"loss is nan at epoch 0, optimizer step {bad_step - 1}" in p.stderr
    assert "last good checkpoint" in p.stderr
    ckpts = list_run_states(out)
    assert [load_training_state(c)["step"] for c in ckpts] == list(range(max(1, bad_step - 2), bad_step))
    for ckpt in ckpts:  # every checkpoint written holds finite weights
        w = load_file(str(ckpt / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in w.values())
    if ckpts:
        assert str(ckpts[-1]) in p.stderr
    assert not (out / "model").exists()


def test_resume_auto_picks_newest_complete(tmp_path):
    from crate_mae.engine.run_state import STATE_NAME, resolve_resume

    out = tmp_path / "run"
    run(out, "run.ckpt_every_steps=2", "run.keep_checkpoints=3", "optim.epochs=1")
    ckpts = list_run_states(out)
    assert [p.name for p in ckpts] == ["step_00000002", "step_00000004", "step_00000006"]
    # A newer but incomplete checkpoint (crash before the training state was written) and a torn temp folder.
    broken = out / "checkpoints" / "step_00000008"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"partial")
    (out / "checkpoints" / ".tmp-step_00000010-1").mkdir()
    assert resolve_resume("auto", out) == ckpts[-1]
    assert resolve_resume(str(ckpts[0] / STATE_NAME), out) == ckpts[0]
    assert resolve_resume("auto", tmp_path / "fresh") is None
    with pytest.raises(FileNotFoundError, match="step_00000008"):
        resolve_resume(str(broken), out)
    # Resuming the finished 1-epoch run for a second epoch (a schedule change, so it must be allowed) continues from
    # step 6, skipping the broken folder.
    run(out, "run.resume=auto", "run.ckpt_every_steps=2", "optim.epochs=2", "run.allow_config_change=true")
    s = summary(out)
    assert s["steps"] == 12 and s["first_loss"] is not None


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_double_batch(tmp_path):
    one = tmp_path / "one"
    run(one, "optim.batch_size=8", "optim.epochs=1")
    two = tmp_path / "two"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(SCRIPT),
        f"run.output_dir={two}",
        "optim.batch_size=4",
        "optim.epochs=1",
    ]
    p = subprocess.run(cmd, env=repeatable_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    s0, s1, s = summary(two, 0), summary(two, 1), summary(one)
    assert s0["world_size"] == 2 and s0["effective_batch"] == 8 == s["effective_batch"]
    assert s0["lr"] == s["lr"] and s0["steps"] == s["steps"] == 6
    assert s0["weights_sha256"] == s1["weights_sha256"]  # replicas identical
    a, b = weights(one), weights(two)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs between 1x8 and 2x4")
    assert s0["last_loss"] == pytest.approx(s["last_loss"], rel=1e-4)


def test_a_cached_image_folder_trains_and_resumes_as_the_files_do(tmp_path, monkeypatch):
    """data.cache decodes the folder once; the run (and a run stopped and resumed) ends with the weights of a run
    that reads every file every time."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "data"))
    from _data_files import write_image
    from _pretrain_tensors import config

    from crate_mae.training import pretrain

    for i in range(24):
        write_image(tmp_path / "data" / "train" / f"{i:02d}.{'jpg' if i % 3 else 'png'}", i, size=(40, 36))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:

        def train(name: str, *overrides: str) -> dict:
            return pretrain(
                config(
                    [
                        "data.demo=false",
                        f"data.path={tmp_path / 'data'}",
                        f"run.output_dir={tmp_path / name}",
                        *overrides,
                    ]
                ),
                device="cpu",
            )

        files = train("files", "data.cache=false")
        cached = train("cached", "data.cache=true")
        train("resumed", "data.cache=true", "run.max_steps=4", "run.ckpt_every_steps=1")
        resumed = train("resumed", "data.cache=true", "run.resume=auto")
    finally:
        torch.set_num_threads(threads)
    assert files["steps"] == resumed["steps"] == 6
    assert files["weights_sha256"] == cached["weights_sha256"] == resumed["weights_sha256"]
