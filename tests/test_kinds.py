"""The registry of model kinds: every kind's entries resolve, and each dispatch is a lookup."""

from __future__ import annotations

import pytest
import transformers as T
from tiny import tiny_causal_lm, tiny_encoder, tiny_seq2seq_lm

import softprompt
from softprompt.kinds import HEADS, KINDS, head_of
from softprompt.models import PromptedModel


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_resolves_its_model_class_heads_and_objectives(name):
    kind = KINDS[name]
    assert issubclass(kind.model_class, PromptedModel)
    assert kind.run_head in kind.heads and all(head in HEADS for head in kind.heads)
    for task in kind.objective_paths:
        objective = kind.objective(task)
        assert hasattr(objective, "for_task") and hasattr(objective, "count")


def test_an_objective_a_kind_lacks_is_refused_with_the_ones_it_has():
    with pytest.raises(
        ValueError, match="encoders cannot train a generation task; they train classification"
    ):
        KINDS["encoder"].objective("generation")


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
