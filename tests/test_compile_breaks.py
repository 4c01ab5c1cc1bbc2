"""GPT-2 with ``labels`` under torch.compile: the regulariser's graph after GPT-2's own break.

GPT-2's ``loss_function`` logs a notice that dynamo cannot trace (1 break, adapters or not). When the whole loss
function is compiled, the code after that break is compiled again where dynamo can: the regulariser becomes a third
graph. A script's inline penalty on module-level names gives 2 graphs only because that penalty is not compiled at
all; the same penalty on local names gives 3. Keeping the regulariser out of dynamo would remove its graph but add a
break to models that have none (LLaMA). With the backbone compiled in place, as ``KaSAModule(compile=...)`` does, the
regulariser runs eagerly and adds no graph. See docs/architecture.md, "torch.compile".
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kasa_lightning import AdapterConfig, adapter_loss, apply_adapters

IDS = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
CFG = AdapterConfig(method="kasa", r=4, target_modules=["c_attn", "c_fc"], gamma=1e-3)


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=4)).train()


def _explain(fn):  # noqa: ANN001, ANN202
    import torch._dynamo

    torch._dynamo.reset()
    return torch._dynamo.explain(fn)()


def _targets(graph) -> set[str]:  # noqa: ANN001
    return {getattr(n.target, "__name__", str(n.target)) for n in graph.graph.nodes if n.op == "call_method"} | {
        getattr(n.target, "__name__", str(n.target)) for n in graph.graph.nodes if n.op == "call_function"
    }


@pytest.mark.slow
def test_whole_loss_compiled_regulariser_is_the_graph_after_gpt2s_break():
    kasa = apply_adapters(_gpt2(), CFG)
    adapted = _explain(lambda: kasa(input_ids=IDS, labels=IDS).loss + adapter_loss(kasa))
    alone = _explain(lambda: adapter_loss(kasa))
    assert (adapted.graph_count, adapted.graph_break_count) == (3, 2)
    assert (alone.graph_count, alone.graph_break_count) == (1, 0)
    # the third graph is the rest of the loss function: the regulariser traced whole (the operators of adapter_loss
    # compiled on its own) plus two nodes, the task loss coming in and the final add
    assert _targets(adapted.graphs[2]) == _targets(alone.graphs[0])
    assert len(adapted.graphs[2].graph.nodes) == len(alone.graphs[0].graph.nodes) + 2

    plain = _gpt2()
    weight = plain.transformer.h[0].attn.c_attn.weight
    # a script's inline penalty, model and tensor at module level: 2 graphs, because that penalty is not compiled
    script = {"model": plain, "w": weight, "IDS": IDS}
    inline = _explain(eval("lambda: model(input_ids=IDS, labels=IDS).loss + w.square().sum()", script))  # noqa: S307
    assert (inline.graph_count, inline.graph_break_count) == (2, 1)
    assert not any("square" in _targets(g) for g in inline.graphs)
    # the same penalty on local names is compiled after the break: 3 graphs, as with adapter_loss
    local = _explain(lambda: plain(input_ids=IDS, labels=IDS).loss + weight.square().sum())
    assert (local.graph_count, local.graph_break_count) == (3, 2)
    assert "square" in _targets(local.graphs[2])


def test_regulariser_outside_dynamo_would_add_a_break_to_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32,
        )
    ).train()
    model = apply_adapters(llama, AdapterConfig(r=4, target_modules=["q_proj", "v_proj"], gamma=1e-3))
    traced = _explain(lambda: model(input_ids=IDS, labels=IDS).loss + adapter_loss(model))
    eager = torch.compiler.disable(adapter_loss)
    kept_out = _explain(lambda: model(input_ids=IDS, labels=IDS).loss + eager(model))
    assert traced.graph_break_count == 0
    assert kept_out.graph_break_count == 1


@pytest.mark.parametrize("adapted", [False, True])
def test_backbone_compiled_in_place_regulariser_adds_no_graph(adapted):
    """As ``KaSAModule(compile=...)``: ``model.compile()`` in place, the loss and the regulariser added eagerly."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model = apply_adapters(_gpt2(), CFG) if adapted else _gpt2()
    weight = model.transformer.h[0].attn.c_attn.weight if not adapted else None
    counter = CompileCounter()
    model.compile(backend=counter)
    for _ in range(2):  # the second step reuses the graphs
        task = model(input_ids=IDS, labels=IDS).loss
        loss = task + (adapter_loss(model) if weight is None else weight.square().sum())
        loss.backward()
    assert counter.frame_count == 2  # GPT-2's own two graphs, with or without the regulariser
