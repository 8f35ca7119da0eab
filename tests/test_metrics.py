"""Metrics against hand-computed values and the properties their definitions promise."""

import pytest

from softprompt.metrics import METRICS, accuracy, bleu, compute_metrics, exact_match, macro_f1, rouge


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
    assert {"accuracy", "macro_f1", "exact_match", "bleu", "rouge"} == set(METRICS)


def test_length_mismatch_and_empty_inputs_fail():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="no predictions"):
        bleu([], [])
    with pytest.raises(ValueError, match="empty list of references"):
        exact_match(["a"], [[]])
