"""Decoders with a classification head (``LlamaForSequenceClassification``, ``...ForTokenClassification``).

A decoder's sequence classifier pools its own logits at each row's last token; softprompt runs rows
pads first, so that is the last column whatever padding the caller used. Checked against the bare
model with the prompt's text in front (a prompt made of real tokens' embeddings must be that text).
"""

import pytest
import torch
from tiny import padded_batch, random_ids, tiny_model

import softprompt
from softprompt.families import model_shape

METHODS = {
    "prompt_tuning": softprompt.PromptTuningConfig(num_virtual_tokens=3, init="random", seed=1),
    "prefix_tuning": softprompt.PrefixTuningConfig(
        num_virtual_tokens=3, init="random", random_scale=1.0, seed=2
    ),
}
ROWS = [random_ids(1, n, seed=n)[0] for n in (6, 3, 5)]


@pytest.mark.parametrize("head", ["sequence-classification", "token-classification"])
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("side", ["left", "right"])
def test_rows_padded_in_a_batch_score_what_they_score_alone(head, method, side):
    model = softprompt.wrap(tiny_model("llama", head), METHODS[method]).eval()
    ids, mask = padded_batch(ROWS, side)
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        for i, row in enumerate(ROWS):
            alone = model(input_ids=row[None]).logits
            got = (
                batched[i : i + 1]
                if head == "sequence-classification"
                else batched[i : i + 1, mask[i].bool()]
            )
            torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)


def test_a_prompt_of_real_tokens_classifies_as_those_tokens_in_front():
    base = tiny_model("llama", "sequence-classification").eval()
    text = torch.tensor([7, 8, 9])
    model = softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=3, init="random"))
    with torch.no_grad():
        model.prompt.embeddings.copy_(base.get_input_embeddings()(text))
        for row in ROWS:
            expected = base(input_ids=torch.cat([text, row])[None]).logits
            torch.testing.assert_close(model(input_ids=row[None]).logits, expected, atol=1e-5, rtol=1e-5)
    assert model_shape(base).head == "sequence-classification"
