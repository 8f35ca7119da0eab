"""The support matrix: model types from transformers' own auto mappings, every method, the same checks
``scripts/support_table.py`` writes into ``docs/support.md`` (tests/support_checks.py).

The default run checks a sample covering each kind of model; ``SOFTPROMPT_SLOW=1`` runs every model
type of every head, and each case that fails a check fails its own test with the reason."""

import os
from types import SimpleNamespace

import pytest
import support_checks
import torch
from support_checks import CaseResult, Outcome, cases, check_method, method_configs, run_case, run_isolated
from tiny import GENERIC_HIDDEN, GENERIC_LAYERS, GENERIC_MAX_PARAMETERS, BuildError, NotATextModel, tiny_model
from transformers.models.auto import modeling_auto

from softprompt.methods import METHODS

# One case per kind softprompt adapts, and both ways a causal LM or an encoder-decoder is built
# (grouped-query Llama, multi-head GPT-2 with learned positions; T5's relative, BART's learned positions).
SAMPLE = [
    ("llama", "causal-lm"),
    ("gpt2", "causal-lm"),
    ("t5", "seq2seq-lm"),
    ("bart", "seq2seq-lm"),
    ("bert", "sequence-classification"),
    ("distilbert", "token-classification"),
]
WORKS = Outcome("works")


@pytest.mark.parametrize(("model_type", "head"), SAMPLE)
def test_every_method_passes_every_check_on_a_sample_of_the_matrix(model_type, head):
    result = run_case(model_type, head)
    assert (result.built, result.attention_based) == ("yes", True)
    assert result.outcomes == dict.fromkeys(METHODS, WORKS)


def test_a_refused_method_is_refused_with_its_reason_and_the_others_still_run():
    result = run_case("mra", "sequence-classification")  # its attention gives zeros without CUDA
    refused = result.outcomes.pop("prefix_tuning")
    assert (refused.status, refused.check) == ("refused", "wrap")
    assert refused.detail.startswith("mra encoders cannot take a key/value prefix")
    assert result.outcomes == {name: WORKS for name in METHODS if name != "prefix_tuning"}


@pytest.mark.slow
@pytest.mark.parametrize(("model_type", "head"), cases())
def test_every_method_runs_on_every_model_type(model_type, head):
    result = run_isolated(model_type, head)
    if result.built != "yes":
        pytest.skip(
            f"{'not a text model' if result.built == 'excluded' else 'does not build'}: {result.reason}"
        )
    failed = {name: f"{o.check}: {o.detail}" for name, o in result.outcomes.items() if o.status == "fails"}
    assert not failed


# -------------------------------------------------------------------------------- the matrix itself
def test_the_cases_are_every_type_of_the_four_auto_mappings():
    expected = {
        (t, head)
        for head, mapping in [
            ("causal-lm", modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
            ("seq2seq-lm", modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES),
            ("sequence-classification", modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES),
            ("token-classification", modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES),
        ]
        for t in mapping
    }
    assert len(cases()) == len(expected) and set(cases()) == expected


def test_every_registered_method_is_checked_with_a_tiny_prompt():
    configs = method_configs()
    assert set(configs) == set(METHODS)
    assert {c.num_virtual_tokens for c in configs.values()} == {3}


def test_a_model_type_without_a_table_entry_builds_tiny_and_seeded():
    model = tiny_model("olmo", "causal-lm")
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (GENERIC_HIDDEN, GENERIC_LAYERS)
    assert sum(p.numel() for p in model.parameters()) < GENERIC_MAX_PARAMETERS
    again = tiny_model("olmo", "causal-lm")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))


def test_latent_attention_builds_with_a_key_value_head_per_query_head():
    # DeepSeek's latent attention refuses grouped heads: the builder's second try gives each query its own.
    config = tiny_model("deepseek_v3", "causal-lm").config
    assert config.num_key_value_heads == config.num_attention_heads


@pytest.mark.parametrize(
    ("model_type", "head", "error", "reason"),
    [
        ("llama", "seq2seq-lm", BuildError, "transformers has no seq2seq-lm class for it"),
        ("no-such-model", "causal-lm", BuildError, "transformers has no such model type"),
        ("qwen2_audio", "seq2seq-lm", NotATextModel, "an audio model: it reads input_features"),
        ("perceiver", "sequence-classification", NotATextModel, "its main input is inputs, not text"),
    ],
)
def test_a_type_that_cannot_be_built_tiny_says_why(model_type, head, error, reason):
    with pytest.raises(error) as raised:
        tiny_model(model_type, head)
    assert (raised.value.model_type, raised.value.head, raised.value.reason) == (model_type, head, reason)


def test_a_size_the_generic_config_does_not_shrink_is_a_build_error():
    with pytest.raises(BuildError, match=r"blt \(causal-lm\): build: [\d,]+ parameters from a small config"):
        tiny_model("blt", "causal-lm")


# ------------------------------------------------------------------------ the checks catch defects
class _Wrapper(torch.nn.Module):
    """A stand-in for a prompted model whose forward is ``logits_of(base, inputs)``."""

    def __init__(self, base, logits_of):
        super().__init__()
        self.base_model, self.logits_of = base, logits_of
        self.prompt = torch.nn.Linear(1, 1)

    def forward(self, **inputs):
        return SimpleNamespace(logits=self.logits_of(self.base_model, inputs))


def _check_with(monkeypatch, logits_of, tmp_path):
    base = tiny_model("llama", "causal-lm")
    monkeypatch.setattr(support_checks.softprompt, "wrap", lambda b, config: _Wrapper(b, logits_of))
    return check_method(base, "causal-lm", method_configs()["prompt_tuning"], tmp_path)


def test_a_prompt_that_changes_nothing_fails(monkeypatch, tmp_path):
    outcome = _check_with(monkeypatch, lambda base, inputs: base(**inputs).logits, tmp_path)
    assert outcome == Outcome(
        "fails", "the prompt changes nothing: the logits are the bare model's", "prompt changes the logits"
    )


def test_logits_that_depend_on_the_batch_fail_padding_invariance(monkeypatch, tmp_path):
    outcome = _check_with(
        monkeypatch, lambda base, inputs: base(**inputs).logits + inputs["input_ids"].shape[0], tmp_path
    )
    assert (outcome.status, outcome.check) == ("fails", "padding invariance")
    assert outcome.detail == "rows left-padded in a batch differ from alone by 2.00e+00"


def test_a_model_that_drifts_padded_by_itself_bounds_the_drift_it_may_show(monkeypatch, tmp_path):
    base = tiny_model("llama", "causal-lm")
    forward = base.forward

    def drifting(**inputs):  # the bare model's own rows move with the batch by 1e-3 per row
        return SimpleNamespace(logits=forward(**inputs).logits + 1e-3 * inputs["input_ids"].shape[0])

    monkeypatch.setattr(base, "forward", drifting)
    monkeypatch.setattr(
        support_checks.softprompt, "wrap", lambda b, config: _Wrapper(b, lambda m, i: m(**i).logits + 0.5)
    )
    within = check_method(base, "causal-lm", method_configs()["prompt_tuning"], tmp_path)
    assert within.check != "padding invariance"  # it goes on to the next check
    monkeypatch.setattr(
        support_checks.softprompt,
        "wrap",
        lambda b, config: _Wrapper(b, lambda m, i: m(**i).logits + 0.5 + 1e-2 * i["input_ids"].shape[0]),
    )
    beyond = check_method(base, "causal-lm", method_configs()["prompt_tuning"], tmp_path)
    assert (beyond.check, beyond.detail) == (
        "padding invariance",
        "rows left-padded in a batch differ from alone by 2.20e-02; the bare model's own rows drift by 2.00e-03",
    )


def test_a_crash_that_is_not_a_refusal_fails_with_its_error(monkeypatch, tmp_path):
    def crash(base, inputs):
        raise RuntimeError("stack expects each tensor to be equal size")

    outcome = _check_with(monkeypatch, crash, tmp_path)
    assert outcome == Outcome(
        "fails", "RuntimeError: stack expects each tensor to be equal size", "prompt changes the logits"
    )


def test_a_case_whose_process_dies_is_reported_as_failing(monkeypatch):
    monkeypatch.setattr(support_checks, "run_case", lambda model_type, head: os._exit(3))
    result = run_isolated("llama", "causal-lm", timeout=60)
    died = Outcome("fails", "the process died (exit code 3)", "run")
    assert result == CaseResult(
        "llama", "causal-lm", "yes", outcomes=dict.fromkeys(METHODS, died), seconds=result.seconds
    )
