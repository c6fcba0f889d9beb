import numpy as np
import pytest
import torch

from crate_mae.analysis import RateConvention, coding_rate, compression_rate, logdet_identity_plus_gram, sparsity
from crate_mae.analysis.coding_rate import serial_factorizations


def np_rate(z: np.ndarray, eps_sq: float) -> float:
    """1/2 logdet(I_N + d/(N eps^2) Z^T Z), paper layout Z = (d, N), straight from the definition."""
    d, n = z.shape
    return 0.5 * np.linalg.slogdet(np.eye(n) + d / (n * eps_sq) * z.T @ z)[1]


def np_unit(x: np.ndarray, axis: int) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


@pytest.mark.parametrize("n,d", [(5, 12), (20, 6)])  # both sides of Sylvester's identity
def test_rate_matches_numpy_raw(n, d):
    x = torch.randn(3, n, d, dtype=torch.float64)
    got = coding_rate(x, RateConvention.make("raw", eps=0.5))
    want = [np_rate(x[b].numpy().T, 0.25) for b in range(3)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_rate_official_normalises_tokens_and_uses_0_01():
    x = torch.randn(2, 9, 8)
    got = coding_rate(x, "official")
    want = [np_rate(np_unit(x[b].double().numpy(), 1).T, 0.01) for b in range(2)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
    # scale invariance is the point of the official convention
    np.testing.assert_allclose(coding_rate(7.0 * x, "official").numpy(), got.numpy(), rtol=1e-6)  # fp32 input


@pytest.mark.parametrize("convention", ["official", "raw"])
def test_compression_matches_numpy(convention):
    B, K, N, p = 2, 3, 7, 4
    w = torch.randn(B, K, N, p)
    conv = RateConvention.make(convention, eps=0.3)
    got = compression_rate(w, conv)
    want = []
    for b in range(B):
        total = 0.0
        for k in range(K):
            wk = w[b, k].double().numpy()
            if convention == "official":
                wk = np_unit(wk, 1)
            total += np_rate(wk.T, conv.eps_sq)
        want.append(total)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_zero_input_has_zero_rate():
    z = torch.zeros(2, 10, 8)
    assert torch.all(coding_rate(z, "raw") == 0)
    assert torch.all(coding_rate(z, "official") == 0)
    assert torch.all(compression_rate(torch.zeros(2, 3, 10, 4), "official") == 0)


def test_orthonormal_tokens():
    # N = d orthonormal tokens: Z^T Z = I, so R = d/2 log(1 + d/(N eps^2)).
    d, eps = 6, 0.5
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    got = coding_rate(q.unsqueeze(0), RateConvention.make("raw", eps)).item()
    assert got == pytest.approx(0.5 * d * np.log(1 + d / (d * eps**2)), rel=1e-12)


def test_identical_tokens_are_rank_one():
    # N copies of z: Z^T Z has one eigenvalue N ||z||^2, so R = 1/2 log(1 + d ||z||^2 / eps^2), independent of N.
    d, eps = 8, 0.2
    z = torch.randn(d, dtype=torch.float64)
    want = 0.5 * np.log(1 + d * z.pow(2).sum().item() / eps**2)
    for n in (3, 50):
        got = coding_rate(z.expand(n, d).unsqueeze(0), RateConvention.make("raw", eps)).item()
        assert got == pytest.approx(want, rel=1e-10)
    # identical tokens code far cheaper than spread-out ones of the same norm
    spread = torch.nn.functional.normalize(torch.randn(1, 50, d, dtype=torch.float64), dim=-1) * z.norm()
    assert coding_rate(spread, RateConvention.make("raw", eps)).item() > 2 * want


def test_logdet_matches_slogdet_both_forms():
    z = torch.randn(4, 6, 9, dtype=torch.float64)
    for x in (z, z.transpose(-2, -1)):
        n = x.shape[-2]
        want = torch.linalg.slogdet(torch.eye(n, dtype=x.dtype) + 0.7 * x @ x.transpose(-2, -1)).logabsdet
        torch.testing.assert_close(logdet_identity_plus_gram(x, 0.7), want, rtol=1e-10, atol=1e-10)


def test_sparsity_known_count():
    z = torch.ones(2, 4, 5)
    z[0, 0, :3] = 0  # 3 of 20 zeros
    z[1] = 0
    z[1, 2, 1] = -1.5  # 19 of 20 zeros
    torch.testing.assert_close(sparsity(z), torch.tensor([3 / 20, 19 / 20], dtype=torch.float64))


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="convention"):
        RateConvention.make("paper")
    with pytest.raises(ValueError, match="eps"):
        RateConvention.make("raw", eps=0)
    with pytest.raises(ValueError, match="NaN"):
        coding_rate(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="per-head"):
        compression_rate(torch.randn(4, 3))


def test_factorizations_on_one_thread_give_the_same_logdets_and_restore_threads():
    """The Cholesky factorizations run on one thread (serial_factorizations); the logdets equal those of slogdet
    computed with all threads in this process, and the thread count is restored, also after an error."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        z = torch.nn.functional.normalize(torch.randn(8, 6, 50, 16, dtype=torch.float64), dim=-1)
        want = torch.linalg.slogdet(torch.eye(16, dtype=z.dtype) + 3.0 * z.transpose(-2, -1) @ z).logabsdet
        torch.testing.assert_close(logdet_identity_plus_gram(z, 3.0), want, rtol=1e-10, atol=1e-10)
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="inside"):
            with serial_factorizations(torch.device("cpu")):
                assert torch.get_num_threads() == 1
                raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_non_finite_tokens_are_rejected_and_huge_finite_ones_are_not(dtype):
    for bad in (float("nan"), float("inf"), -float("inf")):
        z = torch.ones(2, 4, 5, dtype=dtype)
        z[1, 3, 4] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            sparsity(z)
    huge = torch.full((1, 4, 5), torch.finfo(dtype).max, dtype=dtype)  # its sum overflows; every entry is finite
    assert sparsity(huge).item() == 0.0


def test_identity_plus_scaled_gram_is_formed_bit_for_bit_as_the_formula():
    """logdet_identity_plus_gram forms I + a G in place; its logdets equal those of eye + a * G in this process."""
    z = torch.randn(3, 4, 20, 7, dtype=torch.float64)
    for x in (z, z.transpose(-2, -1)):
        g = x @ x.transpose(-2, -1) if x.shape[-2] <= x.shape[-1] else x.transpose(-2, -1) @ x
        m = torch.eye(g.shape[-1], dtype=g.dtype) + 0.37 * g
        with serial_factorizations(m.device):  # the same thread count as the function factorizes with
            want = 2.0 * torch.log(torch.diagonal(torch.linalg.cholesky(m), dim1=-2, dim2=-1)).sum(-1)
        assert torch.equal(logdet_identity_plus_gram(x, 0.37), want)
