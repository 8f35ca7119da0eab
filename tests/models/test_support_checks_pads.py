"""The support matrix's padding check on a model that attends to its own pads (YOSO in transformers 5):
a prompted row is held to the same row alone with the same pads, exactly, not to a multiple of the bare
model's drift."""

import re
from types import SimpleNamespace

import pytest
import support_checks
import torch
from support_checks import (
    ROW_LENGTHS,
    Outcome,
    _attends_to_its_pads,
    case_inputs,
    check_method,
    method_configs,
)
from tiny import padded_batch, tiny_model


@pytest.fixture(scope="module")
def yoso():
    return tiny_model("yoso", "sequence-classification")


def test_yoso_attends_to_its_pads_and_bert_does_not(yoso):
    rows = case_inputs(yoso, "sequence-classification").rows
    assert _attends_to_its_pads(yoso, rows, None)
    # transformers' YOSO turns the 0/1 mask into ones (int(1 + mask / 10000)): a masked pad changes the logits
    ids, mask = padded_batch(rows, "right")
    with torch.no_grad():
        padded = yoso(input_ids=ids[1:2], attention_mask=mask[1:2]).logits
        alone = yoso(input_ids=ids[1:2, : ROW_LENGTHS[1]]).logits
    assert (padded - alone).abs().max() > 1e-5
    bert = tiny_model("bert", "sequence-classification")
    assert not _attends_to_its_pads(bert, case_inputs(bert, "sequence-classification").rows, None)


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_prompts_on_yoso_pass_against_the_same_row_with_its_pads(yoso, method, tmp_path):
    assert check_method(yoso, "sequence-classification", method_configs()[method], tmp_path) == Outcome(
        "works"
    )


def test_on_yoso_logits_that_depend_on_the_batch_still_fail(yoso, monkeypatch, tmp_path):
    class BatchDependent(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base_model, self.prompt = base, torch.nn.Linear(1, 1)

        def forward(self, **inputs):  # the prompt's effect, plus 1e-3 per row of the batch
            logits = self.base_model(**inputs).logits + 0.5 + 1e-3 * inputs["input_ids"].shape[0]
            return SimpleNamespace(logits=logits)

    monkeypatch.setattr(support_checks.softprompt, "wrap", lambda base, config: BatchDependent(base))
    outcome = check_method(yoso, "sequence-classification", method_configs()["prompt_tuning"], tmp_path)
    assert outcome.check == "padding invariance"
    assert re.fullmatch(
        r"rows left-padded in a batch differ from alone with the same pads by \S+ \(the model attends to its pads\)",
        outcome.detail,
    )
