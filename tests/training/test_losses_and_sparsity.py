import pytest
import torch

from dynadapter.training.adaptive_prioritization import AdaptivePrioritization
from dynadapter.training.backward_sparsity import BackwardSparsity


def test_prioritization_leads_with_the_deep_exit_then_equalises() -> None:
    rule = AdaptivePrioritization(gamma=2.0)
    start, end = rule.weights(0.0, 4), rule.weights(1.0, 4)
    assert start.sum().item() == pytest.approx(4.0) and end.sum().item() == pytest.approx(4.0)
    assert torch.all(start[1:] > start[:-1])  # deeper exits weigh more at the start
    torch.testing.assert_close(end, torch.ones(4))
    mid = rule.weights(0.5, 4)
    assert start[0] < mid[0] < end[0]  # the shallow exit's weight grows over training


def test_gamma_zero_is_fixed_equal_weights() -> None:
    for t in (0.0, 0.3, 1.0):
        torch.testing.assert_close(AdaptivePrioritization(gamma=0.0).weights(t, 3), torch.ones(3))


def test_loss_is_the_weighted_sum_plus_distillation() -> None:
    torch.manual_seed(0)
    logits = [torch.randn(8, 5) for _ in range(3)]
    y = torch.randint(0, 5, (8,))
    plain, per_exit = AdaptivePrioritization(gamma=1.0)(logits, y, 0.25)
    w = AdaptivePrioritization(gamma=1.0).weights(0.25, 3)
    assert plain.item() == pytest.approx(float((w * torch.tensor(per_exit)).sum()), rel=1e-6)
    with_kd, _ = AdaptivePrioritization(gamma=1.0, distill_weight=0.5)(logits, y, 0.25)
    assert with_kd.item() > plain.item()
    # distilling the last exit into itself costs nothing: the KL of identical logits is 0
    same = [logits[2].clone() for _ in range(3)]
    assert AdaptivePrioritization(distill_weight=1.0).distillation(same).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_teacher_is_detached() -> None:
    z = [torch.randn(4, 3, requires_grad=True) for _ in range(2)]
    AdaptivePrioritization(distill_weight=1.0).distillation(z).backward()
    assert z[1].grad is None and z[0].grad is not None


def test_backward_sparsity_zeroes_about_rate_of_each_gradient() -> None:
    p = torch.nn.Parameter(torch.zeros(100_000))
    p.grad = torch.ones_like(p)
    BackwardSparsity(rate=0.3).apply([p], torch.Generator().manual_seed(0))
    assert (p.grad == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert set(p.grad.unique().tolist()) == {0.0, 1.0}


def test_backward_sparsity_rescale_keeps_the_expected_gradient() -> None:
    p = torch.nn.Parameter(torch.zeros(100_000))
    p.grad = torch.ones_like(p)
    BackwardSparsity(rate=0.5, rescale=True).apply([p], torch.Generator().manual_seed(0))
    assert p.grad.mean().item() == pytest.approx(1.0, abs=0.02)


def test_backward_sparsity_off_leaves_gradients_alone() -> None:
    p = torch.nn.Parameter(torch.zeros(10))
    p.grad = torch.arange(10.0)
    BackwardSparsity(rate=0.0).apply([p])
    torch.testing.assert_close(p.grad, torch.arange(10.0))


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_backward_sparsity_rejects_bad_rates(bad: float) -> None:
    with pytest.raises(ValueError):
        BackwardSparsity(rate=bad)
