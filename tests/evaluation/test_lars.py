import torch

from crate_mae.evaluation import LARS


def test_lars_step_matches_hand_computed_update():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = LARS([w, b], lr=2.0, weight_decay=0.5, momentum=0.9, trust_coefficient=0.01)
    w.grad = torch.tensor([[1.0, 0.0]])
    b.grad = torch.tensor([0.5, 0.5])
    opt.step()
    # matrix: d = g + 0.5 w = [2.5, 2]; ||d|| = sqrt(10.25); q = 0.01 * 5 / sqrt(10.25); mu = q d; w -= 2 mu
    q = 0.01 * 5 / 10.25**0.5
    w1 = torch.tensor([[3.0, 4.0]]) - 2.0 * q * torch.tensor([[2.5, 2.0]])
    torch.testing.assert_close(w.data, w1)
    # vector (bias): no decay, no adaptation: w -= lr * g
    torch.testing.assert_close(b.data, torch.tensor([0.0, -2.0]))
    # second step: momentum buffer mu = 0.9 mu + d'
    w.grad = torch.tensor([[0.0, 1.0]])
    b.grad = torch.tensor([0.0, 0.0])
    opt.step()
    d2 = torch.tensor([[0.0, 1.0]]) + 0.5 * w1
    q2 = 0.01 * w1.norm() / d2.norm()
    mu2 = 0.9 * q * torch.tensor([[2.5, 2.0]]) + q2 * d2
    torch.testing.assert_close(w.data, w1 - 2.0 * mu2)
    torch.testing.assert_close(b.data, torch.tensor([0.0, -2.0]) - 2.0 * 0.9 * torch.tensor([0.5, 0.5]))


def test_lars_zero_weight_is_not_adapted():
    w = torch.nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=1.0, momentum=0.0)
    w.grad = torch.ones(2, 2)
    opt.step()
    torch.testing.assert_close(w.data, -torch.ones(2, 2))  # q = 1 when ||w|| = 0
