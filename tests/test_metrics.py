"""Metrics against hand-computed values and the properties their definitions promise."""

import pytest

from softprompt.metrics import (
    METRICS,
    accuracy,
    bleu,
    compute_metrics,
    entity_f1,
    exact_match,
    is_better,
    macro_f1,
    micro_f1,
    mse,
    pearson,
    rouge,
    spearman,
    token_accuracy,
)


def test_accuracy_is_a_percentage():
    assert accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == 75.0
    assert accuracy(["a", "b"], ["a", "b"]) == 100.0


def test_macro_f1_hand_computed():
    refs = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 2, 2]
    # class 0: TP 2, FP 0, FN 1 -> 4/5; class 1: TP 1, FP 1, FN 1 -> 1/2; class 2: TP 1, FP 1, FN 0 -> 2/3
    assert macro_f1(preds, refs) == pytest.approx(100 * (4 / 5 + 1 / 2 + 2 / 3) / 3)


def test_macro_f1_counts_classes_missing_from_predictions():
    # Always predicting 0: class 0 F1 = 2*2/(4+2) = 2/3, class 1 never predicted -> 0.
    assert macro_f1([0, 0, 0, 0], [0, 0, 1, 1]) == pytest.approx(100 / 3)
    # A class only in `labels` scores 0 and lowers the mean.
    assert macro_f1([0, 1], [0, 1], labels=[0, 1, 2]) == pytest.approx(200 / 3)
    assert macro_f1([0, 1], [0, 1]) == 100.0


def test_exact_match_strips_and_accepts_any_reference():
    assert exact_match([" Paris\n", "rome"], ["Paris", ["Rome", "rome"]]) == 100.0
    assert exact_match(["paris"], ["Paris"]) == 0.0


def test_bleu_identical_is_100_and_disjoint_is_0():
    text = "the cat sat on the mat today"
    assert bleu([text], [text]) == pytest.approx(100.0)
    assert bleu([text], [["a dog ran", text]]) == pytest.approx(100.0)
    assert bleu(["completely unrelated words go here"], [text]) == pytest.approx(0.0)


def test_bleu_accepts_varying_reference_counts():
    preds = ["the cat sat on the mat", "there is a dog in the park"]
    refs = [["the cat sat on the mat"], ["a dog is in the park", "there is a dog in the park", "dog park"]]
    assert bleu(preds, refs) == pytest.approx(100.0)


def test_rouge_takes_best_reference():
    scores = rouge(["the cat sat on the mat"], [["a dog barked", "the cat sat on the mat"]])
    assert scores == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    # One shared unigram out of two each side: P = R = F = 1/2; no shared bigram.
    half = rouge(["cat dog"], ["cat bird"])
    assert half == pytest.approx({"rouge1": 50.0, "rouge2": 0.0, "rougeL": 50.0})


def test_compute_metrics_merges_named_scores():
    scores = compute_metrics(
        ["exact_match", "bleu", "rouge"], ["the cat sat on the mat"], ["the cat sat on the mat"]
    )
    assert set(scores) == {"exact_match", "bleu", "rouge1", "rouge2", "rougeL"}
    assert scores["exact_match"] == 100.0
    assert compute_metrics(["accuracy", "macro_f1"], [1, 1], [1, 0]) == pytest.approx(
        {"accuracy": 50.0, "macro_f1": 100 * (0 + 2 / 3) / 2}
    )


def test_unknown_metric_lists_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown metric\(s\) \['f2'\]; known metrics: \['accuracy', 'bleu'"
    ):
        compute_metrics(["accuracy", "f2"], [1], [1])
    assert {"accuracy", "macro_f1", "micro_f1", "mse", "pearson", "spearman", "token_accuracy", "entity_f1",
            "exact_match", "bleu", "rouge"} == set(METRICS)  # fmt: skip


def test_length_mismatch_and_empty_inputs_fail():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="no predictions"):
        bleu([], [])
    with pytest.raises(ValueError, match="empty list of references"):
        exact_match(["a"], [[]])


def test_multi_label_rows_are_sets_and_every_label_counts():
    refs = [frozenset({"a", "b"}), frozenset({"b"}), frozenset()]
    preds = [frozenset({"a"}), frozenset({"b", "c"}), frozenset()]
    assert accuracy(preds, refs) == pytest.approx(100 / 3)  # exact sets: only the empty row
    # pooled: TP a, b; FP c; FN b of row 0 -> 2 * 2 / (4 + 1 + 1)
    assert micro_f1(preds, refs) == pytest.approx(100 * 4 / 6)
    # per label: a 2/(2+0+0)=1 (TP 1), b 2/(2+0+1)=2/3, c 0
    assert macro_f1(preds, refs) == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    # single labels: micro F1 is the accuracy
    assert micro_f1([0, 1, 1], [0, 1, 0]) == pytest.approx(accuracy([0, 1, 1], [0, 1, 0]))


def test_regression_scores_against_hand_computed_values():
    preds, refs = [1.0, 2.0, 4.0, 3.0], [1.5, 2.0, 3.0, 3.0]
    assert mse(preds, refs) == pytest.approx((0.25 + 0 + 1 + 0) / 4)
    # Pearson by the definition; Spearman is Pearson of the ranks (the tie at 3.0 shares rank 3.5).
    mp, mr = 2.5, 2.375
    cov = sum((p - mp) * (r - mr) for p, r in zip(preds, refs, strict=True))
    norm = (sum((p - mp) ** 2 for p in preds) * sum((r - mr) ** 2 for r in refs)) ** 0.5
    assert pearson(preds, refs) == pytest.approx(100 * cov / norm)
    assert spearman(preds, refs) == pytest.approx(pearson([1, 2, 4, 3], [1, 2, 3.5, 3.5]))
    assert pearson([1.0, 1.0], [0.0, 1.0]) == 0.0  # a constant side has no correlation


def test_token_scores_and_bio_spans():
    preds = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["I-ORG", "O"]]
    refs = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "O"]]
    assert token_accuracy(preds, refs) == pytest.approx(100 * 5 / 7)
    # spans: PER(0,2) right; LOC(3,5) vs LOC(3,4) wrong; I-ORG starts ORG(0,1), as B-ORG: right
    assert entity_f1(preds, refs) == pytest.approx(100 * 2 * 2 / (4 + 1 + 1))
    assert entity_f1([["O"]], [["O"]]) == 0.0


def test_lower_is_better_only_for_errors():
    assert is_better("loss", 0.5, 0.6) and not is_better("loss", 0.7, 0.6)
    assert is_better("pearson", 50.0, 40.0) and is_better("accuracy", 1.0, None)
