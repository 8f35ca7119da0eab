"""A task bank with labels computes logits only where they are scored: the same numbers and the same loss
as full logits, without the (B, T, V) tensor."""

from __future__ import annotations

import pytest
import torch
from tiny import padded_batch, random_ids, tiny_causal_lm

import softprompt
from softprompt.bank import TaskBank

TASKS = {
    "prompt": softprompt.PromptTuningConfig(num_virtual_tokens=3, init="random", seed=1),
    "prefix": softprompt.PrefixTuningConfig(num_virtual_tokens=2, init="random", random_scale=1.0),
}


def mixed_batch(side: str = "left"):
    """Four rows of different lengths and tasks, the last two tokens of each row labelled."""
    rows = [random_ids(1, n, seed=n)[0] for n in (5, 3, 6, 4)]
    ids, mask = padded_batch(rows, side)
    labels = torch.full_like(ids, -100)
    for i, row in enumerate(rows):
        end = ids.shape[1] if side == "left" else len(row)
        labels[i, end - 2 : end] = ids[i, end - 2 : end]
    return ids, mask, labels, ["prompt", "prefix", None, "prefix"]


def bank_of(family: str) -> TaskBank:
    base = tiny_causal_lm(family)
    bank = TaskBank(base)
    for name, config in TASKS.items():
        bank.add(name, softprompt.wrap(base, config))
    return bank.eval()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_labels_give_the_labelled_positions_logits_and_the_same_loss(family, side):
    bank = bank_of(family)
    ids, mask, labels, tasks = mixed_batch(side)
    with torch.no_grad():
        fast = bank(ids, mask, tasks=tasks, labels=labels)
        full = bank(ids, mask, tasks=tasks, labels=labels, logits_at="all")
    assert full.logits.shape == (*ids.shape, bank.base_model.config.vocab_size)
    scored = labels[:, 1:] != -100  # position t predicts label t + 1
    assert fast.logits.shape == (int(scored.sum()), bank.base_model.config.vocab_size)
    torch.testing.assert_close(fast.logits, full.logits[:, :-1][scored], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.loss, full.loss, rtol=1e-5, atol=1e-6)


def test_without_labels_the_bank_returns_every_positions_logits():
    bank = bank_of("llama")
    ids, mask, _, tasks = mixed_batch()
    with torch.no_grad():
        assert bank(ids, mask, tasks=tasks).logits.shape == (*ids.shape, bank.base_model.config.vocab_size)
