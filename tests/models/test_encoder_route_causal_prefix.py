"""An encoder-route prefix on a causal attention (Qwen3-ASR's token classifier runs its Qwen3 language
model, causal, as the encoder): a row alone must compute what it computes in a padded batch.

Alone, transformers skips the all-ones causal mask (sdpa's ``is_causal``); with the prefix's keys in front,
sdpa then keeps only the first Q keys and aligns its triangle top-left, so the prefix hides tokens. A
padded batch has an explicit causal mask and is right; softprompt's attention makes the skipped
triangle explicit (aligned bottom-right over the layer's own keys) before it prepends the prefix.
"""

import torch
from tiny import padded_batch, random_ids, tiny_model

import softprompt


def test_a_causal_encoder_row_with_a_prefix_is_the_same_alone_and_left_padded():
    base = tiny_model("qwen3_asr", "token-classification")
    model = softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=3, init="random")).eval()
    rows = [random_ids(1, 6, seed=1)[0], random_ids(1, 4, seed=2)[0]]
    ids, mask = padded_batch(rows, "left")
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        alone = [model(input_ids=row[None]).logits for row in rows]
    for i, row_alone in enumerate(alone):
        torch.testing.assert_close(batched[i : i + 1, mask[i].bool()], row_alone, atol=1e-5, rtol=1e-5)
