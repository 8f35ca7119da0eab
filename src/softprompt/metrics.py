"""Evaluation metrics, named as run configs name them (``task.metrics``).

Scores are percentages (a float in [0, 100]) except ``mse`` (in the squared unit of the values) and
the correlations ``pearson`` / ``spearman`` (x 100, so in [-100, 100], as GLUE reports them).

* classification: predicted and gold labels (any hashable values) — ``accuracy``, ``macro_f1``,
  ``micro_f1``; for multi-label classification a row's labels are a ``frozenset`` (``accuracy`` is
  then the exact-set match, the F1s count each (row, label) pair);
* regression: numbers — ``mse``, ``pearson``, ``spearman``;
* token classification: one tag sequence per row — ``token_accuracy``, ``entity_f1`` (spans of
  BIO tags, as conlleval and seqeval count them);
* generation: predicted strings against one reference string, or a list of references, per row —
  ``exact_match``, ``bleu``, ``rouge`` (three scores).

Examples:
    >>> scores = compute_metrics(["accuracy", "macro_f1"], [0, 1, 1], [0, 1, 0])
    >>> {name: round(score, 2) for name, score in scores.items()}
    {'accuracy': 66.67, 'macro_f1': 66.67}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from itertools import zip_longest

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

Reference = str | Sequence[str]
"""One reference text, or several equally good ones."""
Label = Hashable | frozenset
"""A row's class, or its set of classes (multi-label)."""

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
    predictions: Sequence[Label], references: Sequence[Label], labels: Sequence[Hashable] | None = None
) -> float:
    """Unweighted mean over classes of per-class F1, as a percentage.

    Classes are `labels` if given, else every value seen in references or predictions. A class
    that is never predicted (or never gold) has F1 = 0 and still counts in the mean, as in
    scikit-learn's `f1_score(average="macro")`. Multi-label rows (sets of labels) count each label.

    Examples:
        >>> macro_f1([0, 0, 0, 0], [0, 0, 1, 1])  # class 1 never predicted: F1s are 2/3 and 0
        33.33333333333333
    """
    _check_lengths(predictions, references)
    pairs = [(_as_set(p), _as_set(r)) for p, r in zip(predictions, references, strict=True)]
    seen = [c for _, r in pairs for c in r] + [c for p, _ in pairs for c in p]
    classes = list(labels) if labels is not None else list(dict.fromkeys(seen))
    scores = []
    for c in classes:
        tp = sum(c in p and c in r for p, r in pairs)
        fp = sum(c in p and c not in r for p, r in pairs)
        fn = sum(c not in p and c in r for p, r in pairs)
        scores.append(_f1(tp, fp, fn))
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


def micro_f1(predictions: Sequence[Label], references: Sequence[Label]) -> float:
    """F1 over all (row, label) decisions pooled, as a percentage (for single labels: the accuracy).

    Examples:
        >>> micro_f1([frozenset({"a", "b"}), frozenset()], [frozenset({"a"}), frozenset({"b"})])  # TP 1, FP 1, FN 1
        50.0
    """
    _check_lengths(predictions, references)
    pairs = [(_as_set(p), _as_set(r)) for p, r in zip(predictions, references, strict=True)]
    tp = sum(len(p & r) for p, r in pairs)
    return 100.0 * _f1(tp, sum(len(p - r) for p, r in pairs), sum(len(r - p) for p, r in pairs))


def mse(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Mean squared error.

    Examples:
        >>> mse([1.0, 2.0], [1.0, 4.0])
        2.0
    """
    _check_lengths(predictions, references)
    return sum((p - r) ** 2 for p, r in zip(predictions, references, strict=True)) / len(references)


def pearson(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Pearson's correlation x 100 (0 when either side is constant).

    Examples:
        >>> round(pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]), 2)
        99.34
    """
    _check_lengths(predictions, references)
    n = len(references)
    mp, mr = sum(predictions) / n, sum(references) / n
    cov = sum((p - mp) * (r - mr) for p, r in zip(predictions, references, strict=True))
    sp = math.sqrt(sum((p - mp) ** 2 for p in predictions))
    sr = math.sqrt(sum((r - mr) ** 2 for r in references))
    return 100.0 * cov / (sp * sr) if sp and sr else 0.0


def spearman(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Spearman's rank correlation x 100 (Pearson's of the ranks; ties share their mean rank).

    Examples:
        >>> round(spearman([1.0, 2.0, 3.0], [2.0, 4.0, 70.0]), 6)
        100.0
    """
    return pearson(_ranks(predictions), _ranks(references))


def token_accuracy(
    predictions: Sequence[Sequence[Hashable]], references: Sequence[Sequence[Hashable]]
) -> float:
    """Percentage of tokens (over all rows) whose tag is the reference's.

    Examples:
        >>> token_accuracy([["O", "B-PER"], ["O"]], [["O", "O"], ["O"]])
        66.66666666666667
    """
    _check_lengths(predictions, references)
    pairs = [pair for p, r in zip(predictions, references, strict=True) for pair in zip(p, r, strict=True)]
    if not pairs:
        raise ValueError("no tokens to score")
    return 100.0 * sum(p == r for p, r in pairs) / len(pairs)


def entity_f1(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> float:
    """Micro F1 of entity spans read from BIO tags ("B-PER", "I-PER", "O"), as a percentage: a span
    counts when its type, start and end all match. As conlleval (and seqeval's default), an "I-" tag
    that does not continue a span of its type starts one.

    Examples:
        >>> entity_f1([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-ORG"]])
        50.0
    """
    _check_lengths(predictions, references)
    found = {(row, span) for row, tags in enumerate(predictions) for span in _spans(tags)}
    gold = {(row, span) for row, tags in enumerate(references) for span in _spans(tags)}
    return 100.0 * _f1(len(found & gold), len(found - gold), len(gold - found))


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


def _named(fn: Callable[[Sequence, Sequence], float]) -> Callable[[Sequence, Sequence], dict[str, float]]:
    return lambda predictions, references: {fn.__name__: fn(predictions, references)}


# name -> function returning named scores; "rouge" yields three.
_SINGLE = (accuracy, macro_f1, micro_f1, mse, pearson, spearman, token_accuracy, entity_f1, exact_match, bleu)
METRICS: dict[str, Callable[[Sequence, Sequence], dict[str, float]]] = {
    **{fn.__name__: _named(fn) for fn in _SINGLE},
    "rouge": rouge,
}
# Scores where lower is better (the best adapter has the least); every other score is maximised.
LOWER_IS_BETTER = frozenset({"loss", "mse"})
# The unit of each score that is not a percentage, for plots.
UNITS = {"mse": "squared units", "pearson": "r x 100", "spearman": "rho x 100", "loss": ""}


def is_better(name: str, score: float, than: float | None) -> bool:
    """Whether ``score`` beats ``than`` (None: nothing yet) on the metric ``name``.

    Examples:
        >>> is_better("accuracy", 80.0, 75.0), is_better("mse", 0.3, 0.2), is_better("mse", 0.3, None)
        (True, False, True)
    """
    if than is None:
        return True
    return score < than if name in LOWER_IS_BETTER else score > than


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


def _as_set(label: Label) -> frozenset:
    """A row's labels as a set: multi-label rows already are one, a single label becomes one."""
    return label if isinstance(label, frozenset | set) else frozenset([label])


def _f1(tp: int, fp: int, fn: int) -> float:
    # F1 = 2PR / (P + R) = 2TP / (2TP + FP + FN); nothing to find and nothing found scores 0.
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) of each entity in a BIO tag sequence."""
    spans, current = set(), None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, kind = tag.partition("-")
        if current is not None and (prefix != "I" or kind != current[0]):
            spans.add((current[0], current[1], i))
            current = None
        if prefix == "B" or (prefix == "I" and current is None):
            current = (kind, i)
    return spans


def _as_list(refs: Reference) -> list[str]:
    """A reference or list of references, as a non-empty list."""
    refs = [refs] if isinstance(refs, str) else list(refs)
    if not refs:
        raise ValueError("an example has an empty list of references")
    return refs
