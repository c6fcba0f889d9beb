"""The run engine, tested once on both tasks (pretraining and fine-tuning), in process, on tiny models and
in-memory data: what happens when a run is resumed with another config, two runs share a folder, weights turn NaN,
a checkpoint is damaged or written twice, the disk fills up, a resume lands mid-epoch."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess

import pytest
import torch
from _pretrain_tensors import TINY
from _pretrain_tensors import config as pretrain_config
from _pretrain_tensors import dataset as tensor_dataset
from safetensors.torch import load_file

from crate_mae.engine.run_lock import RunLock
from crate_mae.engine.run_state import STATE_NAME, find_latest_run_state, list_run_states
from crate_mae.engine.runner import NonFiniteLossError
from crate_mae.evaluation.finetune import finetune
from crate_mae.evaluation.finetune_config import load_finetune_config
from crate_mae.training import pretrain

TASKS = ["pretrain", "finetune"]
TINY_ENCODER = "{img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4}"
FT_BASE = [
    "data.path=in-memory",
    "data.num_workers=0",
    "run.progress=false",
    "run.deterministic=true",
    "run.log_every=1",
    f"model.overrides={TINY_ENCODER}",
    "model.drop_path_rate=0.1",
    "aug.rand_augment=null",
    "aug.mixup=0",
    "aug.cutmix=0",
    "aug.reprob=0",
    "optim.batch_size=8",
    "optim.epochs=2",
    "optim.warmup_epochs=1",
    "optim.lr=1e-3",
]


def labelled(n: int) -> torch.utils.data.Dataset:
    g = torch.Generator().manual_seed(7)
    y = torch.arange(n) % 2
    ds = torch.utils.data.TensorDataset(torch.rand(n, 3, 32, 32, generator=g) + 0.5 * y.view(-1, 1, 1, 1), y)
    ds.classes = ["a", "b"]
    return ds


def train(task: str, out, *overrides: str):
    if task == "pretrain":
        return pretrain(pretrain_config([f"run.output_dir={out}", *overrides]), dataset=tensor_dataset(), device="cpu")
    cfg = load_finetune_config(None, [*FT_BASE, f"run.output_dir={out}", *overrides])
    return finetune(cfg, labelled(48), labelled(16), device="cpu")


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def finite(ckpt) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(str(ckpt / "model.safetensors")).values())


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # identical arithmetic in every run of a test (bit-exact comparisons)
    yield
    torch.set_num_threads(n)


# -- NaN ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_nan_weights_are_never_checkpointed(task, tmp_path):
    """Without clipping an update can overflow Adam's moments and make the weights NaN while loss and gradient are
    finite; such a step must not become "the last good checkpoint"."""
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as e:
        train(
            task,
            out,
            "optim.lr=1e6" if task == "finetune" else "optim.blr=1e6",
            "optim.clip_grad=null",
            "run.ckpt_every_steps=1",
            "run.keep_checkpoints=1",
        )
    ckpts = list_run_states(out)
    assert all(finite(c) for c in ckpts)
    assert f"last good checkpoint ({ckpts[-1] if ckpts else 'none written yet'})" in str(e.value)
    assert "non-finite" in str(e.value) or "is nan" in str(e.value) or "is inf" in str(e.value)


# -- models kept at chosen epochs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_keep_epochs_keeps_the_model_of_those_epochs(task, tmp_path):
    """run.keep_epochs leaves the model of each listed epoch in our format (the budget-trend study probes them),
    equal to that epoch's end-of-epoch checkpoint, and nothing for other epochs."""
    import crate_mae

    out = tmp_path / "run"
    train(task, out, "run.keep_epochs=[1]", "run.keep_checkpoints=3")
    kept = out / "epochs" / "epoch_0001"
    assert sorted(p.name for p in (out / "epochs").iterdir()) == ["epoch_0001"]
    first_epoch_end = list_run_states(out)[0]  # checkpoints at the end of epochs 1 and 2
    a, b = load_file(str(kept / "model.safetensors")), load_file(str(first_epoch_end / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert crate_mae.from_pretrained(kept) is not None


# -- resuming with another config -----------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_resume_refuses_a_changed_config_unless_allowed(task, tmp_path, capsys):
    out = tmp_path / "run"
    train(task, out, "run.max_steps=3", "run.ckpt_every_steps=1")
    with pytest.raises(ValueError) as e:
        train(task, out, "run.resume=auto", "optim.batch_size=4", "run.seed=1")
    msg = str(e.value)
    assert "optim.batch_size: 8 -> 4" in msg and "run.seed: 0 -> 1" in msg and "--allow-config-change" in msg
    assert "\n" not in msg
    # bookkeeping keys may change; the flag lets a schedule change through, with a warning naming it
    result = train(
        task,
        out,
        "run.resume=auto",
        "optim.epochs=3",
        "run.log_every=2",
        "run.keep_checkpoints=3",
        "run.allow_config_change=true",
    )
    steps = result["steps"] if task == "pretrain" else result["details"]["steps"]
    assert steps == 18
    assert "optim.epochs: 2 -> 3" in capsys.readouterr().out


def test_keys_new_in_the_code_count_as_their_defaults(tmp_path):
    """A checkpoint written before a key existed resumes as long as the key keeps its default value."""
    out = tmp_path / "run"
    train("pretrain", out, "run.max_steps=2", "run.ckpt_every_steps=1")
    path = find_latest_run_state(out) / STATE_NAME
    state = torch.load(path, weights_only=True)
    for section, key in (("optim", "min_lr"), ("data", "hflip"), ("run", "knn_every_epochs")):
        del state["config"][section][key]
    torch.save(state, path)
    # norm_pix_loss is new to the saved overrides but is the constructor default
    summary = train("pretrain", out, "run.resume=auto", "model.overrides.norm_pix_loss=false")
    assert summary["steps"] == 12
    other = tmp_path / "other"
    train("pretrain", other, "run.max_steps=1")
    with pytest.raises(ValueError, match=r"model.overrides.norm_pix_loss: False -> True"):
        train("pretrain", other, "run.resume=auto", "model.overrides.norm_pix_loss=true")


def test_resume_with_another_width_names_the_mismatch(tmp_path):
    out = tmp_path / "run"
    train("pretrain", out, "run.max_steps=1")
    wide = TINY.replace("embed_dim: 32", "embed_dim: 64")
    with pytest.raises(ValueError, match=r"model.overrides.embed_dim: 32 -> 64"):
        train("pretrain", out, "run.resume=auto", f"model.overrides={wide}")
    mismatch = r"does not fit CrateMAE: shape mismatches \(\d+\): .*checkpoint \(32,\) vs model \(64,\)"
    with pytest.raises(ValueError, match=mismatch):
        train("pretrain", out, "run.resume=auto", f"model.overrides={wide}", "run.allow_config_change=true")


# -- two runs, one folder -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_a_second_run_on_the_same_folder_is_refused(task, tmp_path):
    out = tmp_path / "run"
    lock = RunLock(out)
    assert lock.acquire() is None
    try:
        with pytest.raises(
            ValueError,
            match=rf"in use by another run \(pid {os.getpid()} on host "
            rf"{socket.gethostname()}",
        ):
            train(task, out, "run.max_steps=1")
        assert not (out / "checkpoints").exists() and not (out / "config.yaml").exists()
    finally:
        lock.release()
    train(task, out, "run.max_steps=1")
    assert not (out / ".lock").exists()


def test_a_stale_lock_is_reported_and_taken_over(tmp_path, capsys):
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "yesterday"}))
    train("pretrain", out, "run.max_steps=1")
    printed = capsys.readouterr().out
    assert f"pid {dead.pid} on host {socket.gethostname()}" in printed and "ended without releasing it" in printed


# -- damaged checkpoints, full disks --------------------------------------------------------------------------------
def test_resume_auto_falls_back_past_a_damaged_checkpoint(tmp_path, capsys):
    ref = train("pretrain", tmp_path / "ref")
    out = tmp_path / "run"
    train("pretrain", out, "run.max_steps=5", "run.ckpt_every_steps=1", "run.keep_checkpoints=3")
    newest = find_latest_run_state(out)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # torn by a failing disk after it was complete
    with pytest.raises(ValueError, match=str(weights)):  # asked for by name: no silent substitute
        train("pretrain", out, f"run.resume={newest}")
    summary = train("pretrain", out, "run.resume=auto", "run.ckpt_every_steps=1", "run.keep_checkpoints=3")
    printed = capsys.readouterr().out
    assert f"skipping a damaged checkpoint: {weights} is damaged" in printed
    assert "step_00000004" in printed  # resumed from the newest readable one
    assert summary["weights_sha256"] == ref["weights_sha256"]


def test_a_pickled_training_state_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    train("pretrain", out, "run.max_steps=2", "run.ckpt_every_steps=1")
    newest = find_latest_run_state(out)
    torch.save({"step": 2, "payload": subprocess.CompletedProcess([], 0)}, newest / STATE_NAME)  # not tensors
    with pytest.raises(ValueError) as e:
        train("pretrain", out, f"run.resume={newest}")
    msg = str(e.value)
    assert f"{newest / STATE_NAME} holds Python objects" in msg and "weights_only" not in msg and "\n" not in msg
    assert train("pretrain", out, "run.resume=auto")["steps"] == 12  # auto: falls back to step 1
    assert "skipping a damaged checkpoint" in capsys.readouterr().out


def test_disk_full_keeps_every_written_checkpoint(tmp_path, monkeypatch):
    from crate_mae.utils import NoSpaceError

    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "run"
    with pytest.raises(NoSpaceError) as e:
        train("pretrain", out, "run.ckpt_every_steps=1")
    msg = str(e.value)
    assert "no space left on device while writing" in msg and ".tmp-step_00000002" in msg
    assert "newest: " + str(out / "checkpoints" / "step_00000001") in msg
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000001"]  # the torn one is gone
    monkeypatch.setattr(torch, "save", real)
    assert train("pretrain", out, "run.resume=auto")["steps"] == 12


def test_same_step_saved_twice_leaves_a_complete_checkpoint_at_every_instant(tmp_path, monkeypatch):
    """The second save of a step must never delete the first before the second is in place (keep=1)."""
    import shutil

    import crate_mae
    from crate_mae.engine.run_state import save_run_state

    model = crate_mae.create_model(
        "crate_mae_tiny", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4, decoder_depth=1
    )
    save_run_state(tmp_path, model, {"step": 5, "tag": "first"}, keep=1)

    def intact():
        latest = find_latest_run_state(tmp_path)
        assert latest is not None and torch.load(latest / STATE_NAME, weights_only=True)["step"] == 5

    def checked(fn):
        def wrapper(*args, **kwargs):
            intact()
            result = fn(*args, **kwargs)
            intact()
            return result

        return wrapper

    monkeypatch.setattr(shutil, "rmtree", checked(shutil.rmtree))
    monkeypatch.setattr(os, "replace", checked(os.replace))
    save_run_state(tmp_path, model, {"step": 5, "tag": "second"}, keep=1)
    monkeypatch.undo()
    (latest,) = list_run_states(tmp_path)
    assert torch.load(latest / STATE_NAME, weights_only=True)["tag"] == "second"


# -- mid-epoch resume -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_epoch_mean_loss_spans_a_mid_epoch_resume(task, tmp_path):
    out = tmp_path / "run"
    train(task, out, "run.max_steps=2", "run.ckpt_every_steps=1")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.')  # a row cut short by a kill
    train(task, out, "run.resume=auto")
    log = rows(out)
    steps = [r for r in log if "event" not in r and r["epoch"] <= 1]
    (epoch1,) = [r for r in log if r.get("event") == "epoch" and r["epoch"] == 1]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert epoch1["loss"] == pytest.approx(sum(r["loss"] for r in steps) / 6, rel=1e-6)


# -- flags and precision --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_deterministic_is_honoured_while_training_and_restored_after(task, tmp_path, monkeypatch):
    from crate_mae.engine import runner as engine

    seen = []
    step = engine.Runner._step

    def spy(self, loss_acc):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return step(self, loss_acc)

    monkeypatch.setattr(engine.Runner, "_step", spy)
    before = torch.are_deterministic_algorithms_enabled()
    train(task, tmp_path / "run", "run.max_steps=2", "run.deterministic=true")
    assert seen == [True, True] and torch.are_deterministic_algorithms_enabled() == before


@pytest.mark.parametrize("task", TASKS)
def test_grad_checkpointing_trains_to_the_same_weights(task, tmp_path, monkeypatch):
    """run.grad_checkpointing recomputes every block in backward (drop path included: fine-tuning runs with
    drop_path_rate 0.1, whose RNG checkpointing replays) and ends two steps with the very same weights."""
    import crate_mae.models.base as crate  # run_blocks lives there

    calls = []
    real = crate.checkpoint
    monkeypatch.setattr(crate, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    train(task, tmp_path / "plain", "run.max_steps=2")
    assert not calls
    train(task, tmp_path / "ckpt", "run.max_steps=2", "run.grad_checkpointing=true")
    assert len(calls) == 2 * (4 if task == "pretrain" else 2)  # every block of every step
    a, b = (load_file(str(list_run_states(tmp_path / r)[-1] / "model.safetensors")) for r in ("plain", "ckpt"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_progress_off_a_terminal_prints_lines_not_frames(tmp_path, capsys):
    train("pretrain", tmp_path / "run", "run.progress=true")
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out
    assert "epoch 1/2" in captured.out  # the summary the engine prints itself


def test_output_dir_that_is_a_file_is_named(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ValueError, match=r"run.output_dir = '.*taken' is a file, not a folder"):
        train("pretrain", tmp_path / "taken")


def test_run_files_are_as_readable_as_plain_files(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        train("pretrain", out, "run.max_steps=1")
    finally:
        os.umask(old)
    files = [
        out / "config.yaml",
        out / "metrics.jsonl",
        out / "model" / "model.safetensors",
        out / "model" / "config.json",
        *find_latest_run_state(out).iterdir(),
    ]
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {"0o644"}


# -- collectives under torchrun -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_collectives_under_torchrun(tmp_path):
    """2 processes, gloo: gradient sync once per optimizer step, one all-reduce per step, rank 0's clock decides,
    a NaN on one rank stops every rank (the others would otherwise wait in the next collective forever)."""
    import sys
    from pathlib import Path

    from processes import free_port, repeatable_env

    script = Path(__file__).with_name("_engine_ranks.py")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(script),
        str(tmp_path),
    ]
    p = subprocess.run(cmd, env=repeatable_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for task in TASKS:
        one, two = r0[f"{task}_accum1"], r0[f"{task}_accum2"]
        assert one["steps"] == two["steps"] == 3, (one, two)
        assert two["grad_all_reduce"] == one["grad_all_reduce"] > 0  # no_sync covers forward and backward
        assert two["broadcast_buffers"] is False
    p2 = r0["pretrain_accum2"]  # loss, grad norm and stop flag travel together: one all-reduce a step
    assert p2["all_reduce"] - p2["grad_all_reduce"] == 3
    for r in (r0, r1):
        assert (r["rank1_late_clock"]["stopped"], r["rank1_late_clock"]["steps"]) == ("max_steps", 4)
        assert (r["rank0_late_clock"]["stopped"], r["rank0_late_clock"]["steps"]) == ("max_minutes", 1)
    err = r0["finetune_nan_on_rank1"].get("error", "")
    assert "NonFiniteLossError: loss is nan at epoch 0, optimizer step 0" in err
    assert r1["finetune_nan_on_rank1"].get("error") == err


# -- online k-NN monitoring -----------------------------------------------------------------------------------------
def test_online_knn_probe_is_logged_and_leaves_training_unchanged(tmp_path):
    import numpy as np
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k, name in enumerate(("red", "blue")):
            (tmp_path / "labelled" / split / name).mkdir(parents=True)
            for i in range(6):
                img = rng.integers(0, 100, (32, 32, 3))
                img[..., 2 * k] += 150
                Image.fromarray(img.astype(np.uint8)).save(tmp_path / "labelled" / split / name / f"{i}.png")
    plain = train("pretrain", tmp_path / "plain")
    watched = train(
        "pretrain", tmp_path / "knn", "run.knn_every_epochs=1", f"run.knn_data={tmp_path / 'labelled'}", "run.knn_k=3"
    )
    knn_rows = [r for r in rows(tmp_path / "knn") if r.get("event") == "knn"]
    assert [r["epoch"] for r in knn_rows] == [1, 2] and [r["step"] for r in knn_rows] == [6, 12]
    assert all(
        0 <= r[f"{p}top1"] <= 100 and r[f"{p}top5"] == 100.0  # 2 classes: top-5 is certain
        for r in knn_rows
        for p in ("", "mean_")
    )
    assert watched["knn"] == {
        "top1": knn_rows[-1]["top1"],
        "top5": 100.0,
        "mean_top1": knn_rows[-1]["mean_top1"],
        "mean_top5": 100.0,
    }
    events = EventAccumulator(str(tmp_path / "knn" / "tb")).Reload()
    assert [e.step for e in events.Scalars("knn/top1")] == [1, 2]
    assert [e.step for e in events.Scalars("knn/mean_top1")] == [1, 2]
    assert watched["weights_sha256"] == plain["weights_sha256"]  # monitoring does not perturb training


# -- fitting the run to a time budget (run.fit_to_minutes) ----------------------------------------------------------
class StepClock:
    """The run's stopwatch, advanced by ``cost(step)`` seconds per optimizer step: how fast the machine is, decided
    by the test and not by the machine."""

    def __init__(self, cost):
        self.t, self.cost = 0.0, cost

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def step_clock(monkeypatch):
    from crate_mae.engine import runner as engine

    def install(cost):
        fake = StepClock(cost)
        step = engine.Runner._step

        def timed(self, loss_acc):
            fake.t += fake.cost(self.state.step)
            return step(self, loss_acc)

        monkeypatch.setattr(engine, "clock", fake)
        monkeypatch.setattr(engine.Runner, "_step", timed)
        return fake

    return install


def lrs(out) -> list[float]:
    return [r["lr"] for r in rows(out) if "event" not in r]


@pytest.mark.parametrize("task", TASKS)
def test_the_run_fits_its_length_to_the_budget_from_its_measured_steps(task, tmp_path, step_clock):
    """1 s per step and a one-minute budget: 60 steps, whatever optim.epochs said (2 epochs = 12 steps here), the
    cosine ending at the last step. Warm-up (6 steps) is measured, then the plan is refitted every 6 steps."""
    step_clock(lambda step: 1.0)
    out = tmp_path / "run"
    result = train(task, out, "run.fit_to_minutes=1", "optim.min_lr=0")
    steps = result["steps"] if task == "pretrain" else result["details"]["steps"]
    assert steps == 60
    plans = [r for r in rows(out) if r.get("event") == "plan"]
    assert plans[0]["step"] == 6 and plans[0]["s_per_step"] == pytest.approx(1.0)
    assert {p["total_steps"] for p in plans} == {60}
    lr = lrs(out)
    assert len(lr) == 60 and lr[-1] < 0.01 * max(lr)  # the cosine reached its end with the budget
    assert all(a >= b for a, b in zip(lr[6:], lr[7:]))  # falling from the end of warm-up on


def test_a_machine_that_slows_down_moves_the_end_and_the_lr_stays_continuous(tmp_path, step_clock):
    step_clock(lambda step: 1.0 if step < 30 else 2.0)
    out = tmp_path / "run"
    summary = train("pretrain", out, "run.fit_to_minutes=1", "optim.min_lr=0")
    # steps 1-30 take 30 s; the window of steps 31-36 measures 2 s per step: 36 + (60 - 42) / 2 = 45
    assert summary["steps"] == 45 and summary["plan"]["total_steps"] == 45
    lr = lrs(out)
    drops = [a - b for a, b in zip(lr[6:], lr[7:])]
    assert min(drops) >= 0 and max(drops) < 0.2 * max(lr)  # monotone, no jump where the end moved


def test_a_busy_machine_still_trains_the_minimum_number_of_steps_and_says_so(tmp_path, step_clock, capsys):
    step_clock(lambda step: 10.0)  # 10 s per step: the 1-minute budget holds 6 steps
    out = tmp_path / "run"
    summary = train("pretrain", out, "run.fit_to_minutes=1", "run.min_steps=20", "run.max_minutes=2")
    assert summary["steps"] == 20 and summary["stopped"] == "completed"  # max_minutes does not cut the minimum
    (first, *_) = [r for r in rows(out) if r.get("event") == "plan"]
    assert first["fitted_steps"] == 6 and first["total_steps"] == 20
    assert capsys.readouterr().out.count("guaranteed minimum of run.min_steps = 20") == 1


def test_a_resumed_fitted_run_keeps_its_schedule_and_its_spent_budget(tmp_path, step_clock):
    step_clock(lambda step: 1.0)
    out = tmp_path / "run"
    train("pretrain", out, "run.fit_to_minutes=1", "run.max_steps=20", "run.ckpt_every_steps=5")
    summary = train("pretrain", out, "run.fit_to_minutes=1", "run.resume=auto")  # optim.epochs differs: allowed
    assert summary["steps"] == 60
    lr = lrs(out)
    assert len(lr) == 60 and all(a >= b for a, b in zip(lr[6:], lr[7:]))


def test_fitting_needs_a_warm_up(tmp_path):
    with pytest.raises(ValueError, match="optim.warmup_epochs = 0: must be > 0 with run.fit_to_minutes"):
        train("pretrain", tmp_path / "run", "run.fit_to_minutes=1", "optim.warmup_epochs=0")


@pytest.mark.parametrize("busy", [True, False])
def test_auto_threads_keep_the_count_whose_steps_were_faster(tmp_path, step_clock, busy):
    """run.threads=auto alternates all threads and one over the first 8 steps, keeps the faster for the rest, and
    gives torch its thread count back after the run. Busy: one thread 3x faster; idle: two threads faster."""
    cost = {1: 0.2, 2: 0.6} if busy else {1: 0.2, 2: 0.12}
    seen = []
    step_clock(lambda step: seen.append(torch.get_num_threads()) or cost[torch.get_num_threads()])
    torch.set_num_threads(2)
    out = tmp_path / "run"
    train("pretrain", out, "run.threads=auto")
    assert torch.get_num_threads() == 2
    assert seen[:8] == [2, 1] * 4 and set(seen[8:]) == {1 if busy else 2}
    (row,) = [r for r in rows(out) if r.get("event") == "threads"]
    assert row["threads"] == (1 if busy else 2) and row["ms_per_step"] == pytest.approx(
        {str(k): 1000 * v for k, v in cost.items()}
    )
