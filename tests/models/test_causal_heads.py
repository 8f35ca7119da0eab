"""Decoders with a classification head: every method, the new head trains with the prompt and is
saved with it; a sequence classifier reads each row's last real token by the mask (padding-invariant),
proven at wrap time to be what the model's own head computes."""

import functools

import peft
import pytest
import torch
import transformers as T
from tiny import padded_batch, random_ids, tiny_model

import softprompt
from softprompt.files.errors import AdapterFileError
from softprompt.models.heads import classification_loss

METHODS = {
    "prompt_tuning": softprompt.PromptTuningConfig(num_virtual_tokens=3, init="random", seed=1),
    "prefix_tuning": softprompt.PrefixTuningConfig(
        num_virtual_tokens=3, init="random", random_scale=1.0, seed=2
    ),
}
ROWS = [random_ids(1, n, seed=n)[0] for n in (6, 3, 5)]
# Helium, OLMo and OPT find "the last token" their own way, which a prompt in front broke.
SEQUENCE_TYPES = ["gpt2", "helium", "llama", "olmo", "opt"]


@functools.cache
def classifier(model_type: str) -> torch.nn.Module:
    """A tiny sequence classifier, shared by the tests that only read it (wrapping freezes it)."""
    return tiny_model(model_type, "sequence-classification")


def backbone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    head = set(model.head)
    return {k: v.clone() for k, v in model.base_model.state_dict().items() if k.split(".")[0] not in head}


# ----------------------------------------------------------------------------- token classification
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


def test_a_token_classifiers_loss_is_each_tokens_own_label_as_transformers_computes_it():
    base = tiny_model("llama", "token-classification")
    bare = softprompt.wrap(base, METHODS["prompt_tuning"]).without_prompt()
    ids = random_ids(2, 6, seed=3)
    labels = torch.tensor([[0, 1, 2, -100, 1, 0], [2, 2, -100, 0, 1, 1]])
    with torch.no_grad():
        ours, own = bare(input_ids=ids, labels=labels).loss, base(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(ours, own, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_token_classifiers_new_head_trains_and_is_saved_with_the_prompt(method, tmp_path):
    model = softprompt.wrap(tiny_model("llama", "token-classification"), METHODS[method])
    assert sorted(model.head) == ["score"]
    frozen = backbone_state(model)
    labels = torch.tensor([[0, 1, 2, 1, 0, -100]])
    model(input_ids=ROWS[0][None], labels=labels).loss.backward()
    assert model.head["score"].weight.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in model.prompt.parameters())
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    assert all(torch.equal(v, backbone_state(model)[k]) for k, v in frozen.items())
    assert "base_model.score.weight" in model.state_dict()

    path = model.save(tmp_path / "tags.safetensors")
    again = softprompt.load(tiny_model("llama", "token-classification"), path).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            again(input_ids=ROWS[1][None]).logits, model(input_ids=ROWS[1][None]).logits
        )
    assert torch.equal(again.head["score"].weight, model.head["score"].weight)


# -------------------------------------------------------------------------- sequence classification
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("model_type", SEQUENCE_TYPES)
def test_a_sequence_classifier_scores_a_row_alone_as_left_or_right_padded_in_a_batch(model_type, method):
    model = softprompt.wrap(classifier(model_type), METHODS[method]).eval()
    with torch.no_grad():
        alone = torch.cat([model(input_ids=row[None]).logits for row in ROWS])  # (B, C)
        for side in ("left", "right"):
            ids, mask = padded_batch(ROWS, side)
            torch.testing.assert_close(
                model(input_ids=ids, attention_mask=mask).logits, alone, atol=1e-5, rtol=1e-5
            )
        bare = model.without_prompt()
        assert (alone - torch.cat([bare(input_ids=row[None]).logits for row in ROWS])).abs().max() > 1e-4


@pytest.mark.parametrize("model_type", SEQUENCE_TYPES)
def test_a_sequence_classifier_without_a_prompt_gives_the_models_own_logits(model_type):
    base = classifier(model_type)
    bare = softprompt.wrap(base, METHODS["prompt_tuning"]).without_prompt().eval()
    with torch.no_grad():
        for row in ROWS:  # no pads: the model's own pooling finds the last token too
            torch.testing.assert_close(
                bare(input_ids=row[None]).logits, base(input_ids=row[None]).logits, atol=1e-5, rtol=1e-5
            )


@pytest.mark.parametrize(
    "problem_type, labels",
    [
        (None, torch.tensor([2, 0, 1])),
        ("multi_label_classification", torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])),
        ("regression", torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0], [0.0, 3.0, 1.0]])),
    ],
)
def test_a_sequence_classifiers_loss_is_the_one_transformers_computes(problem_type, labels):
    base = tiny_model("llama", "sequence-classification")
    base.config.problem_type = problem_type
    bare = softprompt.wrap(base, METHODS["prompt_tuning"]).without_prompt()
    ids = random_ids(3, 5, seed=4)
    with torch.no_grad():
        ours, own = bare(input_ids=ids, labels=labels).loss, base(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(ours, own, atol=1e-6, rtol=1e-6)


def test_one_output_is_a_regression_as_in_transformers():
    logits, labels = torch.tensor([[0.5], [2.0]]), torch.tensor([1.0, 1.0])
    assert classification_loss(logits, labels).item() == pytest.approx((0.25 + 1.0) / 2)
    with pytest.raises(ValueError, match="problem_type must be regression, single_label"):
        classification_loss(logits, labels, "ranking")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_prompt_and_head_train_together_and_the_backbone_stays_frozen_bit_for_bit(method):
    model = softprompt.wrap(tiny_model("llama", "sequence-classification"), METHODS[method])
    frozen = backbone_state(model)
    head_before = model.head["score"].weight.detach().clone()
    ids, mask = padded_batch(ROWS, "left")
    model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2, 1])).loss.backward()
    assert model.head["score"].weight.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in model.prompt.parameters())
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    assert not torch.equal(model.head["score"].weight, head_before)
    assert all(torch.equal(v, backbone_state(model)[k]) for k, v in frozen.items())
    assert sorted(model.state_dict()) == [
        "_extra_state",
        "base_model.score.weight",
        *sorted(f"prompt.{name}" for name, _ in model.prompt.named_parameters()),
    ]


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_a_saved_classifier_loads_back_with_its_head_and_prompt(model_type, method, tmp_path):
    model = softprompt.wrap(tiny_model(model_type, "sequence-classification"), METHODS[method])
    model(input_ids=ROWS[0][None], labels=torch.tensor([1])).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    path = model.save(tmp_path / "cls.safetensors")

    again = softprompt.load(tiny_model(model_type, "sequence-classification"), path).eval()
    model.eval()
    ids, mask = padded_batch(ROWS, "right")
    with torch.no_grad():
        assert torch.equal(again.head["score"].weight, model.head["score"].weight)
        torch.testing.assert_close(
            again(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits
        )


def test_a_head_for_another_number_of_labels_is_refused(tmp_path):
    base = tiny_model("llama", "sequence-classification")
    path = softprompt.wrap(base, METHODS["prompt_tuning"]).save(tmp_path / "three.safetensors")
    config = {k: v for k, v in base.config.to_dict().items() if k not in ("id2label", "label2id")}
    other = T.LlamaForSequenceClassification(T.LlamaConfig.from_dict({**config, "num_labels": 5}))
    other.config._name_or_path = base.config._name_or_path
    with pytest.raises(
        AdapterFileError,
        match=r"tensor 'head.score.weight' is of shape \(3, 32\); expected \(5, 32\), the shape of this model's "
        r"head.\nThe head was trained for another number of labels: load it onto a model with that many",
    ):
        softprompt.load(other, path)


def test_load_head_refuses_tensors_the_head_has_no_place_for():
    model = softprompt.wrap(tiny_model("llama", "sequence-classification"), METHODS["prompt_tuning"])
    with pytest.raises(
        AdapterFileError,
        match=r"holds task-head tensors \['head.classifier.weight'\] that this "
        r"LlamaForSequenceClassification does not have; its head is \['head.score.weight'\]",
    ):
        model.load_head({"head.classifier.weight": torch.zeros(3, 3)}, "x.safetensors")
    with pytest.raises(
        AdapterFileError, match=r"head.score.weight has shape \(5, 32\), this model's head needs \(3, 32\)"
    ):
        model.load_head({"head.score.weight": torch.zeros(5, 32)}, "x.safetensors")


class ScaledClassifier(T.LlamaForSequenceClassification):
    """A classifier whose logits are not its head over the last token (they are doubled)."""

    def forward(self, *args, **kwargs):
        output = super().forward(*args, **kwargs)
        output.logits = output.logits * 2
        return output


def test_a_classifier_whose_head_does_something_else_is_refused_with_the_reason():
    base = tiny_model("llama", "sequence-classification")
    scaled = ScaledClassifier(base.config)
    scaled.load_state_dict(base.state_dict())
    with pytest.raises(
        softprompt.UnsupportedModelError,
        match=r"ScaledClassifier's logits are not its head \(score\) over the last token's hidden state "
        r"\(.* off on a probe row\).*sequence classification is not supported on it",
    ):
        softprompt.wrap(scaled, METHODS["prompt_tuning"])


def test_a_classifier_does_not_generate():
    model = softprompt.wrap(classifier("llama"), METHODS["prompt_tuning"])
    with pytest.raises(
        softprompt.UnsupportedModelError, match="sequence-classification model: it does not generate"
    ):
        model.generate(ROWS[0][None], max_new_tokens=2)


# peft's own prefix tuning cannot run a decoder classifier on transformers 5 ("Model does not support past
# key values which are required for prefix tuning").
@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_a_peft_sequence_classifier_loads_with_peft_logits(method, tmp_path):
    base = tiny_model("llama", "sequence-classification")
    config = {
        "prompt_tuning": peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4),
        "p_tuning": peft.PromptEncoderConfig(
            task_type="SEQ_CLS", num_virtual_tokens=4, encoder_hidden_size=16
        ),
    }[method]
    torch.manual_seed(1)
    peft_model = peft.get_peft_model(base, config).eval()
    with torch.no_grad():
        peft_model.base_model.score.modules_to_save[
            "default"
        ].weight.normal_()  # a trained head, not the base's
        expected = torch.cat([peft_model(input_ids=row[None]).logits for row in ROWS])
    peft_model.save_pretrained(tmp_path / "peft")
    model = softprompt.load(tiny_model("llama", "sequence-classification"), tmp_path / "peft").eval()
    with torch.no_grad():
        ids, mask = padded_batch(ROWS, "left")
        torch.testing.assert_close(
            model(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5, rtol=1e-5
        )


def test_an_exported_classifier_runs_in_peft_with_its_head_and_the_same_logits(tmp_path):
    model = softprompt.wrap(tiny_model("llama", "sequence-classification"), METHODS["prompt_tuning"]).eval()
    with torch.no_grad():
        model.head["score"].weight.normal_()  # a trained head, not the base's
        expected = torch.cat([model(input_ids=row[None]).logits for row in ROWS])
    model.export_peft(tmp_path / "peft")
    loaded = peft.PeftModel.from_pretrained(
        tiny_model("llama", "sequence-classification"), tmp_path / "peft"
    ).eval()
    with torch.no_grad():
        got = torch.cat([loaded(input_ids=row[None]).logits for row in ROWS])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_classifier_runs_its_own_prompt_only_not_a_task_banks():
    # Per-row prompts would share one head (the base model's, the last loaded): refused with the
    # reason; a bank refuses such a model when it is built (tests/test_bank.py).
    model = softprompt.wrap(tiny_model("llama", "sequence-classification"), METHODS["prompt_tuning"])
    message = "carries a task head trained with its own prompt, and every row shares it: it runs its own prompt only"
    compiled = [model.compile_prompt(model.prompt)]
    with pytest.raises(softprompt.UnsupportedModelError, match=message):
        model.row_prompts(compiled * 2, torch.tensor([0, 1]), torch.device("cpu"))
    assert model.row_prompts(compiled, torch.tensor([0, -1]), torch.device("cpu")).sites
