"""``orthogonality_distances``: L3 of stacks of factors with its written-out gradient, against the definitions of
``terms.py`` differentiated by autograd."""

import pytest
import torch

from kasa_lightning.kasa.orthogonality import orthogonality_distances


def _definition(m: torch.Tensor, form: str) -> torch.Tensor:
    """||M^T M - I_r||_F ("paper") or ||M M^T - I_d||_F ("reference", with the d x d matrix), one factor."""
    gram = m.T @ m if form == "paper" else m @ m.T
    return torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0], dtype=m.dtype))


@pytest.mark.parametrize("form", ["paper", "reference"])
def test_values_and_gradients_equal_autograd_on_the_definition(form):
    g = torch.Generator().manual_seed(0)
    stacks = [torch.randn(3, 12, 4, generator=g, dtype=torch.float64) * 0.4 for _ in range(2)]
    stacks.append(torch.randn(2, 7, 4, generator=g, dtype=torch.float64))  # another (rows, r) group
    ours = [s.clone().float().requires_grad_() for s in stacks]
    ref = [s.clone().requires_grad_() for s in stacks]
    dist = orthogonality_distances(ours, form)
    expected = torch.stack([_definition(m, form) for s in ref for m in s])  # float64, module by module
    assert dist.shape == (8,) and dist.dtype == torch.float32
    torch.testing.assert_close(dist.double(), expected, rtol=1e-5, atol=1e-6)
    weights = torch.randn(8, generator=g, dtype=torch.float64)
    (dist.double() * weights).sum().backward()
    (expected * weights).sum().backward()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-6)


def test_gradcheck_in_double_precision_inputs():
    # the function computes in float32; gradcheck with a tolerance that float32 allows
    m = (torch.randn(2, 6, 3, dtype=torch.float64) * 0.5).requires_grad_()
    torch.autograd.gradcheck(
        lambda x: orthogonality_distances([x], "paper").double(), (m,), eps=1e-3, atol=2e-3, rtol=2e-3
    )


def test_orthonormal_factors_have_zero_distance_and_a_finite_zero_gradient():
    q, _ = torch.linalg.qr(torch.randn(10, 4, dtype=torch.float64))
    m = q.float()[None].clone().requires_grad_()  # M^T M = I up to rounding
    exact = torch.zeros(1, 10, 4)
    exact[0, :4] = torch.eye(4)  # M^T M = I exactly: distance 0, where 1 / L3 is undefined
    both = [m, exact.clone().requires_grad_()]
    dist = orthogonality_distances(both, "paper")
    assert dist[0] < 1e-5 and dist[1] == 0
    dist.sum().backward()
    assert torch.isfinite(both[0].grad).all() and torch.equal(both[1].grad, torch.zeros_like(exact))
    # the reference form of the same orthonormal M: ||M M^T - I_10||_F = sqrt(10 - 4)
    torch.testing.assert_close(orthogonality_distances([exact], "reference"), torch.tensor([6.0**0.5]))


def test_float32_under_bf16_autocast_and_gradients_in_the_factor_dtype():
    m = (torch.randn(2, 16, 4) * 0.3).to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dist = orthogonality_distances([m], "paper")
    assert dist.dtype == torch.float32
    expected = torch.stack([_definition(x, "paper") for x in m.detach().double()])
    torch.testing.assert_close(dist.double(), expected, rtol=1e-5, atol=1e-6)  # not rounded to bf16
    dist.sum().backward()
    assert m.grad.dtype == torch.bfloat16
