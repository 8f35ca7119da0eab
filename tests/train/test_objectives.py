"""The two losses: verbalizer classification and target-only generation, on tiny random models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import random_ids, tiny_causal_lm

import softprompt
from softprompt.data import IGNORE_INDEX
from softprompt.train.objectives import (
    ClassificationObjective,
    GenerationObjective,
    label_word_logits,
    last_token_index,
)

LABEL_IDS = [5, 17, 40]


def wrapped(family: str = "llama"):
    return softprompt.wrap(
        tiny_causal_lm(family), softprompt.PromptTuningConfig(num_virtual_tokens=3, init="random")
    )


def pad(ids: torch.Tensor, lengths: list[int], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``ids`` cut to ``lengths`` and padded (pad id 0) on ``side``."""
    width = max(lengths)
    out = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(out)
    for row, n in enumerate(lengths):
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        out[row, cols], mask[row, cols] = ids[row, :n], 1
    return out, mask


def test_last_token_index_with_either_padding():
    assert last_token_index(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])).tolist() == [3, 2, 3]


@pytest.mark.parametrize("family", ["llama", "gemma2", "opt"])  # gemma2 soft-caps its logits
def test_label_word_logits_equal_the_full_heads_columns(family):
    model = wrapped(family)
    hidden = torch.randn(4, model.base_model.get_output_embeddings().weight.shape[1])
    ids = torch.tensor(LABEL_IDS)
    torch.testing.assert_close(label_word_logits(model, hidden, ids), model.logits(hidden)[:, ids])


def test_classification_loss_is_the_same_with_left_and_right_padding():
    objective = ClassificationObjective(wrapped(), LABEL_IDS)
    ids, lengths, labels = random_ids(3, 9), [9, 4, 6], torch.tensor([0, 2, 1])
    losses = {}
    for side in ("left", "right"):
        input_ids, mask = pad(ids, lengths, side)
        losses[side] = objective({"input_ids": input_ids, "attention_mask": mask, "label": labels})
    torch.testing.assert_close(losses["left"], losses["right"])
    # It is the summed cross-entropy of the label words' logits at each row's last token.
    model = objective.model
    expected = 0.0
    for row, n in enumerate(lengths):
        logits = model(ids[row : row + 1, :n]).logits[0, -1, LABEL_IDS]
        expected += F.cross_entropy(logits[None], labels[row : row + 1])
    torch.testing.assert_close(losses["left"], expected, rtol=1e-5, atol=1e-5)
    assert ClassificationObjective.count({"label": labels}) == 3


def test_classification_gradient_reaches_only_the_prompt():
    objective = ClassificationObjective(wrapped(), LABEL_IDS)
    input_ids, mask = pad(random_ids(2, 5), [5, 3], "left")
    objective({"input_ids": input_ids, "attention_mask": mask, "label": torch.tensor([1, 0])}).backward()
    trained = [name for name, p in objective.named_parameters() if p.grad is not None]
    assert trained == ["model.prompt.embeddings"]


def test_generation_loss_sums_the_target_tokens_only():
    objective = GenerationObjective(wrapped())
    input_ids = random_ids(2, 8)
    labels = input_ids.clone()
    labels[0, :5] = IGNORE_INDEX  # source tokens
    labels[1, :3] = IGNORE_INDEX
    mask = torch.ones_like(input_ids)
    batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    count = GenerationObjective.count(batch)
    assert count == (8 - 5) + (8 - 3)
    full = objective.model(input_ids, attention_mask=mask, labels=labels).loss  # all-position logits
    torch.testing.assert_close(objective(batch) / count, full)
