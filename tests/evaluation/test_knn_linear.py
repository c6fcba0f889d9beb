"""Probes on synthetic features whose accuracy is known exactly."""

from __future__ import annotations

import math

import pytest
import torch

from crate_mae.evaluation import (
    knn_evaluate,
    knn_scores,
    logistic_probe,
    top1_interval,
    topk_accuracy,
    topk_correct,
    train_linear_head,
)


def clustered(n_per_class: int, num_classes: int = 4, dim: int = 8, spread: float = 0.05, seed: int = 0):
    """Tight clusters around orthogonal directions: linearly separable and nearest-neighbour separable."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = 3.0 * torch.eye(dim)[y] + spread * torch.randn(len(y), dim, generator=g)
    return x, y


def with_wrong_labels(y: torch.Tensor, n_wrong: int, num_classes: int) -> torch.Tensor:
    """Relabel the first ``n_wrong`` samples to the next class: exactly those become errors."""
    y = y.clone()
    y[:n_wrong] = (y[:n_wrong] + 1) % num_classes
    return y


def test_topk_accuracy_counts_and_caps_k():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 1, 0])
    acc = topk_accuracy(scores, labels, ks=(1, 2, 5))
    assert acc["top1"] == pytest.approx(100 / 3)
    assert acc["top2"] == pytest.approx(200 / 3)  # row 2's label 0 is third
    assert acc["top5"] == 100.0  # capped at 3 classes


def test_topk_correct_counts_what_topk_accuracy_averages():
    """Counts (on the scores' device, to add up over shards), with the same cap on k as the percentages."""
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 1, 0])
    hits = topk_correct(scores, labels, ks=(1, 2, 5))
    assert hits.dtype == torch.int64 and hits.tolist() == [1, 2, 3]
    acc = topk_accuracy(scores, labels, ks=(1, 2, 5))
    assert [100 * h / 3 for h in hits.tolist()] == pytest.approx([acc["top1"], acc["top2"], acc["top5"]])
    with pytest.raises(ValueError, match="scores must be"):
        topk_correct(scores, labels[:2])


def test_knn_scores_match_the_dino_formula_by_hand():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[2.0, 0.5]])
    T = 0.07
    cos = [2 / math.hypot(2, 0.5), 0.5 / math.hypot(2, 0.5), 2.5 / (math.hypot(2, 0.5) * math.sqrt(2))]
    # k=2: neighbours are train 0 (cos 0.970) and train 2 (cos 0.857)
    expected = torch.tensor([[math.exp(cos[0] / T), math.exp(cos[2] / T)]], dtype=torch.float32)
    got = knn_scores(train, labels, query, k=2, num_classes=2, temperature=T)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    # k larger than the training set means all of it
    got = knn_scores(train, labels, query, k=200, num_classes=2, temperature=T)
    torch.testing.assert_close(got[0, 1], torch.tensor(math.exp(cos[1] / T) + math.exp(cos[2] / T)), rtol=1e-5, atol=0)


def test_knn_exact_accuracy_on_separable_clusters():
    x, y = clustered(25)
    xv, yv = clustered(10, seed=1)
    yv = with_wrong_labels(yv, 4, 4)  # 4 of 40 val labels are wrong: top-1 must be exactly 90 %
    res = knn_evaluate(x, y, xv, yv, num_classes=4, ks=(10, 20))
    assert res[10]["top1"] == pytest.approx(90.0)
    assert res[20]["top1"] == pytest.approx(90.0)
    assert res[10]["top5"] == 100.0


def test_knn_rejects_bad_temperature():
    x, y = clustered(2)
    with pytest.raises(ValueError, match="temperature"):
        knn_scores(x, y, x, 1, 4, temperature=0.0)


def test_logistic_probe_exact_accuracy_and_sweep():
    x, y = clustered(30)
    xv, yv = clustered(10, seed=2)
    yv = with_wrong_labels(yv, 6, 4)
    res = logistic_probe(x, y, xv, yv, Cs=(0.01, 1.0), holdout=0.2)
    assert res["top1"] == pytest.approx(85.0)  # 34 of 40
    assert set(res["sweep"]) == {0.01, 1.0} and all(v == 100.0 for v in res["sweep"].values())
    assert res["C"] == 0.01  # ties go to the stronger regularisation


def test_logistic_probe_picks_c_on_holdout_not_on_val():
    # Noisy, overlapping data: the sweep must differ between Cs, and the chosen C must be the holdout argmax.
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(60)
    x = torch.eye(3)[y] @ torch.randn(3, 20, generator=g) + 2.0 * torch.randn(180, 20, generator=g)
    res = logistic_probe(x, y, x[:30], y[:30], Cs=(1e-4, 1.0), holdout=0.3)
    assert res["C"] == max(res["sweep"], key=lambda c: (res["sweep"][c], -c))


def test_logistic_probe_needs_two_classes():
    x, _ = clustered(5)
    with pytest.raises(ValueError, match="single class"):
        logistic_probe(x, torch.zeros(len(x), dtype=torch.long), x, torch.zeros(len(x), dtype=torch.long))


def test_mae_linear_head_exact_accuracy_on_separable_clusters():
    x, y = clustered(32)
    xv, yv = clustered(10, seed=3)
    yv = with_wrong_labels(yv, 2, 4)
    res = train_linear_head(x, y, xv, yv, 4, epochs=100, batch_size=32, warmup_epochs=5, device="cpu")
    assert res["top1"] == pytest.approx(95.0)
    assert res["final_train_loss"] < 1.0
    assert set(res["head"]) >= {"bn.running_mean", "linear.weight"} and "bn.weight" not in res["head"]


def test_knn_computes_similarities_and_top_k_once_for_all_k(monkeypatch):
    x, y = clustered(25)
    xv, yv = clustered(10, seed=1)
    separate = {k: knn_scores(x, y, xv, k, 4) for k in (10, 20, 100)}
    calls = []
    topk = torch.Tensor.topk

    def counting(self, *args, **kwargs):
        calls.append(self.shape)
        return topk(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "topk", counting)
    together = knn_scores(x, y, xv, [10, 20, 100], 4, device="cpu")
    assert calls == [(40, 100)]  # one (queries, train) similarity matrix, one top-k for the largest k
    for k, scores in together.items():
        torch.testing.assert_close(scores, separate[k], rtol=1e-6, atol=0)


def test_top1_interval_matches_the_binomial_spread():
    """Half of 400 rows right: the bootstrap interval sits around 50 % with the binomial width (±1.96 · 2.5 %);
    all right: no spread at all."""
    labels = torch.zeros(400, dtype=torch.long)
    scores = torch.zeros(400, 2)
    scores[::2, 0] = 1.0  # every other row predicts the label
    scores[1::2, 1] = 1.0
    lo, hi = top1_interval(scores, labels)
    assert lo < 50.0 < hi
    assert hi - lo == pytest.approx(2 * 1.96 * 2.5, rel=0.15)
    scores[:, 0] = 2.0
    assert top1_interval(scores, labels) == (100.0, 100.0)
    with pytest.raises(ValueError, match="level"):
        top1_interval(scores, labels, level=1.5)


def test_probe_results_carry_the_interval():
    from crate_mae.evaluation import FeatureSet, knn, linprobe

    x, y = clustered(30)
    y = with_wrong_labels(y, 12, 4)
    sets = [FeatureSet(x, x, y, ["a", "b", "c", "d"], meta={"split": s}) for s in ("train", "val")]
    for result in (linprobe(*sets), linprobe(*sets, protocol="mae", epochs=5), knn(*sets, ks=(5,))):
        lo, hi = result["details"]["top1_ci95"]
        assert lo <= result["metrics"]["top1"] <= hi and hi - lo > 0
