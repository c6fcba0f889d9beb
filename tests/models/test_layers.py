"""The position table, the two ISTA product orders and precision behaviour of the layers."""

import numpy as np
import pytest
import torch

import crate_mae
from crate_mae.models import sincos_pos_embed
from crate_mae.models.layers import ISTA, StepMatrix, one_product_is_cheaper
from crate_mae.models.official import ISTA as OfficialISTA
from crate_mae.models.official import official_copy, official_to_ours, to_official


def to_official_grads(model):
    """Our gradients under the official parameter names."""
    ours = {n: p.grad for n, p in model.named_parameters()}
    return {k: ours[official_to_ours(k)] for k in to_official(model) if official_to_ours(k) in ours}


def _mae_table(d, h, w):
    """facebookresearch/mae's construction, written independently: meshgrid(w, h) so that the FIRST half of the
    channels is driven by the column index, the second by the row index; omega = 1 / 10000^(i / (d/4))."""
    gw, gh = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))  # 'xy' indexing

    def one(pos):
        omega = 1.0 / 10000 ** (np.arange(d // 4, dtype=np.float64) / (d / 4.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    table = np.concatenate([one(gw), one(gh)], axis=1)
    return np.concatenate([np.zeros([1, d]), table], axis=0)


@pytest.mark.parametrize("d,h,w", [(768, 14, 14), (64, 8, 8), (32, 3, 5)])
def test_sincos_table_matches_mae_construction(d, h, w):
    ours = sincos_pos_embed(d, (h, w))
    torch.testing.assert_close(ours, torch.from_numpy(_mae_table(d, h, w)).float(), rtol=0, atol=0)


def test_full_base_preset_at_224_equals_the_official_computation():
    """The full crate_mae_base (12+12 layers, 768 wide, 196 patches) against the transcription of the official code
    with the same weights: forward outputs and every gradient.

    Gradients pass 24 layers of different kernels (SDPA and one ISTA product against explicit attention and three
    products), so they are compared by relative error over the whole tensor, ||ours - official|| <= 1e-3 ||official||:
    the largest seen is 3.6e-6 with AVX-512 kernels and 1.9e-4 with ``ATEN_CPU_CAPABILITY=default``. Element-wise
    tolerances fail on the tiny entries of a tensor under the default kernels."""
    torch.manual_seed(0)
    model = crate_mae.create_model("crate_mae_base")
    official = official_copy(model)
    imgs, noise = torch.randn(1, 3, 224, 224), torch.rand(1, 196)
    ours = model(imgs, noise=noise)
    loss, pred, mask, latent = official(imgs, 0.75, noise)
    assert int(ours.mask.sum()) == 147 and torch.equal(ours.mask, mask)
    torch.testing.assert_close(ours.pred, pred, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.latent, latent, rtol=1e-4, atol=1e-5)
    ours.loss.backward()
    loss.backward()
    mine = to_official_grads(model)
    theirs = {k: p.grad for k, p in official.named_parameters() if p.grad is not None}
    assert sorted(mine) == sorted(theirs)
    for k, g in theirs.items():
        assert torch.linalg.vector_norm(mine[k] - g) <= 1e-3 * torch.linalg.vector_norm(g), k


def test_bf16_autocast_forward_backward(tiny_model_kwargs):
    """The training path under bf16 autocast (what CUDA runs; exercised here on the CPU autocast backend)."""
    model = crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    ref = model(imgs, noise=noise).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(imgs, noise=noise)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert abs(out.loss.item() - ref.item()) < 0.05 * ref.item()
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_step_matrix_gradient_is_the_gradient_of_its_formula():
    """StepMatrix's one-product backward (D (G + G^T)) against numerical differentiation, to second order."""
    D = torch.randn(7, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda d: StepMatrix.apply(d, 0.3), (D,))
    assert torch.autograd.gradgradcheck(lambda d: StepMatrix.apply(d, 0.3), (D,))


@pytest.mark.parametrize(
    "tokens,backward,one", [(2, True, False), (6, True, True), (40, True, True), (6, False, False), (9, False, True)]
)
def test_ista_either_product_order_equals_the_official_three_products(tokens, backward, one):
    """Both forms of ISTA (one product with M, or the official three, chosen by size) give the official outputs
    and gradients for x and D in float64."""
    assert one_product_is_cheaper(tokens, 16, backward) == one
    torch.manual_seed(0)
    ista = ISTA(16, step_size=0.1, lambd=0.5).double()
    official = OfficialISTA(16, 0.1, 0.5).double()
    official.weight.data.copy_(ista.dictionary.data)
    x = torch.randn(tokens, 16, dtype=torch.float64, requires_grad=backward)
    x2 = x.detach().clone().requires_grad_(backward)
    with torch.set_grad_enabled(backward):
        if not backward:
            ista.requires_grad_(False)
        ours, theirs = ista(x), official(x2)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    if backward:
        g = torch.randn_like(ours)
        ours.backward(g)
        theirs.backward(g)
        torch.testing.assert_close(x.grad, x2.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ista.dictionary.grad, official.weight.grad, rtol=1e-12, atol=1e-12)


def _fresh_output(ista, x):
    """ISTA's output from a module that has never kept an M, with the same D and eta."""
    fresh = ISTA(ista.dictionary.shape[0], ista.step_size, ista.lambd)
    fresh.load_state_dict(ista.state_dict())
    with torch.no_grad():
        return fresh(x)


def test_ista_keeps_m_between_calls_without_autograd():
    torch.manual_seed(0)
    ista, x = ISTA(16), torch.randn(3, 16)
    with torch.no_grad():
        first = ista(x)
        kept = ista._inference_cache[2]
        second = ista(x)
    assert ista._inference_cache[2] is kept  # not rebuilt
    assert torch.equal(first, second)
    with torch.no_grad():
        assert torch.equal(first, torch.relu(x @ ista.step_matrix() - ista.step_size * ista.lambd))
    assert list(ista.state_dict()) == ["dictionary"]  # kept M is not state


@pytest.mark.parametrize(
    "change",
    ["fused_adamw", "data_write", "load_state_dict", "step_size", "inference_mode_write"],
)
def test_ista_rebuilds_m_when_d_or_eta_changes(change):
    """The kept M follows every way D or eta changes, including fused AdamW and writes through .data, which leave
    D's version counter as it was."""
    torch.manual_seed(0)
    ista, x = ISTA(16), torch.randn(5, 16)
    with torch.no_grad():
        before = ista(x)
    if change == "fused_adamw":
        opt = torch.optim.AdamW(ista.parameters(), lr=0.1, fused=True)
        ista(x).square().sum().backward()  # with autograd: the kept M is dropped here already; keep one again
        with torch.no_grad():
            ista(x)
        version = ista.dictionary._version
        opt.step()
        assert ista.dictionary._version == version  # why a version-keyed cache would be stale
    elif change == "data_write":
        ista.dictionary.data.mul_(1.5)
    elif change == "load_state_dict":
        ista.load_state_dict({"dictionary": torch.randn(16, 16)})
    elif change == "step_size":
        ista.step_size = 0.3
    else:
        with torch.inference_mode():
            ista.dictionary.add_(0.1)
    with torch.no_grad():
        after = ista(x)
    assert not torch.equal(after, before)
    assert torch.equal(after, _fresh_output(ista, x))


def test_ista_kept_m_is_built_in_d_dtype_under_autocast():
    """An M built under bf16 autocast is D's float32, so a later float32 call is exact."""
    torch.manual_seed(0)
    ista, x = ISTA(16), torch.randn(4, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert ista(x).dtype == torch.bfloat16
    assert ista._inference_cache[2].dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(ista(x), _fresh_output(ista, x))


def test_ista_kept_m_from_inference_mode_serves_later_calls_and_training_drops_it():
    torch.manual_seed(0)
    ista, x = ISTA(16), torch.randn(40, 16)
    with torch.inference_mode():
        ista(x)
    with torch.no_grad():
        assert torch.equal(ista(x), _fresh_output(ista, x))
    ista(x).sum().backward()  # a training forward
    assert ista._inference_cache is None
    assert ista.dictionary.grad is not None
