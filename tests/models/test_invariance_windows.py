"""Batch invariance where attention counts key columns: sliding windows (Mistral, Gemma 2/3, OLMo 3,
EXAONE 4, Ministral, gpt-oss, GPT-Neo), chunked attention (Llama 4) and ALiBi (MPT, Bloom).

A row's logits and greedy tokens are the same alone, left-padded or right-padded in a batch and next
to rows with other prompts, also for inputs three times longer than the window (transformers
measures windows in cache columns, so a pad between a prompt and its tokens would push the prompt
out of the window). The row alone is checked against the model's own numbers: the prompt's
embeddings prepended to the input.
"""

import pytest
import torch
import transformers as T
from tiny import padded_batch, random_ids

import softprompt

WINDOW = 3
SMALL = dict(
    vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=48, max_position_embeddings=128, pad_token_id=0, eos_token_id=1, bos_token_id=2,
)  # fmt: skip
IDS = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2)
CONFIGS = {
    "mistral": lambda: T.MistralConfig(**SMALL, sliding_window=WINDOW),
    "gemma2": lambda: T.Gemma2Config(**SMALL, head_dim=8, sliding_window=WINDOW),
    "gemma3_text": lambda: T.Gemma3TextConfig(
        **SMALL, head_dim=8, sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"]
    ),
    "olmo3": lambda: T.Olmo3Config(**SMALL, sliding_window=WINDOW),
    "exaone4": lambda: T.Exaone4Config(**SMALL, sliding_window=WINDOW, sliding_window_pattern=2),
    "ministral": lambda: T.MinistralConfig(
        **SMALL,
        head_dim=8,
        sliding_window=WINDOW,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4},
    ),
    "gpt_oss": lambda: T.GptOssConfig(
        **{**SMALL, "intermediate_size": 16},
        head_dim=8,
        num_local_experts=2,
        num_experts_per_tok=1,
        sliding_window=WINDOW,
    ),  # fmt: skip
    "gpt_neo": lambda: T.GPTNeoConfig(
        vocab_size=96,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        attention_types=[[["local", "global"], 1]],
        window_size=WINDOW,
        max_position_embeddings=128,
        **IDS,
    ),  # fmt: skip
    # chunked attention; its causal LM's base_model_prefix names no attribute
    "llama4_text": lambda: T.Llama4TextConfig(
        **{**SMALL, "intermediate_size_mlp": 48},
        head_dim=8,
        attention_chunk_size=WINDOW,
        num_local_experts=2,
        num_experts_per_tok=1,
    ),  # fmt: skip
    "mpt": lambda: T.MptConfig(d_model=32, n_heads=4, n_layers=2, vocab_size=96, max_seq_len=128, **IDS),
    "bloom": lambda: T.BloomConfig(vocab_size=96, hidden_size=32, n_layer=2, n_head=4, **IDS),
}
METHODS = {
    "prompt_tuning": lambda n: softprompt.PromptTuningConfig(num_virtual_tokens=n, init="vocab"),
    "prefix_tuning": lambda n: softprompt.PrefixTuningConfig(num_virtual_tokens=n, init="vocab"),
    "p_tuning": lambda n: softprompt.PTuningConfig(
        num_virtual_tokens=n, encoder="mlp", encoder_hidden_size=8
    ),
}
LENGTHS = (9, 4, 6)  # up to three windows long


def prompted(config: T.PretrainedConfig, method: str, virtual: int = 4):
    """A tiny random model of ``config`` wrapped with ``method``, its prompt moved away from its init."""
    torch.manual_seed(0)
    model = softprompt.wrap(T.AutoModelForCausalLM.from_config(config).eval(), METHODS[method](virtual))
    with torch.no_grad():
        for p in model.prompt.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    return model.eval()


def wrapped(family: str, method: str, virtual: int = 4):
    return prompted(CONFIGS[family](), method, virtual)


def greedy(model, ids, mask=None, **kwargs):
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False, **kwargs
    )
    return out[:, ids.shape[1] :]


def prepended(model, ids: torch.Tensor) -> torch.Tensor:
    """(1, P + T, E): the prompt's embeddings before the row's own."""
    embed = model.base_model.get_input_embeddings()
    return torch.cat([model.prompt().embeddings[None], embed(ids[None])], dim=1)


def assert_batch_invariant(model, rows: list[torch.Tensor], sides=("left", "right")) -> None:
    """Each row's logits and greedy tokens are the same alone and padded on each side in one batch."""
    with torch.no_grad():
        alone = [model(input_ids=r[None]).logits[0] for r in rows]
        alone_tokens = [greedy(model, r[None])[0].tolist() for r in rows]
        for side in sides:
            ids, mask = padded_batch(rows, side)
            logits = model(input_ids=ids, attention_mask=mask).logits
            tokens = greedy(model, ids, mask)
            for i in range(len(rows)):
                torch.testing.assert_close(logits[i][mask[i].bool()], alone[i], atol=1e-5, rtol=1e-5)
                assert tokens[i].tolist() == alone_tokens[i], f"row {i}, {side} padding"


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_a_row_computes_the_same_alone_and_padded_in_a_batch(family, method):
    model = wrapped(family, method)
    rows = [random_ids(1, n, seed=n)[0] for n in LENGTHS]
    if method == "prompt_tuning":  # the model's own numbers for the longest row
        with torch.no_grad():
            expected = model.base_model(inputs_embeds=prepended(model, rows[0])).logits[0, 4:]
            torch.testing.assert_close(
                model(input_ids=rows[0][None]).logits[0], expected, atol=1e-5, rtol=1e-5
            )
    assert_batch_invariant(model, rows)


@pytest.mark.parametrize("family", ["mistral", "gemma2", "olmo3", "mpt", "gpt_neo"])
def test_rows_with_prompts_of_other_lengths_compute_what_they_compute_alone(family):
    # A task bank's batch: masked prompt slots in front of the shorter prompts, one row without any.
    long, short = wrapped(family, "prefix_tuning", 5), wrapped(family, "prompt_tuning", 2)
    short.base_model = long.base_model
    compiled = [long.compile_prompt(long.prompt), short.compile_prompt(short.prompt)]
    which = torch.tensor([0, 1, -1])
    rows = [random_ids(1, n, seed=n)[0] for n in LENGTHS]
    ids, mask = padded_batch(rows, "left")
    with torch.no_grad():
        batch = long.row_prompts(compiled, which, ids.device)
        logits = long(input_ids=ids, attention_mask=mask, row_prompts=batch).logits
        tokens = greedy(long, ids, mask, row_prompts=batch)
        for i, row in enumerate(rows):
            own = long.row_prompts(compiled, which[i : i + 1], ids.device)
            expected = long(input_ids=row[None], row_prompts=own).logits[0]
            torch.testing.assert_close(logits[i][mask[i].bool()], expected, atol=1e-5, rtol=1e-5)
            assert tokens[i].tolist() == greedy(long, row[None], row_prompts=own)[0].tolist(), f"row {i}"


def gemma3n_text():
    """Gemma 3n: sliding windows, the last 2 of 4 layers reading earlier layers' keys/values, and a
    second, per-layer embedding of every token id (which virtual tokens have none of)."""
    torch.manual_seed(0)
    config = T.Gemma3nTextConfig(
        **{**SMALL, "num_hidden_layers": 4}, vocab_size_per_layer_input=96, hidden_size_per_layer_input=8,
        num_kv_shared_layers=2, head_dim=8, sliding_window=WINDOW, laurel_rank=4, altup_num_inputs=2,
        layer_types=["sliding_attention", "full_attention"] * 2, activation_sparsity_pattern=[0.0] * 4,
    )  # fmt: skip
    base = T.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # zero-initialised norms and gates would hide the per-layer inputs
        for p in base.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.05)
    return base


@pytest.mark.parametrize("method", sorted(METHODS))
def test_gemma3n_keeps_each_real_tokens_per_layer_input(method):
    base = gemma3n_text()
    model = softprompt.wrap(base, METHODS[method](3)).eval()
    assert len(model.shape.layers) == 2  # the layers reading another layer's keys/values take no prefix
    rows = [random_ids(1, n, seed=n)[0] for n in LENGTHS]
    if method == "prompt_tuning":  # the real tokens' per-layer inputs, none for the virtual ones
        with torch.no_grad():
            per_layer = base.model.get_per_layer_inputs(rows[0][None])  # (1, T, L, D)
            per_layer = torch.cat([torch.zeros(1, 3, *per_layer.shape[2:]), per_layer], dim=1)
            expected = base(inputs_embeds=prepended(model, rows[0]), per_layer_inputs=per_layer).logits[0, 3:]
            torch.testing.assert_close(
                model(input_ids=rows[0][None]).logits[0], expected, atol=1e-4, rtol=1e-4
            )
    assert_batch_invariant(model, rows, sides=("left",))
