"""Evaluation metrics. Every score is a percentage: a float in [0, 100].

Classification metrics compare predicted and gold labels (any hashable values). Generation
metrics compare predicted strings with one reference string, or a list of references, per example.

Examples:
    >>> scores = compute_metrics(["accuracy", "macro_f1"], [0, 1, 1], [0, 1, 0])
    >>> {name: round(score, 2) for name, score in scores.items()}
    {'accuracy': 66.67, 'macro_f1': 66.67}
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from itertools import zip_longest

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

Reference = str | Sequence[str]
"""One reference text, or several equally good ones."""

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def accuracy(predictions: Sequence[Hashable], references: Sequence[Hashable]) -> float:
    """Percentage of predictions equal to their reference.

    Examples:
        >>> accuracy([1, 0, 1, 1], [1, 0, 0, 1])
        75.0
    """
    _check_lengths(predictions, references)
    return 100.0 * sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references)


def macro_f1(
    predictions: Sequence[Hashable], references: Sequence[Hashable], labels: Sequence[Hashable] | None = None
) -> float:
    """Unweighted mean over classes of per-class F1, as a percentage.

    Classes are `labels` if given, else every value seen in references or predictions. A class
    that is never predicted (or never gold) has F1 = 0 and still counts in the mean, as in
    scikit-learn's `f1_score(average="macro")`.

    Examples:
        >>> macro_f1([0, 0, 0, 0], [0, 0, 1, 1])  # class 1 never predicted: F1s are 2/3 and 0
        33.33333333333333
    """
    _check_lengths(predictions, references)
    classes = list(labels) if labels is not None else list(dict.fromkeys([*references, *predictions]))
    pairs = list(zip(predictions, references, strict=True))
    scores = []
    for c in classes:
        tp = sum(p == c and r == c for p, r in pairs)
        fp = sum(p == c and r != c for p, r in pairs)
        fn = sum(p != c and r == c for p, r in pairs)
        # F1 = 2PR / (P + R) = 2TP / (2TP + FP + FN); a class absent from both sides scores 0.
        denominator = 2 * tp + fp + fn
        scores.append(2 * tp / denominator if denominator else 0.0)
    return 100.0 * sum(scores) / len(scores)


def exact_match(predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """Percentage of predictions equal to one of their references, ignoring surrounding whitespace.

    Examples:
        >>> exact_match([" yes", "no"], [["yes", "y"], "maybe"])
        50.0
    """
    _check_lengths(predictions, references)
    hits = sum(
        p.strip() in {r.strip() for r in _as_list(refs)}
        for p, refs in zip(predictions, references, strict=True)
    )
    return 100.0 * hits / len(references)


def bleu(predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """Corpus BLEU from sacrebleu (13a tokenization, cased), 0-100.

    Examples may have different numbers of references. BLEU counts n-grams up to 4, so texts
    shorter than four tokens score 0 even when identical.

    Examples:
        >>> bleu(["the cat sat on the mat"], [["the cat sat on the mat", "a cat was on the mat"]])
        100.00000000000004
    """
    _check_lengths(predictions, references)
    ref_lists = [_as_list(refs) for refs in references]
    # sacrebleu wants one stream per reference slot; None pads examples with fewer references.
    streams = [list(stream) for stream in zip_longest(*ref_lists, fillvalue=None)]
    return float(BLEU().corpus_score(list(predictions), streams).score)


def rouge(predictions: Sequence[str], references: Sequence[Reference]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measure (rouge-score, Porter stemming), each 0-100.

    With several references an example scores its best reference, per ROUGE type.

    Examples:
        >>> rouge(["the cat sat"], [["the cat sat", "a dog"]])
        {'rouge1': 100.0, 'rouge2': 100.0, 'rougeL': 100.0}
    """
    _check_lengths(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, refs in zip(predictions, references, strict=True):
        scores = [scorer.score(ref, prediction) for ref in _as_list(refs)]  # score(target, prediction)
        for kind in ROUGE_TYPES:
            totals[kind] += max(s[kind].fmeasure for s in scores)
    return {kind: 100.0 * total / len(references) for kind, total in totals.items()}


# name -> function returning named scores; "rouge" yields three.
METRICS: dict[str, Callable[[Sequence, Sequence], dict[str, float]]] = {
    "accuracy": lambda p, r: {"accuracy": accuracy(p, r)},
    "macro_f1": lambda p, r: {"macro_f1": macro_f1(p, r)},
    "exact_match": lambda p, r: {"exact_match": exact_match(p, r)},
    "bleu": lambda p, r: {"bleu": bleu(p, r)},
    "rouge": rouge,
}


def compute_metrics(names: Sequence[str], predictions: Sequence, references: Sequence) -> dict[str, float]:
    """Compute the named metrics; "rouge" adds keys rouge1, rouge2 and rougeL.

    Examples:
        >>> compute_metrics(["exact_match"], ["a"], ["a "])
        {'exact_match': 100.0}
    """
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known metrics: {sorted(METRICS)}")
    results: dict[str, float] = {}
    for name in names:
        results.update(METRICS[name](predictions, references))
    return results


def _check_lengths(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise ValueError("no predictions to score")


def _as_list(refs: Reference) -> list[str]:
    """A reference or list of references, as a non-empty list."""
    refs = [refs] if isinstance(refs, str) else list(refs)
    if not refs:
        raise ValueError("an example has an empty list of references")
    return refs
