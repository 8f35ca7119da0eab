"""Sparse attention (DSA: DeepSeek-V3.2, GLM-MoE-DSA, HY-V4, AXK2) with a prefix.

The indexer ranks the real keys only and every query attends to the prefix: with a top-k smaller
than the input, the keys each token attends to among the real ones are the bare model's, and the
prefix slots are all selected; the text-in-front reference holds where the top-k keeps every key.
"""

import pytest
import torch
from tiny import padded_batch, random_ids, tiny_model

import softprompt
from softprompt.families import UnsupportedModelError
from softprompt.injection.capture import read_indexers, site_states
from softprompt.methods.base import PrefixStates, flatten_prefix
from softprompt.serve.batch import Decoder

PREFIX = 3


def dsa(model_type: str = "deepseek_v32", top_k: int | None = None) -> torch.nn.Module:
    model = tiny_model(model_type, "causal-lm")
    if top_k is not None:
        for module in read_indexers(model):
            module.index_topk = top_k
    return model


def selections(model, ids: torch.Tensor, **kwargs) -> list[torch.Tensor]:
    """The key indices (B, S, k) each indexer returned in one forward of ``model``, in call order."""
    seen: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda m, a, out: seen.append(out)) for m in read_indexers(model.base_model)
    ]
    try:
        with torch.no_grad():
            model(input_ids=ids, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def visible(indices: torch.Tensor, offset: int, length: int) -> torch.Tensor:
    """(S, T) bool: which real keys each query selected, among the ones the causal mask lets it see."""
    chosen = torch.zeros(length, offset + length, dtype=torch.bool).scatter(-1, indices[0].long(), True)
    return chosen[:, offset:] & torch.ones(length, length, dtype=torch.bool).tril()


@pytest.mark.parametrize("model_type", ["deepseek_v32", "glm_moe_dsa", "hy_v4", "axk2"])
def test_prefix_tuning_from_the_models_own_keys_values_equals_the_text_in_front(model_type):
    model = dsa(model_type)
    wrapped = softprompt.wrap(
        model, softprompt.PrefixTuningConfig(num_virtual_tokens=PREFIX, init="zero")
    ).eval()
    assert wrapped.shape.indexed_layers == wrapped.shape.layer_indices
    text, ids = random_ids(1, PREFIX, seed=1), random_ids(1, 4)
    states = site_states(model, wrapped.shape, text[0])["self"]
    with torch.no_grad():
        wrapped.prompt.prefix.copy_(flatten_prefix(PrefixStates(states)))
        got = wrapped(input_ids=ids).logits
        expected = model(torch.cat([text, ids], dim=1)).logits[:, PREFIX:]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_the_indexer_ranks_the_real_keys_only_and_selects_every_prefix_slot():
    model = dsa(top_k=2)
    ids = random_ids(1, 6)
    with torch.no_grad():
        bare_before = model(ids).logits
    wrapped = softprompt.wrap(model, softprompt.PrefixTuningConfig(num_virtual_tokens=PREFIX)).eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, bare_before)  # the hooks change nothing without a prefix
    bare = selections(_Bare(model), ids)[0]
    prefixed = selections(wrapped, ids)[0]  # layer 0: its input is the same with and without a prefix
    assert prefixed.shape == (1, 6, PREFIX + 2)
    assert torch.equal(prefixed[..., :PREFIX], torch.arange(PREFIX).expand(1, 6, PREFIX).to(prefixed.dtype))
    assert torch.equal(visible(prefixed, PREFIX, 6), visible(bare, 0, 6))
    assert visible(bare, 0, 6).sum(-1).max() == 2  # the top-k did leave keys out


class _Bare(torch.nn.Module):
    """The base model called as the wrapped one is, for :func:`selections`."""

    def __init__(self, model):
        super().__init__()
        self.base_model = model

    def forward(self, **kwargs):
        return self.base_model(**kwargs)


@pytest.mark.parametrize("method", [softprompt.PrefixTuningConfig, softprompt.PromptTuningConfig])
def test_a_row_computes_and_generates_alone_what_it_does_left_padded_with_a_small_top_k(method):
    torch.manual_seed(0)
    wrapped = softprompt.wrap(dsa(top_k=2), method(num_virtual_tokens=PREFIX)).eval()
    rows = [random_ids(1, n, seed=n)[0] for n in (7, 4)]
    ids, mask = padded_batch(rows, "left")
    with torch.no_grad():
        batched = wrapped(input_ids=ids, attention_mask=mask).logits
        generated = wrapped.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
        for i, row in enumerate(rows):
            alone = wrapped(input_ids=row[None]).logits
            torch.testing.assert_close(batched[i : i + 1, -len(row) :], alone, atol=1e-5, rtol=1e-5)
            tokens = wrapped.generate(input_ids=row[None], max_new_tokens=3, do_sample=False)
            assert generated[i, -3:].tolist() == tokens[0, -3:].tolist()


def test_the_local_engine_refuses_a_sparse_attention_model_with_the_reason():
    wrapped = softprompt.wrap(dsa(), softprompt.PrefixTuningConfig(num_virtual_tokens=PREFIX))
    with pytest.raises(UnsupportedModelError, match=r"sparse-attention indexer keys in its layers \[0, 1"):
        Decoder(wrapped)
