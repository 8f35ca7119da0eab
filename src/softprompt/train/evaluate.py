"""Score a prompted model on encoded examples: the objective's predictions, or generated text.

Rows are sorted by length into batches (little padding) and put back in order. With several
processes each scores its share of the rows and the predictions are gathered, so every process
returns the same scores.

Examples:
    >>> from softprompt.data import Encoded
    >>> from softprompt.train.objectives import ClassificationObjective
    >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4))
    >>> objective = ClassificationObjective(model, label_token_ids=[5, 6])
    >>> dev = [Encoded([7, 8, 9], label=0), Encoded([10, 11], label=1)]
    >>> scores = evaluate_predictions(objective, dev, batch_size=2, pad_token_id=0, metrics=["accuracy"])
    >>> sorted(scores)
    ['accuracy', 'loss']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from softprompt.data import Encoded, collate
from softprompt.metrics import compute_metrics
from softprompt.models import PromptedModel


def evaluate_predictions(
    objective: Any,
    examples: Sequence[Encoded],
    *,
    batch_size: int,
    pad_token_id: int,
    metrics: Sequence[str],
    accelerator=None,
) -> dict[str, float]:
    """The mean loss per item ("loss", as training counts items) and ``metrics`` of the objective's
    predictions: classes, label sets, numbers, tags or choices (:meth:`predict` / :meth:`reference`
    of the objectives in :mod:`softprompt.train.objectives`)."""
    device = objective.device

    def predict(rows: list[Encoded]) -> list[tuple[Any, float, int]]:
        batch = collate(rows, pad_token_id, objective.padding_side)
        batch = {name: tensor.to(device) for name, tensor in batch.items()}
        predictions, loss = objective.predict(batch)
        # The batch's loss and item count ride on its first row; the others carry zeros.
        totals = [(float(loss), objective.count(batch))] + [(0.0, 0)] * (len(rows) - 1)
        return [(p, total, n) for p, (total, n) in zip(predictions, totals, strict=True)]

    results = _map_batches(examples, batch_size, predict, accelerator)
    scores = {"loss": sum(total for _, total, _ in results) / max(1, sum(n for _, _, n in results))}
    references = [objective.reference(ex) for ex in examples]
    scores.update(compute_metrics(list(metrics), [p for p, _, _ in results], references))
    return scores


def evaluate_generation(
    model: PromptedModel,
    tokenizer: Any,
    examples: Sequence[Encoded],
    *,
    batch_size: int,
    metrics: Sequence[str],
    max_new_tokens: int,
    num_beams: int = 1,
    eos_token_id: int | None = None,
    accelerator=None,
) -> tuple[dict[str, float], list[str]]:
    """``metrics`` of the generated texts, and the texts (one per distinct source, in order).

    Rows with the same source (E2E and WebNLG give several references per input) are generated
    once and scored against all their references.
    """
    sources: dict[tuple[int, ...], list[str]] = {}
    for ex in examples:
        sources.setdefault(tuple(ex.prompt_ids or ex.input_ids), []).append(ex.reference or "")
    prompts = [Encoded(list(ids)) for ids in sources]
    texts = generate_texts(
        model,
        tokenizer,
        prompts,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        eos_token_id=eos_token_id,
        accelerator=accelerator,
    )
    return compute_metrics(list(metrics), texts, list(sources.values())), texts


def generate_texts(
    model: PromptedModel,
    tokenizer: Any,
    prompts: Sequence[Encoded],
    *,
    batch_size: int,
    max_new_tokens: int,
    num_beams: int = 1,
    eos_token_id: int | None = None,
    accelerator=None,
) -> list[str]:
    """Greedy or beam-search continuations of each prompt's ``input_ids``, decoded and stripped.

    ``eos_token_id`` stops a row (default: the model's generation config), e.g. a chat template's end
    of turn (:meth:`~softprompt.data.TextFormat.end_id`).
    """
    device = next(model.base_model.parameters()).device
    pad = tokenizer.pad_token_id

    def generate(rows: list[Encoded]) -> list[str]:
        batch = collate(rows, pad, "left")
        output = model.generate(
            batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            pad_token_id=pad,
            **({} if eos_token_id is None else {"eos_token_id": eos_token_id}),
        )
        # A decoder-only model returns prompt + continuation; an encoder-decoder the decoder's tokens.
        encoder_decoder = getattr(model.base_model.config, "is_encoder_decoder", False)
        new_tokens = output if encoder_decoder else output[:, batch["input_ids"].shape[1] :]
        return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    return _map_batches(prompts, batch_size, generate, accelerator)


@torch.no_grad()
def _map_batches(
    examples: Sequence[Encoded], batch_size: int, fn: Callable[[list[Encoded]], list], accelerator=None
) -> list:
    """``fn`` over length-sorted batches of this process's share; results in ``examples`` order."""
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    mine = sorted(range(rank, len(examples), world), key=lambda i: -len(examples[i].input_ids))
    indexed: list[tuple[int, Any]] = []
    for start in range(0, len(mine), batch_size):
        chunk = mine[start : start + batch_size]
        indexed.extend(zip(chunk, fn([examples[i] for i in chunk]), strict=True))
    if world > 1:
        from accelerate.utils import gather_object

        indexed = gather_object(indexed)
    return [result for _, result in sorted(indexed, key=lambda pair: pair[0])]
