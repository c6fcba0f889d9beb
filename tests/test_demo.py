"""crate_mae/demo.py: `crate-mae demo --quick` end to end, and how the demo sizes its run to the time budget."""

import pytest
import torch

import crate_mae
from crate_mae.cli import main


@pytest.mark.slow
def test_demo_quick_through_cli(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (out / "reconstruction.png").stat().st_size > 1000
    assert (out / "model" / "model.safetensors").is_file() and (out / "metrics.jsonl").is_file()
    assert "on the 4 fixed training crops with fixed masks" in printed and str(out / "reconstruction.png") in printed
    assert "its reconstruction MSE is on other images" in printed  # the two losses say what they measure
    model = crate_mae.from_pretrained(out / "model")
    assert model.data_config["img_size"] == 32  # normalisation saved for analysis tools
    assert (out / "report" / "index.html").is_file() and "white-box report" in printed


class _Clock:
    """A fake stopwatch: every reading advances it by ``tick`` (the compute of a step); reading images advances it
    by their decoding cost. Nothing here depends on how fast the machine is."""

    def __init__(self, tick: float):
        self.t, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t - self.tick


class _Images(torch.utils.data.Dataset):
    """64 random 32-px images; each read costs ``cost`` seconds on ``clock`` (a slow decoder)."""

    def __init__(self, clock: _Clock, cost: float):
        self.clock, self.cost = clock, cost

    def __len__(self):
        return 64

    def __getitem__(self, i):
        self.clock.t += self.cost
        return torch.randn(3, 32, 32), 0


def _budget_cfg(*extra):
    from crate_mae.demo import demo_config_path
    from crate_mae.training import load_config

    return load_config(
        demo_config_path(),
        [
            "optim.batch_size=8",
            "model.overrides.embed_dim=32",
            "model.overrides.depth=1",
            "model.overrides.decoder_depth=1",
            *extra,
        ],
    )


def test_epoch_budget_counts_data_loading_time():
    from crate_mae.demo import epochs_for_budget

    cfg = _budget_cfg()
    for cost, expected_step in ((0.0, 0.01), (0.02, 0.01 + 8 * 0.02)):  # 8 images of `cost` each per step
        clock = _Clock(tick=0.01)
        epochs, warmup = epochs_for_budget(cfg, 1.0, 64, dataset=_Images(clock, cost), device="cpu", clock=clock)
        assert epochs == int(60 / (expected_step * 1.05) / 8), (cost, epochs)
        assert warmup == round(epochs * cfg.optim.warmup_epochs / cfg.optim.epochs, 2)


def test_epoch_budget_is_timed_in_the_training_precision(monkeypatch):
    """The timed steps run under the autocast training will use (bf16 here), not a fixed CPU fp32 model."""
    import crate_mae.demo
    from crate_mae.demo import epochs_for_budget

    seen = []
    create = crate_mae.demo.create_model

    def spy(*args, **kwargs):
        model = create(*args, **kwargs)
        model.register_forward_pre_hook(
            lambda m, a: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        )
        return model

    monkeypatch.setattr(crate_mae.demo, "create_model", spy)
    clock = _Clock(tick=0.01)
    epochs_for_budget(_budget_cfg("run.amp=bf16"), 1.0, 64, dataset=_Images(clock, 0.0), device="cpu", clock=clock)
    assert seen and all(s == (True, torch.bfloat16) for s in seen)


def test_the_demo_fits_its_length_to_the_budget_and_keeps_a_minimum(monkeypatch, tmp_path):
    """run_demo hands the budget to the run (fitted from measured steps, run.fit_to_minutes) instead of predicting
    epochs, guards it at twice the budget, keeps demo.yaml's minimum number of steps, and lets the run choose its
    thread count by timing its first steps (run.threads=auto)."""
    import crate_mae.demo as demo

    seen = {}

    def fake_pretrain(cfg):
        seen["cfg"] = cfg
        raise RuntimeError("stop here")

    monkeypatch.setattr(demo, "pretrain", fake_pretrain)
    with pytest.raises(RuntimeError, match="stop here"):
        demo.run_demo(tmp_path / "d", minutes=2.5)
    r = seen["cfg"].run
    assert (r.fit_to_minutes, r.max_minutes, r.min_steps, r.threads) == (2.5, 5.0, 400, "auto")
