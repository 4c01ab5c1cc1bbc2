"""``adapter_loss``: the regulariser over a model (stacked and grouped) equals the per-layer formulas and the
authors' "reference" form with the mean over layers."""

import pytest
import torch
from conftest import make_tiny_bert, randomize_adapters

from kasa_lightning import (
    AdapterConfig,
    adapted_layers,
    adapter_loss,
    adapter_parameters,
    apply_adapters,
)


@pytest.mark.parametrize("stacked", [True, False])
@pytest.mark.parametrize("form", ["paper", "reference"])
def test_grouped_regulariser_equals_per_layer_formulas(form, stacked):
    # query/value (h, h), attention.output.dense (h, h), intermediate.dense (i, h), output.dense (h, i): the batched
    # computation groups equal shapes, so several groups of different sizes are exercised.
    targets = ["query", "value", "intermediate.dense", "output.dense"]
    model = apply_adapters(
        make_tiny_bert(),
        AdapterConfig(r=4, beta=0.3, gamma=0.7, target_modules=targets, reg_form=form),
        stacked=stacked,
    )
    randomize_adapters(model)
    layers = list(adapted_layers(model))
    assert len({(tuple(x.delta_u.shape), tuple(x.delta_v.shape)) for _, x in layers}) >= 3

    def distance(m):  # the definition, with the big Gram matrix for the authors' form
        gram = m.T @ m if form == "paper" else m @ m.T
        return torch.linalg.norm(gram - torch.eye(gram.shape[0]))

    l2 = {n: x.delta_sigma.square().sum() for n, x in layers}
    l3 = {n: distance(x.delta_u) + distance(x.delta_v) for n, x in layers}
    expected = 0.3 * sum(l2.values()) + 0.7 * sum(l3.values())
    terms = adapter_loss(model, per_layer=True)
    assert list(terms.per_layer) == [n for n, _ in layers]  # module order, not group order
    for name in l2:
        torch.testing.assert_close(terms.per_layer[name].l2, l2[name], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(terms.per_layer[name].l3, l3[name], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(terms.loss, expected, atol=1e-4, rtol=1e-5)
    params = adapter_parameters(model)  # the stacked groups, or every layer's own tensors
    grads = torch.autograd.grad(terms.loss, params)
    expected_grads = torch.autograd.grad(expected, params)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def test_reference_regulariser_equals_the_authors_formula():
    model = apply_adapters(
        make_tiny_bert(), AdapterConfig(r=4, beta=0.3, gamma=0.7, reg_form="reference", reg_reduction="mean")
    )
    randomize_adapters(model)
    # the authors' GLUE code: big Gram matrices of A (r, in) and B (out, r), mean over adapted layers
    l2s, l3s = [], []
    for _, layer in adapted_layers(model):
        a, b = layer.delta_v.T.detach(), layer.delta_u.detach()
        l2s.append(torch.sum(layer.delta_sigma.detach() ** 2))
        l3s.append(
            torch.norm(a.T @ a - torch.eye(a.shape[1]), p="fro") + torch.norm(b @ b.T - torch.eye(b.shape[0]), p="fro")
        )
    expected = (0.3 * sum(l2s) + 0.7 * sum(l3s)) / len(l2s)
    terms = adapter_loss(model, per_layer=True)
    torch.testing.assert_close(terms.loss, expected, atol=1e-5, rtol=1e-5)
    assert len(terms.per_layer) == 4
    torch.testing.assert_close(terms.l3, sum(l3s) / 4, atol=1e-5, rtol=1e-5)
