"""The losses of every task kind, against what the bare models compute, on tiny random models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import random_ids, tiny_causal_lm, tiny_encoder

import softprompt
from softprompt.data import IGNORE_INDEX, Encoded, collate
from softprompt.train.objectives import (
    ClassificationObjective,
    GenerationObjective,
    MultiLabelObjective,
    MultipleChoiceObjective,
    RegressionObjective,
    TokenClassificationObjective,
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
    input_ids, mask = pad(random_ids(3, 7), [7, 4, 5], "left")
    label_ids = torch.tensor(LABEL_IDS)
    full = model(input_ids=input_ids, attention_mask=mask).logits  # (B, T, V), the model's own head
    expected = full[torch.arange(3), last_token_index(mask)][:, label_ids]
    torch.testing.assert_close(label_word_logits(model, input_ids, mask, label_ids), expected)


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


# ------------------------------------------------------------------------------ the other task kinds
def encoder_objective(objective_class, head: str, num_labels: int, **options):
    base = tiny_encoder("bert", head, num_labels=num_labels)
    prompt = softprompt.PrefixTuningConfig(num_virtual_tokens=2)
    return objective_class(softprompt.wrap(base, prompt), **options)


def test_multi_label_loss_is_the_mean_binary_cross_entropy_per_row():
    objective = encoder_objective(MultiLabelObjective, "sequence-classification", 3)
    input_ids, mask = pad(random_ids(2, 6), [6, 4], "right")
    hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    batch = {"input_ids": input_ids, "attention_mask": mask, "label": hot}
    logits = objective.model(input_ids=input_ids, attention_mask=mask).logits
    expected = F.binary_cross_entropy_with_logits(logits, hot) * 2  # mean over all = mean of rows' means
    torch.testing.assert_close(objective(batch), expected)
    predictions, loss = objective.predict(batch)
    assert predictions == [frozenset((logits[row] > 0).nonzero().flatten().tolist()) for row in range(2)]
    torch.testing.assert_close(loss, expected)
    assert MultiLabelObjective.reference(Encoded([1], label=[1.0, 0.0, 1.0])) == frozenset({0, 2})


def test_regression_loss_is_the_summed_squared_error_of_the_single_output():
    objective = encoder_objective(RegressionObjective, "sequence-classification", 1)
    input_ids, mask = pad(random_ids(3, 5), [5, 5, 2], "right")
    values = torch.tensor([0.5, 2.0, -1.0])
    output = objective.model(input_ids=input_ids, attention_mask=mask).logits.squeeze(-1)
    batch = {"input_ids": input_ids, "attention_mask": mask, "label": values}
    torch.testing.assert_close(objective(batch), ((output - values) ** 2).sum())
    assert objective.predict(batch)[0] == pytest.approx(output.tolist())


def test_token_loss_counts_first_tokens_only_and_equals_the_heads_own_loss():
    objective = encoder_objective(
        TokenClassificationObjective, "token-classification", 3, tags=["O", "B-X", "I-X"]
    )
    input_ids, mask = pad(random_ids(2, 6), [6, 3], "right")
    labels = torch.tensor([[-100, 1, 2, -100, 0, -100], [-100, 0, -100, -100, -100, -100]])
    batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    count = TokenClassificationObjective.count(batch)
    assert count == 4
    # transformers' head loss: the mean cross-entropy over labelled tokens
    own = objective.model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(objective(batch) / count, own)
    predictions, _ = objective.predict(batch)
    assert [len(tags) for tags in predictions] == [3, 1] and set(predictions[0]) <= {"O", "B-X", "I-X"}
    assert objective.reference(Encoded([1, 2, 3], labels=[-100, 1, 2])) == ["B-X", "I-X"]


@pytest.mark.parametrize("score", ["mean", "sum"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_multiple_choice_scores_are_the_choices_log_likelihoods(score, side):
    objective = MultipleChoiceObjective(wrapped(), score=score)
    contexts = [[5, 6, 7], [8, 9]]
    choices = [[[10, 11], [12], [13, 14, 15]], [[16], [17, 18]]]  # row 1 has two choices
    examples = [
        Encoded(c, label=i, choices=ch) for i, (c, ch) in enumerate(zip(contexts, choices, strict=True))
    ]
    batch = collate(examples, 0, side)
    assert batch["input_ids"].shape == (2, 3, 6)
    scores = objective.batch_scores(batch)
    assert scores[1, 2] == float("-inf")  # no third choice
    for row, (context, row_choices) in enumerate(zip(contexts, choices, strict=True)):
        for c, choice in enumerate(row_choices):
            ids = torch.tensor([context + choice])
            logp = objective.model(ids).logits[0, :-1].log_softmax(-1)  # position t predicts t + 1
            token_logp = [logp[len(context) - 1 + k, token] for k, token in enumerate(choice)]
            expected = sum(token_logp) / (len(choice) if score == "mean" else 1)
            torch.testing.assert_close(scores[row, c], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(objective(batch), F.cross_entropy(scores, batch["label"], reduction="sum"))
    assert objective.predict(batch)[0] == scores.argmax(-1).tolist()
    assert MultipleChoiceObjective.count(batch) == 2
