"""torch.compile on the CPU: no graph breaks in a training forward of either model in either masking frame, and a
compiled training step through the run engine (``run.compile=true``) equals the eager one."""

from __future__ import annotations

import shutil

import pytest
import torch
from _pretrain_tensors import config, dataset
from safetensors.torch import load_file

import crate_mae
from crate_mae.engine.run_state import list_run_states
from crate_mae.training import pretrain

MICRO = dict(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_depth=1)
VIT = dict(decoder_embed_dim=32, decoder_num_heads=2, mlp_ratio=2.0)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", ["crate_mae_tiny", "vit_mae_base"])
@pytest.mark.parametrize("mask_tokens_in_encoder", [True, False])
def test_training_forward_has_no_graph_breaks(name, mask_tokens_in_encoder):
    import torch._dynamo as dynamo

    kw = {**MICRO, **(VIT if name.startswith("vit") else {})}
    model = crate_mae.create_model(name, mask_tokens_in_encoder=mask_tokens_in_encoder, **kw).train()
    dynamo.reset()
    found = dynamo.explain(model)(torch.randn(2, 3, 16, 16), mask_ratio=0.75, noise=torch.rand(2, 4))
    assert found.graph_break_count == 0, [str(r.reason).splitlines()[0] for r in found.break_reasons]
    assert found.graph_count == 1


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="inductor needs a C++ compiler")
def test_compiled_training_step_equals_eager(tmp_path):
    """One optimizer step of the engine with run.compile=true (inductor) against eager: the loss and every updated
    weight. The learning rate is high enough that the update is far above the tolerance."""
    import torch._dynamo as dynamo

    runs = {}
    for mode in ("eager", "compiled"):
        dynamo.reset()
        out = tmp_path / mode
        runs[mode] = pretrain(
            config(
                [
                    f"run.output_dir={out}",
                    "run.max_steps=1",
                    "optim.warmup_epochs=0",
                    f"run.compile={mode == 'compiled'}",
                ]
            ),
            dataset=dataset(),
            device="cpu",
        )
        runs[mode]["weights"] = load_file(str(list_run_states(out)[-1] / "model.safetensors"))
    before = crate_mae.create_model("crate_mae_tiny", img_size=32, **_tiny()).state_dict()
    eager, compiled = runs["eager"], runs["compiled"]
    assert compiled["first_loss"] == pytest.approx(eager["first_loss"], rel=1e-5)
    moved = max((eager["weights"][k] - before[k]).abs().max().item() for k in before)
    assert 1e-4 < moved < 1e-3  # one Adam step moves a weight by about lr = 3.1e-4: the step is real, `before` right
    for k, w in eager["weights"].items():
        torch.testing.assert_close(compiled["weights"][k], w, rtol=1e-4, atol=1e-6, msg=k)


def _tiny() -> dict:
    import yaml
    from _pretrain_tensors import TINY

    torch.manual_seed(0)  # the engine seeds with run.seed = 0 before building the model
    return yaml.safe_load(TINY)
