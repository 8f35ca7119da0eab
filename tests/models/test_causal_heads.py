"""Decoders with a classification head: token classification takes every method, sequence
classification is refused (decoder classifiers pool rows in ways a prompt in front breaks)."""

import pytest
import torch
from tiny import padded_batch, random_ids, tiny_model

import softprompt

METHODS = {
    "prompt_tuning": softprompt.PromptTuningConfig(num_virtual_tokens=3, init="random", seed=1),
    "prefix_tuning": softprompt.PrefixTuningConfig(
        num_virtual_tokens=3, init="random", random_scale=1.0, seed=2
    ),
}
ROWS = [random_ids(1, n, seed=n)[0] for n in (6, 3, 5)]


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("side", ["left", "right"])
def test_a_token_classifier_tags_rows_padded_in_a_batch_as_alone(method, side):
    model = softprompt.wrap(tiny_model("llama", "token-classification"), METHODS[method]).eval()
    ids, mask = padded_batch(ROWS, side)
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        for i, row in enumerate(ROWS):
            alone = model(input_ids=row[None]).logits
            torch.testing.assert_close(batched[i : i + 1, mask[i].bool()], alone, atol=1e-5, rtol=1e-5)


def test_a_prompt_of_real_tokens_tags_as_those_tokens_in_front():
    base = tiny_model("llama", "token-classification").eval()
    text = torch.tensor([7, 8, 9])
    model = softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=3, init="random"))
    with torch.no_grad():
        model.prompt.embeddings.copy_(base.get_input_embeddings()(text))
        for row in ROWS:
            expected = base(input_ids=torch.cat([text, row])[None]).logits[:, len(text) :]
            torch.testing.assert_close(model(input_ids=row[None]).logits, expected, atol=1e-5, rtol=1e-5)


def test_a_decoder_sequence_classifier_is_refused_with_the_heads_that_work():
    with pytest.raises(softprompt.UnsupportedModelError, match="supports causal-lm .*token-classification"):
        softprompt.wrap(tiny_model("llama", "sequence-classification"), METHODS["prompt_tuning"])
