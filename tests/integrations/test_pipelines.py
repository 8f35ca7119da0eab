"""``transformers.pipeline`` with a softprompt model gives the model's own outputs: text generation
(greedy, batched, new text only), text classification and token classification. (transformers 5
has no text-to-text pipeline: encoder-decoders generate through ``model.generate``.)"""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_causal_lm, tiny_encoder
from transformers import pipeline

import softprompt

PROMPT = softprompt.PromptTuningConfig(num_virtual_tokens=4)
TEXTS = ["where is paris", "what is a cat hello"]


def test_text_generation_gives_the_models_own_generation(tokenizer):
    model = softprompt.wrap(tiny_causal_lm("llama"), PROMPT).eval()
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    for text in TEXTS:
        ids = tokenizer(text, return_tensors="pt").input_ids
        expected = model.generate(ids, max_new_tokens=4, do_sample=False)[0]
        (out,) = generator(text, max_new_tokens=4, do_sample=False, return_tensors=True)
        assert out["generated_token_ids"] == expected.tolist()
        (new,) = generator(text, max_new_tokens=4, do_sample=False, return_full_text=False)
        assert new["generated_text"] == tokenizer.decode(expected[ids.shape[1] :])

    # batched (left-padded by the pipeline) == one by one
    one_by_one = [generator(text, max_new_tokens=4, do_sample=False)[0]["generated_text"] for text in TEXTS]
    batched = generator(TEXTS, max_new_tokens=4, do_sample=False, batch_size=2)
    assert [rows[0]["generated_text"] for rows in batched] == one_by_one


def test_text_classification_scores_are_the_models(tokenizer):
    base = tiny_encoder("bert", num_labels=2)
    base.config.id2label = {0: "NEG", 1: "POS"}
    model = softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=4)).eval()
    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None)
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        probabilities = model(**batch).logits.softmax(-1)
    for results, row in zip(classifier(TEXTS), probabilities, strict=True):
        scores = {item["label"]: item["score"] for item in results}
        assert scores == pytest.approx({"NEG": row[0].item(), "POS": row[1].item()}, rel=1e-5)


def test_token_classification_tags_are_the_models(tokenizer):
    base = tiny_encoder("bert", task="token-classification", num_labels=3)
    base.config.id2label = {0: "O", 1: "B-LOC", 2: "I-LOC"}
    model = softprompt.wrap(base, PROMPT).eval()
    tagger = pipeline("token-classification", model=model, tokenizer=tokenizer, ignore_labels=[])
    text = TEXTS[1]
    batch = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits[0]  # (T, 3): the caller's tokens only
    entities = tagger(text)
    assert [e["word"] for e in entities] == text.split()
    assert [e["entity"] for e in entities] == [base.config.id2label[i] for i in logits.argmax(-1).tolist()]
    torch.testing.assert_close(
        torch.tensor([e["score"] for e in entities]), logits.softmax(-1).max(-1).values, rtol=1e-5, atol=0
    )


def test_a_decoder_classifier_scores_a_padded_batch_as_each_text_alone(tokenizer):
    from tiny import tiny_model

    base = tiny_model("llama", "sequence-classification")
    base.config.id2label = {i: f"L{i}" for i in range(base.config.num_labels)}
    base.config.label2id = {label: i for i, label in base.config.id2label.items()}
    model = softprompt.wrap(base, PROMPT).eval()
    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None)
    texts = [*TEXTS, "hello"]  # three lengths: the pipeline pads the batch
    alone = [{item["label"]: item["score"] for item in classifier([text])[0]} for text in texts]
    batched = classifier(texts, batch_size=3)
    for results, expected in zip(batched, alone, strict=True):
        assert {item["label"]: item["score"] for item in results} == pytest.approx(expected, rel=1e-5)
