"""The families table must agree with what each model really puts in its key/value cache."""

import pytest
import torch
import transformers as T
from tiny import FAMILIES, MORE_FAMILIES, random_ids, tiny_causal_lm, tiny_model, tiny_seq2seq_lm

import softprompt
from softprompt.families import LayerShape, kind_of, model_shape


@pytest.mark.parametrize("family", FAMILIES)
def test_shape_matches_the_models_own_cache(family):
    model = tiny_causal_lm(family)
    shape = model_shape(model)
    cache = model(random_ids(1, 4), use_cache=True).past_key_values
    seen = [(layer.keys.shape[1], layer.keys.shape[3]) for layer in cache.layers]
    assert seen == [(layer.num_kv_heads, layer.head_dim) for layer in shape.layers]
    assert shape.family == family
    assert shape.embed_dim == model.get_input_embeddings().weight.shape[1]


def test_grouped_query_and_explicit_head_dim_are_read_from_config():
    shape = model_shape(tiny_causal_lm("qwen3"))
    assert shape.layers[0].num_kv_heads == 2 and shape.layers[0].head_dim == 16  # not 32 / 4
    assert model_shape(tiny_causal_lm("falcon")).layers[0].num_kv_heads == 1  # multi-query


def test_a_model_type_with_no_table_entry_is_read_from_the_model():
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(
        T.CodeGenConfig(vocab_size=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64)
    ).eval()
    assert "codegen" not in softprompt.FAMILIES
    shape = model_shape(model)
    assert (shape.family, shape.kind, shape.layers) == ("codegen", "causal", (LayerShape(4, 8),) * 2)
    wrapped = softprompt.wrap(model, softprompt.PromptTuningConfig(num_virtual_tokens=2))
    assert wrapped(input_ids=random_ids(1, 3) % 64).logits.shape == (1, 3, 64)


def test_a_model_the_probe_cannot_read_is_refused_naming_what_failed():
    # XLNet keeps its memory in `mems`, not in a transformers cache.
    model = T.XLNetLMHeadModel(T.XLNetConfig(vocab_size=64, d_model=32, n_layer=1, n_head=4, d_inner=48))
    with pytest.raises(
        softprompt.UnsupportedModelError,
        match=r"xlnet's backbone \(XLNetModel\) keeps no key/value cache, and a prefix cannot enter at "
        "placeholder positions either: it has no key/value projections named as transformers names them",
    ):
        softprompt.wrap(model, softprompt.PromptTuningConfig(num_virtual_tokens=2))


def test_a_cache_layer_with_state_of_its_own_is_refused_naming_its_methods():
    # DeepSeek-V4's compressed attention keeps compressor state in its own cache layer classes.
    with pytest.raises(
        softprompt.UnsupportedModelError,
        match=r"cache layer DeepseekV4\w+Cache keeps a state of its own beside keys/values \(its methods "
        r"\[.*'store_compression_weights'",
    ):
        softprompt.wrap(
            tiny_model("deepseek_v4", "causal-lm"), softprompt.PromptTuningConfig(num_virtual_tokens=2)
        )


def test_the_probe_runs_once_per_model(monkeypatch):
    from softprompt.injection import capture

    model = tiny_causal_lm("llama")
    calls = []
    read = capture.read_decoder_cache
    monkeypatch.setattr(capture, "read_decoder_cache", lambda m: calls.append(m) or read(m))
    first, second = model_shape(model), model_shape(model)
    assert first == second and len(calls) == 1
    model.config._name_or_path = "renamed"  # config facts are read afresh
    assert model_shape(model).name_or_path == "renamed" and len(calls) == 1


def test_the_probe_leaves_the_model_as_it_was():
    model = tiny_causal_lm("llama").train()
    before = {name: p.clone() for name, p in model.state_dict().items()}
    model_shape(model)
    assert model.training
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())


@pytest.mark.parametrize("family", FAMILIES + MORE_FAMILIES)
def test_without_a_prompt_the_logits_are_the_base_models_own(family):
    # Checks every family's output-head facts (soft-caps, logit scales, projections).
    model = tiny_causal_lm(family)
    bare = softprompt.SoftPromptModel(model, None, model_shape(model))
    ids = random_ids(2, 5)
    torch.testing.assert_close(bare(input_ids=ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", MORE_FAMILIES)
def test_more_families_shapes_padding_invariance_and_generation(family):
    test_shape_matches_the_models_own_cache(family)
    for config in (
        softprompt.PromptTuningConfig(num_virtual_tokens=3),
        softprompt.PrefixTuningConfig(num_virtual_tokens=2),
    ):
        model = softprompt.wrap(tiny_causal_lm(family), config).eval()
        row = random_ids(1, 4)[0]
        ids = torch.stack(
            [
                torch.cat([torch.zeros(2, dtype=torch.long), row]),
                torch.cat([random_ids(1, 2, seed=1)[0], row]),
            ]
        )
        mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])
        torch.testing.assert_close(
            model(input_ids=ids, attention_mask=mask).logits[0, 2:],
            model(input_ids=row[None]).logits[0],
            atol=1e-5,
            rtol=1e-5,
        )
        alone = model.generate(row[None], max_new_tokens=3, min_new_tokens=3)[0, 4:]
        assert (
            model.generate(ids, attention_mask=mask, max_new_tokens=3, min_new_tokens=3)[0, 6:].tolist()
            == alone.tolist()
        )


def test_the_kind_comes_from_transformers_auto_mappings():
    assert (
        kind_of(T.CONFIG_MAPPING["mistral4"]()) == "causal"
    )  # an image-text-to-text decoder, no causal LM class
    assert kind_of(T.XLMRobertaConfig()) == "encoder"  # has a causal LM class, and a masked LM
    assert kind_of(T.XLMRobertaConfig(), head="causal-lm") == "causal"
    assert kind_of(T.PegasusConfig()) == "seq2seq"


def test_fingerprints_of_existing_families_are_what_files_saved_before_hold():
    common = {"hidden_size": 32, "vocab_size": 96, "num_layers": 2, "num_attention_heads": 4}
    assert model_shape(tiny_causal_lm("llama")).fingerprint() == {
        "family": "llama", "embed_dim": 32, "layers": [[2, 8], [2, 8]], **common
    }  # fmt: skip
    assert model_shape(tiny_causal_lm("opt")).fingerprint() == {
        "family": "opt", "embed_dim": 16, "layers": [[4, 8], [4, 8]], **common
    }  # fmt: skip
    assert model_shape(tiny_seq2seq_lm("t5v1.1")).fingerprint() == {
        "family": "t5", "embed_dim": 32, "layers": [[4, 8], [4, 8]], "decoder_layers": [[4, 8]] * 3, **common
    }  # fmt: skip
