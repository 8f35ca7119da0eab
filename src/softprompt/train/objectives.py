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

from softprompt.data import Encoded
from softprompt.injection import IGNORE_INDEX
from softprompt.injection.positions import last_token_index
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


def label_word_logits(
    model: SoftPromptModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_ids: torch.Tensor
) -> torch.Tensor:
    """The model's own next-token logits after each row's last token, for ``token_ids`` only: (B, C).

    The logits come out of the model's own head (its scaling and soft-capping included) at that one
    position per row; the label words are picked from them.
    """
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    answer = torch.zeros(input_ids.shape[:2], dtype=torch.bool, device=input_ids.device)
    answer[rows, last_token_index(attention_mask)] = True  # (B, T): one position per row
    return model.logits_where(input_ids, attention_mask, answer)[:, token_ids]  # (B, V) -> (B, C)


class _Scoring(nn.Module):
    """An objective that scores each row (B, C) — or each token (B, T, C) — and predicts from the
    scores: ``forward`` is the loss summed over the batch's items, ``predict`` gives every row's
    prediction (for the metrics; ``reference`` is the example's side of it) and that same loss."""

    padding_side = "left"

    def __init__(self, model: PromptedModel) -> None:
        super().__init__()
        self.model = model

    @classmethod
    def for_task(cls, model: PromptedModel, task: Any, tokenizer: Any) -> _Scoring:
        return cls(model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def batch_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.scores(batch["input_ids"], batch["attention_mask"])

    def loss(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross-entropy of the rows' class scores (B, C)."""
        return F.cross_entropy(scores.float(), batch["label"], reduction="sum")

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss(self.batch_scores(batch), batch)

    def predict(self, batch: dict[str, torch.Tensor]) -> tuple[list[Any], torch.Tensor]:
        """Each row's prediction and the batch's summed loss."""
        scores = self.batch_scores(batch)
        return self.decode(scores, batch), self.loss(scores, batch)

    def decode(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[Any]:
        """Predictions from scores: each row's best class."""
        return scores.argmax(-1).tolist()

    @staticmethod
    def reference(example: Encoded) -> Any:
        """What a prediction is compared with: the example's class."""
        return example.label

    @staticmethod
    def count(batch: dict[str, torch.Tensor]) -> int:
        """Rows the loss sums over."""
        return int(batch["label"].shape[0])


class ClassificationObjective(_Scoring):
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
        return label_word_logits(self.model, input_ids, attention_mask, self.label_ids)


class HeadClassificationObjective(_Scoring):
    """Cross-entropy of an encoder's classifier head (trained with the prompt): (B, T) -> (B, C)."""

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class MultiLabelObjective(HeadClassificationObjective):
    """One sigmoid per label on an encoder's head: binary cross-entropy, averaged over a row's labels;
    a label is predicted when its probability passes 1/2."""

    def loss(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        targets = batch["label"].to(scores.dtype)  # (B, C) multi-hot
        return (
            F.binary_cross_entropy_with_logits(scores.float(), targets.float(), reduction="none")
            .mean(-1)
            .sum()
        )

    def decode(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[frozenset[int]]:
        return [frozenset(row.nonzero().flatten().tolist()) for row in scores > 0]  # sigmoid > 1/2

    @staticmethod
    def reference(example: Encoded) -> frozenset[int]:
        return frozenset(i for i, hot in enumerate(example.label) if hot)


class RegressionObjective(HeadClassificationObjective):
    """An encoder head's single output against the row's number: squared error."""

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return super().scores(input_ids, attention_mask).squeeze(-1)  # (B, 1) -> (B,)

    def loss(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return ((scores.float() - batch["label"].float()) ** 2).sum()

    def decode(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[float]:
        return scores.float().tolist()


class TokenClassificationObjective(HeadClassificationObjective):
    """Cross-entropy of an encoder's token head on each word's first token: (B, T) -> (B, T, C)."""

    padding_side = "right"

    def __init__(self, model: PromptedModel, tags: Sequence[str]) -> None:
        super().__init__(model)
        self.tags = list(tags)

    @classmethod
    def for_task(cls, model: PromptedModel, task: Any, tokenizer: Any) -> TokenClassificationObjective:
        return cls(model, task.tags)

    def loss(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(
            scores.flatten(0, 1).float(),
            batch["labels"].flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )

    def decode(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[list[str]]:
        """Each row's tags, one per labelled token (a word's first token)."""
        best = scores.argmax(-1)  # (B, T)
        tagged = batch["labels"] != IGNORE_INDEX
        return [[self.tags[i] for i in row[keep].tolist()] for row, keep in zip(best, tagged, strict=True)]

    def reference(self, example: Encoded) -> list[str]:
        return [self.tags[i] for i in example.labels if i != IGNORE_INDEX]

    @staticmethod
    def count(batch: dict[str, torch.Tensor]) -> int:
        """Tagged tokens the loss sums over."""
        return int((batch["labels"] != IGNORE_INDEX).sum())


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


class MultipleChoiceObjective(_Scoring):
    """Each choice scored by the log-likelihood of its tokens after the context (causal LMs); the loss
    is the cross-entropy over a row's choice scores, so training raises the right choice's likelihood
    against the others'.

    Batches are (B, C, T): row b's choice c is its context + that choice, ``labels`` covering the
    choice's tokens (:func:`~softprompt.data.collate`); empty slots (rows with fewer choices) score -inf.
    """

    padding_side = "right"

    def __init__(self, model: SoftPromptModel, score: str = "mean") -> None:
        super().__init__(model)
        self.score = score

    @classmethod
    def for_task(cls, model: PromptedModel, task: Any, tokenizer: Any) -> MultipleChoiceObjective:
        return cls(model, task.score)

    def without_prompt(self) -> MultipleChoiceObjective:
        """The same objective on the frozen model without any prompt (the zero-shot baseline)."""
        return type(self)(self.model.without_prompt(), self.score)

    def batch_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Choice log-likelihoods (B, C): summed or averaged over each choice's tokens."""
        rows, choices, width = batch["input_ids"].shape
        mask = batch["attention_mask"].view(-1, width)  # (B * C, T)
        present = mask.any(-1)  # (B * C,): empty slots are not run
        ids, mask = batch["input_ids"].view(-1, width)[present], mask[present]
        targets = batch["labels"].view(-1, width)[present][:, 1:]  # position t predicts token t + 1
        scored = targets != IGNORE_INDEX  # (N, T - 1)
        where = F.pad(scored, (0, 1))  # (N, T): the positions that predict a choice's tokens
        logits = self.model.logits_where(ids, mask, where).float()  # (M, V): the model's own, there only
        token_logp = logits.log_softmax(-1).gather(-1, targets[scored][:, None]).squeeze(-1)  # (M,)
        sequence = scored.nonzero()[:, 0]  # which of the N sequences each position belongs to
        totals = torch.zeros(ids.shape[0], device=logits.device).index_add(0, sequence, token_logp)
        if self.score == "mean":
            totals = totals / scored.sum(-1).clamp(min=1)
        out = torch.full((rows * choices,), float("-inf"), device=logits.device)
        out[present] = totals
        return out.view(rows, choices)


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
