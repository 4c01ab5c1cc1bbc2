"""One layer's L2 and L3 against the definitions, built with the full Gram matrices (n x n, m x m)."""

import pytest
import torch

from kasa_lightning.kasa.terms import gram_distance, layer_terms


def _factors(seed: int, m: int = 12, n: int = 9, r: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, r, generator=g), torch.randn(r, generator=g), torch.randn(n, r, generator=g)


def test_paper_form_is_the_r_by_r_gram_distance():
    u, s, v = _factors(0)
    eye = torch.eye(4)
    expected_l3 = torch.linalg.matrix_norm(u.T @ u - eye) + torch.linalg.matrix_norm(v.T @ v - eye)
    terms = layer_terms(u, s, v, "paper")
    torch.testing.assert_close(terms.l2, (s**2).sum())
    torch.testing.assert_close(terms.l3, expected_l3)


def test_reference_form_equals_the_full_gram_matrices():
    """||M M^T - I_d||_F computed through the r x r Gram matrix equals the explicit d x d one."""
    u, s, v = _factors(1)
    expected = torch.linalg.matrix_norm(v @ v.T - torch.eye(9)) + torch.linalg.matrix_norm(u @ u.T - torch.eye(12))
    torch.testing.assert_close(layer_terms(u, s, v, "reference").l3, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["paper", "reference"])
def test_a_stack_gives_the_terms_of_each_layer(form):
    layers = [_factors(seed) for seed in range(3)]
    stacked = layer_terms(*(torch.stack(t) for t in zip(*layers)), form)
    for i, (u, s, v) in enumerate(layers):
        one = layer_terms(u, s, v, form)
        torch.testing.assert_close(stacked.l2[i], one.l2)
        torch.testing.assert_close(stacked.l3[i], one.l3, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gram_distance(torch.stack([u]), form)[0], gram_distance(u, form))


def test_without_l3_or_sigma_the_terms_are_zero():
    u, _, v = _factors(2)
    terms = layer_terms(u, None, v, "paper", with_l3=False)
    assert terms.l2.item() == 0 and terms.l3.item() == 0
