"""Models with recurrent layers beside attention (Qwen3-Next linear attention; Jamba, Falcon-H1, Zamba2
Mamba layers): prompt tuning and P-tuning enter as input embeddings (a recurrent state must read the
virtual tokens), prefix tuning fills the attention layers.

Checked against the model's own numbers — the prompt's embeddings prepended to the input, greedy
decoding by full forwards — and for batch invariance: a row computes the same alone, left- or
right-padded. Task-bank mixes that would feed masked slots to a recurrent state are refused with the
reason.
"""

import pytest
import torch
from test_invariance_windows import METHODS, assert_batch_invariant, greedy, prepended, prompted
from tiny import HYBRID_CONFIGS, HYBRID_FAMILIES, padded_batch, random_ids

import softprompt

LENGTHS = (6, 3, 4)


def wrapped(family: str, method: str, virtual: int = 3):
    return prompted(HYBRID_CONFIGS[family](), method, virtual)


@pytest.mark.parametrize("family", HYBRID_FAMILIES)
def test_the_shape_names_the_recurrent_layers(family):
    shape = wrapped(family, "prefix_tuning").shape
    assert shape.recurrent_layers and len(shape.layers) == len(shape.layer_indices) >= 1


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
@pytest.mark.parametrize("family", HYBRID_FAMILIES)
def test_virtual_tokens_reach_the_recurrent_state_as_prepended_embeddings(family, method):
    model = wrapped(family, method)
    base, row = model.base_model, random_ids(1, 6, seed=6)[0]
    compiled = model.compile_prompt(model.prompt)
    assert compiled.tokens is not None and not compiled.sites  # embeddings, not a key/value prefix
    with torch.no_grad():
        expected = base(inputs_embeds=prepended(model, row)).logits[0, 3:]
        torch.testing.assert_close(model(input_ids=row[None]).logits[0], expected, atol=1e-5, rtol=1e-5)
        tokens, sequence = [], row
        for _ in range(4):  # greedy decoding by full forwards, no cache
            logits = base(inputs_embeds=prepended(model, sequence)).logits[0, -1]
            logits[base.config.eos_token_id] = -float("inf")  # greedy's min_new_tokens: no end yet
            tokens.append(int(logits.argmax()))
            sequence = torch.cat([sequence, torch.tensor(tokens[-1:])])
        assert greedy(model, row[None])[0].tolist() == tokens
    # The prompt's gradient is the one through the prepended embeddings.
    model.zero_grad()
    model(input_ids=row[None], labels=row[None]).loss.backward()
    got = [p.grad.clone() for p in model.prompt.parameters()]
    model.zero_grad()
    logits = base(inputs_embeds=prepended(model, row)).logits[0, 3:-1]
    torch.nn.functional.cross_entropy(logits, row[1:]).backward()
    for g, e in zip(got, [p.grad for p in model.prompt.parameters()], strict=True):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("family", HYBRID_FAMILIES)
def test_a_row_computes_the_same_alone_and_padded_in_a_batch(family, method):
    assert_batch_invariant(wrapped(family, method), [random_ids(1, n, seed=n)[0] for n in LENGTHS])


def test_beams_and_samples_after_virtual_tokens_match_the_embeddings_run():
    model = wrapped("qwen3_next", "prompt_tuning")
    row = random_ids(1, 5, seed=5)[0]
    with torch.no_grad():
        embeds = prepended(model, row)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        for decoding in (
            dict(num_beams=2, num_return_sequences=2),
            dict(do_sample=True, num_return_sequences=2),
        ):
            torch.manual_seed(3)
            expected = model.base_model.generate(
                inputs_embeds=embeds, attention_mask=mask, max_new_tokens=3, **decoding
            )
            torch.manual_seed(3)
            got = model.generate(row[None], max_new_tokens=3, **decoding)
            assert got[:, :5].tolist() == [row.tolist()] * 2
            assert got[:, 5:].tolist() == expected.tolist(), decoding


def test_prefix_tuning_tasks_of_other_lengths_share_a_batch():
    long, short = wrapped("jamba", "prefix_tuning", 4), wrapped("jamba", "prefix_tuning", 2)
    short.base_model = long.base_model
    compiled = [long.compile_prompt(long.prompt), short.compile_prompt(short.prompt)]
    which = torch.tensor([0, 1, -1])
    rows = [random_ids(1, n, seed=n)[0] for n in LENGTHS]
    ids, mask = padded_batch(rows, "left")
    with torch.no_grad():
        logits = long(
            input_ids=ids, attention_mask=mask, row_prompts=long.row_prompts(compiled, which, ids.device)
        ).logits
        for i, row in enumerate(rows):
            own = long.row_prompts(compiled, which[i : i + 1], ids.device)
            expected = long(input_ids=row[None], row_prompts=own).logits[0]
            torch.testing.assert_close(logits[i][mask[i].bool()], expected, atol=1e-5, rtol=1e-5)


def test_virtual_token_tasks_of_one_length_share_a_batch_and_other_mixes_are_refused():
    first, second = wrapped("zamba2", "prompt_tuning"), wrapped("zamba2", "p_tuning")
    second.base_model = first.base_model
    compiled = [first.compile_prompt(first.prompt), second.compile_prompt(second.prompt)]
    rows = [random_ids(1, n, seed=n)[0] for n in LENGTHS[:2]]
    ids, mask = padded_batch(rows, "left")
    with torch.no_grad():
        batch = first.row_prompts(compiled, torch.tensor([1, 0]), ids.device)
        logits = first(input_ids=ids, attention_mask=mask, row_prompts=batch).logits
        for i, (row, task) in enumerate(zip(rows, (second, first), strict=True)):
            expected = first.base_model(inputs_embeds=prepended(task, row)).logits[0, 3:]
            torch.testing.assert_close(logits[i][mask[i].bool()], expected, atol=1e-5, rtol=1e-5)
    shorter = wrapped("zamba2", "prompt_tuning", 2)
    shorter.base_model = first.base_model
    mixes = [  # (tasks, rows): prompts of another length; a row without a prompt
        ([compiled[0], shorter.compile_prompt(shorter.prompt)], [0, 1]),
        (compiled[:1], [0, -1]),
    ]
    for tasks, which in mixes:
        with pytest.raises(softprompt.UnsupportedModelError, match="recurrent layers .* same length"):
            first.row_prompts(tasks, torch.tensor(which), ids.device)
