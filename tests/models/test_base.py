"""PromptedModel's Hugging Face surface: the base model's config and properties, a state dict of what
trains (with the adapter record), Trainer's loss keywords, checkpointing arguments, the task record."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from safetensors.torch import load_file, save_file
from tiny import random_ids, tiny_causal_lm, tiny_encoder, tiny_seq2seq_lm

import softprompt
from softprompt.families import UnsupportedModelError
from softprompt.files.adapter import read_adapter

PROMPT = softprompt.PromptTuningConfig(num_virtual_tokens=4)


def wrapped(kind: str, config=PROMPT, **options):
    base = {"causal": lambda: tiny_causal_lm("llama"), "seq2seq": lambda: tiny_seq2seq_lm("t5")}.get(
        kind, lambda: tiny_encoder("bert")
    )()
    return softprompt.wrap(base, config, **options).eval()


@pytest.mark.parametrize(("kind", "generates"), [("causal", True), ("seq2seq", True), ("encoder", False)])
def test_the_model_shows_the_base_models_config_and_properties(kind, generates):
    model = wrapped(kind)
    base = model.base_model
    assert model.config is base.config
    assert model.prompt_config == PROMPT
    assert model.generation_config is getattr(base, "generation_config", None)
    assert (model.device, model.dtype) == (torch.device("cpu"), torch.float32)
    assert model.get_input_embeddings() is base.get_input_embeddings()
    assert model.get_output_embeddings() is base.get_output_embeddings()
    assert model.main_input_name == "input_ids"
    assert model.can_generate() is generates

    if generates:
        replacement = type(base.generation_config)(max_new_tokens=7)
        model.generation_config = replacement
        assert base.generation_config is replacement


def test_loss_type_is_the_base_models():
    assert wrapped("causal").loss_type == "ForCausalLM"
    assert wrapped("encoder").loss_type == "ForSequenceClassification"


def test_print_trainable_parameters_counts_the_prompt_and_the_new_head(capsys):
    model = wrapped("encoder")
    head = sum(p.numel() for p in model.base_model.classifier.parameters())
    total = sum(p.numel() for p in model.base_model.parameters()) + 4 * 32
    model.print_trainable_parameters()
    trainable = 4 * 32 + head
    assert capsys.readouterr().out == (
        f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}\n"
    )


def test_add_model_tags_keeps_each_tag_once():
    model = wrapped("causal")
    model.add_model_tags(["trl", "sft"])
    model.add_model_tags("trl")
    assert model.model_tags == ["trl", "sft"]


# ---------------------------------------------------------------------------------------- state dict
@pytest.mark.parametrize(
    ("kind", "config", "options", "keys"),
    [
        ("causal", PROMPT, {}, ["_extra_state", "prompt.embeddings"]),
        (
            "causal",
            softprompt.PTuningConfig(num_virtual_tokens=4, encoder_hidden_size=8),
            {},
            # the raw trainable parameters (what resuming needs), not the folded prompt
            [
                "_extra_state",
                "prompt.embeddings",
                "prompt.mlp.0.bias",
                "prompt.mlp.0.weight",
                "prompt.mlp.2.bias",
                "prompt.mlp.2.weight",
                "prompt.mlp.4.bias",
                "prompt.mlp.4.weight",
            ],
        ),
        (
            "encoder",
            softprompt.PrefixTuningConfig(num_virtual_tokens=4, init="zero"),
            {},
            ["_extra_state", "base_model.classifier.bias", "base_model.classifier.weight", "prompt.prefix"],
        ),
        (
            "encoder",
            PROMPT,
            {"pooling": "mean"},
            ["_extra_state", "mean_classifier.bias", "mean_classifier.weight", "prompt.embeddings"],
        ),
    ],
)
def test_the_state_dict_holds_only_what_trains_and_the_record(kind, config, options, keys):
    model = wrapped(kind, config, **options)
    state = model.state_dict()
    assert sorted(state) == keys
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(keys) - {"_extra_state"}
    record = read_record(state)
    assert record["method"] == config.method
    assert record["config"]["num_virtual_tokens"] == 4


def read_record(state):
    import json

    return json.loads(bytes(state["_extra_state"].tolist()).decode())


def test_the_state_dict_of_a_tied_model_saves_as_safetensors(tmp_path):
    base = tiny_causal_lm("gpt2")
    assert base.lm_head.weight is base.transformer.wte.weight  # tied: the whole base would not save
    model = softprompt.wrap(base, PROMPT)
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    assert sorted(load_file(str(tmp_path / "model.safetensors"))) == ["_extra_state", "prompt.embeddings"]


def test_a_state_dict_loads_strictly_into_a_fresh_model():
    trained = wrapped("encoder")
    with torch.no_grad():
        trained.prompt.embeddings.add_(1.0)
        trained.base_model.classifier.weight.add_(1.0)
    fresh = wrapped("encoder")
    result = fresh.load_state_dict(trained.state_dict(), strict=True)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    assert torch.equal(fresh.prompt.embeddings, trained.prompt.embeddings)
    assert torch.equal(fresh.base_model.classifier.weight, trained.base_model.classifier.weight)


def test_a_state_dict_without_the_prompt_is_incomplete():
    model = wrapped("causal")
    state = {"_extra_state": model.state_dict()["_extra_state"]}
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "prompt.embeddings"'):
        model.load_state_dict(state)


@pytest.mark.parametrize(
    ("saved", "message"),
    [
        (
            lambda: wrapped("causal", softprompt.PTuningConfig(num_virtual_tokens=4, encoder_hidden_size=8)),
            "method: saved 'p_tuning', here 'prompt_tuning'",
        ),
        (
            lambda: wrapped("causal", softprompt.PromptTuningConfig(num_virtual_tokens=8)),
            "num_virtual_tokens: saved 8, here 4",
        ),
        (lambda: softprompt.wrap(tiny_causal_lm("qwen2"), PROMPT), "family: saved 'qwen2', here 'llama'"),
    ],
)
def test_a_state_dict_for_another_setup_is_refused_with_the_difference(saved, message):
    with pytest.raises(softprompt.AdapterFileError, match=message):
        wrapped("causal").load_state_dict(saved().state_dict(), strict=False)


# ------------------------------------------------------------------------------- adapter record
def test_the_task_goes_into_the_adapter_record(tmp_path):
    model = wrapped("causal")
    assert "task" not in read_adapter(model.save(tmp_path / "plain.safetensors"))[0]
    model.task = {
        "kind": "classification",
        "template": "{text} ->",
        "label_words": ["no", "yes"],
        "chat_template": True,
    }
    record, _ = read_adapter(model.save(tmp_path / "task.safetensors"))
    assert record["task"] == model.task
    assert read_record(model.state_dict())["task"] == model.task


# ------------------------------------------------------------------------------ trainer keywords
def test_use_cache_from_a_trainer_is_accepted():
    ids = random_ids(2, 5)
    for kind in ("causal", "seq2seq"):
        model = wrapped(kind)
        torch.testing.assert_close(
            model(input_ids=ids, labels=ids, use_cache=False).loss, model(input_ids=ids, labels=ids).loss
        )


def test_packed_batches_are_refused():
    ids = random_ids(1, 6)
    with pytest.raises(ValueError, match=r"packed \(padding-free: cu_seq_lens_q, seq_idx\).*packing=False"):
        wrapped("causal")(input_ids=ids, cu_seq_lens_q=torch.tensor([0, 3, 6]), seq_idx=torch.zeros_like(ids))


def test_trls_fused_head_is_pointed_to_for_trl():
    ids = random_ids(1, 6)
    with pytest.raises(TypeError, match=r"softprompt\.integrations\.trl\.for_trl\(model\)"):
        wrapped("causal")(input_ids=ids, labels=ids, fused_lm_head=True)


def labelled_batch(kind: str):
    """Rows whose label counts differ: the loss over items differs from a mean over rows."""
    ids = random_ids(3, 6)
    if kind == "encoder":
        return ids, torch.tensor([0, 2, 1])
    labels = ids.clone()
    labels[0, :4] = labels[2, 1:] = -100
    return ids, labels


@pytest.mark.parametrize("kind", ["causal", "seq2seq", "encoder"])
def test_num_items_in_batch_makes_the_loss_a_sum_over_those_items(kind):
    model = wrapped(kind)
    ids, labels = labelled_batch(kind)
    out = model(input_ids=ids, labels=labels)
    logits, targets = out.logits, labels
    if kind == "causal":  # position t predicts t + 1
        logits, targets = logits[:, :-1], labels[:, 1:]
    summed = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=-100, reduction="sum")
    items = torch.tensor(11)  # e.g. this micro-batch's share of an accumulated batch
    scaled = model(input_ids=ids, labels=labels, num_items_in_batch=items).loss
    torch.testing.assert_close(scaled, summed / items)
    torch.testing.assert_close(model(input_ids=ids, labels=labels).loss, out.loss)  # nothing carried over


# ------------------------------------------------------------------------------ checkpointing
def test_activation_checkpointing_takes_transformers_arguments():
    ids = random_ids(2, 6)
    reference = wrapped("causal").train()
    reference(input_ids=ids, labels=ids).loss.backward()

    model = wrapped("causal").train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_activation_checkpointing
    model(input_ids=ids, labels=ids).loss.backward()
    torch.testing.assert_close(model.prompt.embeddings.grad, reference.prompt.embeddings.grad)

    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing


def test_reentrant_checkpointing_is_refused():
    with pytest.raises(ValueError, match=r"non-reentrant checkpointing \(use_reentrant=False\)"):
        wrapped("causal").activation_checkpointing_enable({"use_reentrant": True})


SMALL_LLAMA = dict(
    hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=64
)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: T.LlamaForQuestionAnswering(T.LlamaConfig(**SMALL_LLAMA, pad_token_id=0)),
         "cannot adapt a LlamaForQuestionAnswering: on llama causal LMs it supports causal-lm "
         "(AutoModelForCausalLM); sequence-classification (AutoModelForSequenceClassification); "
         "token-classification"),
        (lambda: T.BertForMaskedLM(T.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                intermediate_size=32, vocab_size=64)),
         "cannot adapt a BertForMaskedLM: on bert encoders it supports sequence-classification"),
    ],
)  # fmt: skip
def test_a_head_its_kind_does_not_adapt_is_refused_with_the_ones_it_does(build, message):
    with pytest.raises(UnsupportedModelError, match=re.escape(message)):
        softprompt.wrap(build(), softprompt.PromptTuningConfig(num_virtual_tokens=2))


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_a_language_model_has_no_task_head_to_save_or_load(kind):
    model = wrapped(kind)
    assert model.head == {}
    assert sorted(model.adapter_tensors()) == sorted(model.prompt.folded())
    family = model.shape.family
    with pytest.raises(
        softprompt.AdapterFileError,
        match=f"x.safetensors holds a task head, but this {family} {kind} model has none",
    ):
        model.load_head({"head.score.weight": torch.zeros(2, 2)}, "x.safetensors")


def test_every_model_shape_saves_its_head_under_the_same_names():
    """Decoders and encoders share one head format: ``head.<module>.<tensor>``, as the module's state dict."""
    for base in (
        tiny_encoder("bert"),
        T.LlamaForSequenceClassification(T.LlamaConfig(**SMALL_LLAMA, num_labels=3)),
    ):
        model = softprompt.wrap(base, PROMPT)
        expected = {
            f"head.{name}.{key}" for name, module in model.head.items() for key in module.state_dict()
        }
        assert expected and set(model.adapter_tensors()) - set(model.prompt.folded()) == expected
