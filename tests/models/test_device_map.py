"""A base model placed by ``device_map`` (accelerate's dispatch): soft prompts train and generate on it as on
a plain load, and every prefix joins each layer on the device of that layer's keys (peft #2134, #2189).

A CPU machine has one real device, so two things stand in for a model split over GPUs: a base with a
decoder layer offloaded to disk (its weights live on ``meta`` and accelerate's hooks bring them in for
each forward — the hooks that move activations between GPUs), and ``meta`` tensors as the keys of "a
layer on another device" for the caches softprompt builds.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T
from tiny import VOCAB, random_ids

import softprompt
from softprompt.injection.caches import generation_cache, prefix_cache

CONFIG = T.LlamaConfig(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=2,
)  # fmt: skip
METHODS = {
    "prompt_tuning": softprompt.PromptTuningConfig(num_virtual_tokens=3, init="vocab"),
    "prefix_tuning": softprompt.PrefixTuningConfig(num_virtual_tokens=3, init="random"),
    "p_tuning": softprompt.PTuningConfig(num_virtual_tokens=3),
}
OFFLOADED = {
    "model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
    "model.rotary_emb": "cpu", "lm_head": "cpu",
}  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    T.LlamaForCausalLM(CONFIG).save_pretrained(path)
    return path


def load(folder, placement: str):
    if placement == "plain":
        return T.AutoModelForCausalLM.from_pretrained(folder)
    if placement == "auto":
        return T.AutoModelForCausalLM.from_pretrained(folder, device_map="auto")
    return T.AutoModelForCausalLM.from_pretrained(
        folder, device_map=OFFLOADED, offload_folder=str(folder / "offload")
    )


def train_and_generate(base, method: str) -> dict[str, torch.Tensor]:
    """One backward pass (the prompt's gradient) and a greedy generation of the prompted base."""
    torch.manual_seed(0)  # P-tuning's encoder draws from the global generator; loads draw differently
    model = softprompt.wrap(base, METHODS[method])
    ids = random_ids(2, 6, 0)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None}
    assert trained == {f"prompt.{name}" for name, _ in model.prompt.named_parameters()}
    gradient = torch.cat([p.grad.flatten() for p in model.prompt.parameters()])
    generated = model.generate(input_ids=ids[:, :3], max_new_tokens=4, do_sample=False)
    return {"logits": out.logits.detach(), "gradient": gradient, "generated": generated}


def test_an_offloaded_layer_runs_through_accelerates_hooks(folder):
    base = load(folder, "offload")
    layer = base.model.layers[1]
    assert base.hf_device_map["model.layers.1"] == "disk"
    assert layer.self_attn.q_proj.weight.device.type == "meta" and hasattr(layer, "_hf_hook")


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("placement", ["auto", "offload"])
def test_a_dispatched_base_trains_and_generates_as_a_plain_one(folder, placement, method):
    expected = train_and_generate(load(folder, "plain"), method)
    found = train_and_generate(load(folder, placement), method)
    torch.testing.assert_close(found["logits"], expected["logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(found["gradient"], expected["gradient"], rtol=1e-5, atol=1e-6)
    assert torch.equal(found["generated"], expected["generated"])


def layer_on_another_device(cache, layer: int = 0):
    """What a layer on another device hands its cache: keys and values there (``meta`` stands in)."""
    keys = torch.empty(1, 2, 5, 4, device="meta")
    return cache.update(keys, keys.clone(), layer)


def test_the_forward_prefix_joins_each_layer_on_its_keys_device():
    prefix = torch.randn(1, 2, 3, 4)  # (B, H, P, D) on the prompt's device
    keys, values = layer_on_another_device(prefix_cache([(prefix, prefix.clone())]))
    assert keys.device.type == values.device.type == "meta"
    assert keys.shape == values.shape == (1, 2, 8, 4)


def test_the_generation_prefix_joins_each_layer_on_its_keys_device():
    prefix = torch.randn(1, 2, 3, 4)
    keys, _ = layer_on_another_device(generation_cache(CONFIG, [(prefix, prefix.clone())] * 2))
    assert keys.device.type == "meta" and keys.shape == (1, 2, 8, 4)
