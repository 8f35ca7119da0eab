"""Each init starts where it says: text, vocabulary samples, noise, zeros, or a saved prompt."""

from pathlib import Path

import pytest
import torch
from tiny import random_ids, tiny_causal_lm
from transformers import GPT2Tokenizer

import softprompt
from softprompt import initializers

# GPT-2's real tokenizer, from the shared data beside the project (a bare clone has none: skip).
TOKENIZER_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "tokenizers" / "gpt2"


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    if not TOKENIZER_DIR.is_dir():
        pytest.skip(f"needs GPT-2's tokenizer at {TOKENIZER_DIR} (the shared data sets)")
    return GPT2Tokenizer.from_pretrained(TOKENIZER_DIR)


def gpt2_sized(vocab_size=50257):
    import transformers as T

    torch.manual_seed(0)
    return T.GPT2LMHeadModel(
        T.GPT2Config(vocab_size=vocab_size, n_embd=16, n_layer=2, n_head=2, n_positions=64)
    ).eval()


def test_text_init_is_the_embeddings_of_the_text_repeated(gpt2_tokenizer):
    base = gpt2_sized()
    config = softprompt.PromptTuningConfig(num_virtual_tokens=5, init="text", init_text=" positive negative")
    model = softprompt.wrap(base, config, tokenizer=gpt2_tokenizer)
    ids = gpt2_tokenizer(" positive negative")["input_ids"]
    expected = base.get_input_embeddings().weight[torch.tensor((ids * 5)[:5])]
    torch.testing.assert_close(model.prompt.embeddings, expected)


def test_text_init_without_tokenizer_says_what_to_pass():
    config = softprompt.PromptTuningConfig(num_virtual_tokens=2, init="text", init_text="yes")
    with pytest.raises(ValueError, match="tokenizer=tok"):
        softprompt.wrap(tiny_causal_lm("llama"), config)


def test_vocab_init_samples_distinct_frequent_tokens():
    base = gpt2_sized()
    model = softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=50, init="vocab"))
    table = base.get_input_embeddings().weight
    # each virtual token is exactly one row of the 5,000 most frequent
    distances = torch.cdist(model.prompt.embeddings, table)
    nearest = distances.argmin(-1)
    assert torch.allclose(distances.min(-1).values, torch.zeros(50), atol=1e-4)
    assert int(nearest.max()) < 5000 and len(set(nearest.tolist())) == 50


def test_random_init_is_uniform_in_half_range():
    model = softprompt.wrap(
        tiny_causal_lm("llama"), softprompt.PromptTuningConfig(num_virtual_tokens=40, init="random")
    )
    values = model.prompt.embeddings
    assert values.abs().max() <= 0.5 and values.std() > 0.2


def test_prefix_text_init_is_the_models_own_keys_and_values(gpt2_tokenizer):
    base = gpt2_sized()
    config = softprompt.PrefixTuningConfig(num_virtual_tokens=3, init="text", init_text=" great movie")
    model = softprompt.wrap(base, config, tokenizer=gpt2_tokenizer)
    ids = torch.tensor([(gpt2_tokenizer(" great movie")["input_ids"] * 3)[:3]])
    cache = base.base_model(input_ids=ids, use_cache=True).past_key_values  # the model's own cache
    for (keys, values), layer in zip(model.prompt().layers, cache.layers, strict=True):
        torch.testing.assert_close(keys, layer.keys[0])
        torch.testing.assert_close(values, layer.values[0])


def test_zero_prefix_and_mlp_reparameterisation_start_at_the_init():
    base = tiny_causal_lm("qwen2")
    plain = softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=3, init="vocab"))
    mlp = softprompt.wrap(
        base, softprompt.PrefixTuningConfig(num_virtual_tokens=3, init="vocab", projection_hidden_size=8)
    )
    torch.testing.assert_close(mlp.prompt.folded()["prefix"], plain.prompt.folded()["prefix"])
    zero = softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=3, init="zero"))
    assert not zero.prompt.prefix.any()


def test_p_tuning_starts_at_its_init_embeddings():
    base = tiny_causal_lm("llama")
    prompt = softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=4, seed=3)).prompt
    encoded = softprompt.wrap(
        base, softprompt.PTuningConfig(num_virtual_tokens=4, seed=3, encoder="lstm")
    ).prompt
    torch.testing.assert_close(encoded().embeddings, prompt.embeddings)
    assert sum(p.numel() for p in encoded.parameters()) > prompt.embeddings.numel()


def test_file_init_transfers_a_saved_prompt(tmp_path):
    base = tiny_causal_lm("llama")
    source = softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=3, init="random"))
    path = source.save(tmp_path / "source.safetensors")
    config = softprompt.PTuningConfig(num_virtual_tokens=5, init="file", init_file=str(path))
    target = softprompt.wrap(base, config)
    rows = source.prompt.embeddings
    torch.testing.assert_close(target.prompt().embeddings, torch.cat([rows, rows[:2]]))


def test_file_init_refuses_a_prompt_of_another_model(tmp_path):
    source = softprompt.wrap(tiny_causal_lm("opt"), softprompt.PromptTuningConfig(num_virtual_tokens=3))
    path = source.save(tmp_path / "opt.safetensors")
    config = softprompt.PromptTuningConfig(num_virtual_tokens=3, init="file", init_file=str(path))
    with pytest.raises(ValueError, match="embed_dim: file 16, model 32"):
        softprompt.wrap(tiny_causal_lm("llama"), config)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: softprompt.PromptTuningConfig(num_virtual_tokens=0), "at least 1"),
        (lambda: softprompt.PromptTuningConfig(init="words"), "init must be one of"),
        (lambda: softprompt.PromptTuningConfig(init="text"), "needs init_text"),
        (lambda: softprompt.PrefixTuningConfig(init="file"), "needs init_file"),
        (lambda: softprompt.PTuningConfig(encoder="gru"), "encoder must be one of"),
    ],
)
def test_config_errors_say_what_is_wrong(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_repeat_to_length_repeats_and_truncates():
    assert initializers.repeat_to_length(torch.tensor([1, 2]), 5).tolist() == [1, 2, 1, 2, 1]
    assert initializers.repeat_to_length(torch.tensor([1, 2, 3]), 2).tolist() == [1, 2]
    with pytest.raises(ValueError, match="no tokens"):
        initializers.repeat_to_length(torch.tensor([], dtype=torch.long), 2)
    assert random_ids(1, 2).shape == (1, 2)
