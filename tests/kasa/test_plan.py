"""The regulariser's stacking plan: factors group by (rows, r, dtype, device), and each layer finds its dU and dV."""

import pytest
import torch
from conftest import make_tiny_bert

from kasa_lightning import AdapterConfig, adapted_layers, apply_adapters
from kasa_lightning.kasa.plan import make_plan, whole


def test_plan_groups_equal_shapes_and_points_back_to_every_factor():
    model = apply_adapters(make_tiny_bert(), AdapterConfig(r=4, target_modules=["query", "dense"]))
    layers = list(adapted_layers(model))
    plan = make_plan(layers)
    shapes = {tuple(getattr(layer, attr).shape) for _, layer in layers for attr in ("delta_u", "delta_v")}
    assert len(plan.groups) == len(shapes)  # one group per distinct (rows, r); one dtype and device here
    for g, members in enumerate(plan.groups):
        assert len({tuple(getattr(layers[i][1], attr).shape) for i, attr in members}) == 1
        for position, (i, attr) in enumerate(members):
            assert plan.slots[i][0 if attr == "delta_u" else 1] == (g, position)
    assert len(plan.slots) == len(layers)


def test_sharded_factors_are_refused_with_the_fix():
    model = apply_adapters(make_tiny_bert(), AdapterConfig(r=4))
    name, layer = next(iter(adapted_layers(model)))
    assert whole(layer)
    layer.delta_u = torch.nn.Parameter(layer.delta_u.detach()[: layer.out_features // 2])  # what a shard looks like
    assert not whole(layer)
    with pytest.raises(RuntimeError, match="record_in_forward"):
        make_plan([(name, layer)])
