"""The registry of model kinds: every kind's entries resolve, and each dispatch is a lookup."""

from __future__ import annotations

import pytest
import transformers as T
from tiny import tiny_causal_lm, tiny_encoder, tiny_model, tiny_seq2seq_lm
from transformers.models.auto import modeling_auto

import softprompt
from softprompt.kinds import HEADS, KINDS, TASK_NEEDS, _mapped_class_names, head_of
from softprompt.models import PromptedModel


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_resolves_its_model_class_heads_and_objectives(name):
    kind = KINDS[name]
    assert issubclass(kind.model_class, PromptedModel)
    assert kind.run_head in kind.heads and all(head in HEADS for head in kind.heads)
    for task in kind.objective_paths:
        objective = kind.objective(task)
        assert hasattr(objective, "for_task") and hasattr(objective, "count")


def test_an_objective_a_kind_lacks_is_refused_with_the_reason_and_the_ones_it_has():
    with pytest.raises(
        ValueError,
        match=r"encoders cannot train a generation task: it needs a decoder that writes text \(causal LMs and "
        r"encoder-decoders have it\); encoders train classification, multi_label, regression, token_classification",
    ):
        KINDS["encoder"].objective("generation")
    with pytest.raises(
        ValueError,
        match=r"encoder-decoders cannot train a regression task: it needs a head with one output \(causal LMs "
        r"and encoders have it\)",
    ):
        KINDS["seq2seq"].objective("regression")
    with pytest.raises(
        ValueError, match=r"multiple_choice task: it needs a language model's likelihood .*\(causal LMs"
    ):
        KINDS["seq2seq"].objective("multiple_choice")


@pytest.mark.parametrize(
    "kind, supported",
    [
        (
            "causal",
            {
                "classification",
                "multiple_choice",
                "generation",
                "multi_label",
                "regression",
                "token_classification",
            },
        ),
        ("seq2seq", {"classification", "generation"}),
        ("encoder", {"classification", "multi_label", "regression", "token_classification"}),
    ],
)
def test_which_task_kinds_each_model_kind_trains_and_with_which_head(kind, supported):
    assert set(KINDS[kind].objective_paths) == supported
    heads = {task: KINDS[kind].head_for(task) for task in supported}
    new_heads = {"multi_label": "sequence-classification", "regression": "sequence-classification",
                 "token_classification": "token-classification"}  # fmt: skip
    if kind == "encoder":
        assert heads == {"classification": "sequence-classification", **new_heads}
    elif kind == "causal":  # label words score the LM's own head; tasks without them train a new one
        assert heads == {"classification": "causal-lm", "multiple_choice": "causal-lm", "generation": "causal-lm",
                         **new_heads}  # fmt: skip
    else:
        assert set(heads.values()) == {KINDS[kind].run_head}
    assert all(task in TASK_NEEDS for task in supported)


@pytest.mark.parametrize(
    "model, head, kind",
    [
        (lambda: tiny_causal_lm("llama"), "causal-lm", "causal"),
        (lambda: tiny_seq2seq_lm("t5"), "seq2seq-lm", "seq2seq"),
        (lambda: tiny_encoder("bert", "token-classification"), "token-classification", "encoder"),
        (lambda: tiny_encoder("bert", "features"), "features", "encoder"),
    ],
)
def test_wrap_picks_the_model_class_of_the_kind(model, head, kind):
    base = model()
    assert head_of(base) == head
    wrapped = softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=2))
    assert type(wrapped) is KINDS[kind].model_class


def test_every_head_loads_through_its_auto_class():
    assert HEADS["causal-lm"].load_class() is T.AutoModelForCausalLM
    assert HEADS["features"].load_class() is T.AutoModel
    assert {head.peft_task_type for head in HEADS.values()} == {
        "CAUSAL_LM",
        "SEQ_2_SEQ_LM",
        "SEQ_CLS",
        "TOKEN_CLS",
        "FEATURE_EXTRACTION",
    }


def test_a_class_mapped_under_another_model_type_than_its_configs_has_that_head():
    model = tiny_model("emu3", "causal-lm")  # Emu3ForCausalLM: mapped under "emu3", config "emu3_text_model"
    assert model.config.model_type != "emu3" and head_of(model) == "causal-lm"


@pytest.mark.parametrize("name", sorted(HEADS))
def test_a_heads_classes_are_its_mappings_under_every_model_type_read_once(name):
    head = HEADS[name]
    mapping = getattr(modeling_auto, head.mapping)
    expected = {cls for model_type in mapping for cls in head.class_names(model_type)}
    assert expected and head.all_class_names() == expected
    # Both lookups read transformers' tables once: wrap calls them for every model.
    assert head.all_class_names() is head.all_class_names()
    assert head.all_class_names() <= _mapped_class_names()
    assert _mapped_class_names() is _mapped_class_names()
