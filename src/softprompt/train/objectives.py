"""What training minimises: the verbalizer loss for classification, the target-token loss for generation.

An objective is an ``nn.Module`` around the prompted model, so ``accelerate`` can wrap it for
data-parallel training (DDP reduces gradients only through a wrapped module's ``forward``).
``forward(batch)`` returns the loss *summed* over the batch's items and ``count(batch)`` says how
many items that is; the loop divides by the count of the whole global batch, so a batch split over
processes or micro-batches gives the gradient of one big batch.

Neither objective materialises full-vocabulary logits where no label is: classification projects
one hidden state per row onto the label words' output rows only — (B, H) -> (B, C) — and generation
asks the model for logits at labelled positions only (``logits_at="labels"``).

Every objective has the same few members (:class:`Objective`), so the training core
(:mod:`softprompt.train.core`), the run, the evaluation and the benchmarks take any of them; which
one a run uses is a lookup in :mod:`softprompt.kinds` (``Kind.objective(task.kind)``).

Examples:
    >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4))
    >>> objective = ClassificationObjective(model, label_token_ids=[5, 6])
    >>> batch = {"input_ids": input_ids, "attention_mask": attention_mask, "label": torch.tensor([0, 1])}
    >>> loss = objective(batch) / objective.count(batch)      # mean cross-entropy over the 2 rows
    >>> objective.scores(input_ids, attention_mask).shape     # (B, C): one logit per class
    torch.Size([2, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from softprompt.injection import IGNORE_INDEX
from softprompt.kinds import KINDS
from softprompt.models import PromptedModel, SoftPromptModel


class Objective(Protocol):
    """What the training core needs of a loss: ``forward(batch)`` is the loss summed over the batch's
    items and ``count(batch)`` how many items that is. Classifiers also give ``scores`` (B, C)."""

    padding_side: ClassVar[str]
    model: PromptedModel

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    @staticmethod
    def count(batch: dict[str, torch.Tensor]) -> int: ...

    def parameters(self): ...


def for_task(model: PromptedModel, task: Any, tokenizer: Any) -> nn.Module:
    """The objective a run of ``task`` trains ``model`` with, looked up in the model's kind.

    ``task`` is a data-layer task (:class:`~softprompt.data.ClassificationTask` or
    :class:`~softprompt.data.GenerationTask`); classifiers by label words take its words' token ids.
    """
    return KINDS[model.shape.kind].objective(task.kind).for_task(model, task, tokenizer)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, with left or right padding: (B, T) -> (B,).

    Examples:
        >>> last_token_index(torch.tensor([[0, 1, 1], [1, 1, 0]])).tolist()
        [2, 1]
    """
    trailing_pads = attention_mask.flip(-1).long().argmax(-1)  # first 1 from the right
    return attention_mask.shape[-1] - 1 - trailing_pads


def label_word_logits(model: SoftPromptModel, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """The frozen output head applied for ``token_ids`` only: (B, H) -> (B, C).

    Equals ``model.logits(hidden)[:, token_ids]`` (soft-capping included) without computing the
    other V - C logits.
    """
    head = model.base_model.get_output_embeddings()
    weight = head.weight[token_ids]  # (C, H)
    bias = head.bias[token_ids] if getattr(head, "bias", None) is not None else None
    logits = F.linear(hidden, weight, bias)
    cap = model.shape.logit_softcap
    return torch.tanh(logits / cap) * cap if cap is not None else logits


class _ClassScores(nn.Module):
    """A classifier objective: ``scores`` gives (B, C) class logits; the loss is their cross-entropy."""

    padding_side = "left"

    def __init__(self, model: PromptedModel) -> None:
        super().__init__()
        self.model = model

    @classmethod
    def for_task(cls, model: PromptedModel, task: Any, tokenizer: Any) -> _ClassScores:
        return cls(model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross-entropy of the batch's rows."""
        scores = self.scores(batch["input_ids"], batch["attention_mask"])
        return F.cross_entropy(scores.float(), batch["label"], reduction="sum")

    @staticmethod
    def count(batch: dict[str, torch.Tensor]) -> int:
        """Rows the loss sums over."""
        return int(batch["label"].shape[0])


class ClassificationObjective(_ClassScores):
    """Cross-entropy over the label words' first-token logits at each row's last real token."""

    padding_side = "left"  # the answer position is then -1 in every row

    def __init__(self, model: SoftPromptModel, label_token_ids: Sequence[int]) -> None:
        super().__init__(model)
        self.register_buffer("label_ids", torch.tensor(list(label_token_ids)), persistent=False)

    @classmethod
    def for_task(cls, model: PromptedModel, task: Any, tokenizer: Any) -> ClassificationObjective:
        return cls(model, task.label_token_ids(tokenizer))

    def without_prompt(self) -> ClassificationObjective:
        """The same objective on the frozen model without any prompt (the zero-shot baseline)."""
        return type(self)(self.model.without_prompt(), self.label_ids.tolist()).to(self.label_ids.device)

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Label-word logits (B, C) at the position after each row's template."""
        hidden = self.model.hidden_states(input_ids, attention_mask)  # (B, T, H)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        answer = hidden[rows, last_token_index(attention_mask)]  # (B, H)
        return label_word_logits(self.model, answer, self.label_ids)


class HeadClassificationObjective(_ClassScores):
    """Cross-entropy of an encoder's classifier head (trained with the prompt): (B, T) -> (B, C)."""

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class Seq2SeqClassificationObjective(ClassificationObjective):
    """Cross-entropy over the label words' logits at the decoder's first step (T5/BART style)."""

    padding_side = "right"

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Label-word logits (B, C) of the first decoder position (after the start token)."""
        start = self.model.base_model.config.decoder_start_token_id
        decoder_input_ids = torch.full(
            (input_ids.shape[0], 1), start, dtype=torch.long, device=input_ids.device
        )
        logits = self.model(
            input_ids, attention_mask, decoder_input_ids=decoder_input_ids
        ).logits  # (B, 1, V)
        return logits[:, 0, self.label_ids]


class GenerationObjective(nn.Module):
    """Next-token cross-entropy on the target tokens only (the source is masked out of ``labels``)."""

    padding_side = "right"

    def __init__(self, model: SoftPromptModel) -> None:
        super().__init__()
        self.model = model

    @classmethod
    def for_task(cls, model: PromptedModel, task: Any, tokenizer: Any) -> GenerationObjective:
        return cls(model)

    def without_prompt(self) -> GenerationObjective:
        """The same objective on the frozen model without any prompt (the zero-shot baseline)."""
        return type(self)(self.model.without_prompt())

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross-entropy of the batch's target tokens."""
        out = self.model(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            logits_at="labels",
        )
        return out.loss * self.count(batch)

    @staticmethod
    def count(batch: dict[str, torch.Tensor]) -> int:
        """Target tokens the loss sums over (``labels[:, t]`` is predicted at ``t - 1``)."""
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


class Seq2SeqGenerationObjective(GenerationObjective):
    """Cross-entropy of the decoder on the target tokens; the encoder reads the source.

    Batches come in the causal layout (source + target in ``input_ids``, the source masked out of
    ``labels``, right padding): each row is split into its source (B, S) and target (B, L) here.
    """

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross-entropy of the batch's target tokens."""
        sources, targets = [], []
        for ids, mask, labels in zip(
            batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True
        ):
            scored = labels != IGNORE_INDEX
            sources.append(ids[(mask == 1) & ~scored])
            targets.append(labels[scored])
        source = nn.utils.rnn.pad_sequence(sources, batch_first=True, padding_value=0)  # (B, S)
        source_mask = nn.utils.rnn.pad_sequence([torch.ones_like(s) for s in sources], batch_first=True)
        target = nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=IGNORE_INDEX)  # (B, L)
        out = self.model(source, attention_mask=source_mask, labels=target)
        return out.loss * int((target != IGNORE_INDEX).sum())
