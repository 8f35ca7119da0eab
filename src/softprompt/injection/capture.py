"""Recording what a frozen model computes: keys/values per layer, and which attention modules it calls.

* :func:`capture_cache` records the per-layer keys/values of one forward pass of a causal decoder
  (or a decoder stack);
* :func:`virtual_tokens_prefix` turns a causal decoder's virtual tokens into the prefix they amount
  to: in a causal decoder the prompt never attends to the input, so running it once, alone, gives
  the keys/values it would leave in every row;
* :func:`site_states` captures what real tokens leave at every attention site (prefix init);
* :func:`attention_modules` lists the attention modules an encoder calls, in order (encoder prefixes
  name the modules they enter).

Examples:
    >>> import transformers as T
    >>> from softprompt.families import model_shape
    >>> model = T.GPT2LMHeadModel(T.GPT2Config(n_embd=8, n_layer=2, n_head=2, vocab_size=16)).eval()
    >>> states = site_states(model, model_shape(model), torch.tensor([3, 4, 5]))
    >>> [tuple(k.shape) for k, v in states["self"]]   # per layer (kv_heads, P, head_dim)
    [(2, 3, 4), (2, 3, 4)]
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import EncoderDecoderCache
from transformers.cache_utils import Cache, DynamicLayer

from softprompt.compat import cache_kwargs
from softprompt.families import ModelShape
from softprompt.injection.attention import AttentionCapture, use_prefix_attention
from softprompt.kinds import Site
from softprompt.methods.base import PrefixStates, PromptOutput


class _CaptureLayer(DynamicLayer):
    """A layer cache that records the keys/values it is given and returns them unchanged."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.keys, self.values = key_states, value_states
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True
        return key_states, value_states


def capture_cache(num_layers: int) -> Cache:
    """An empty cache whose layers record what one forward pass computes."""
    return Cache(layers=[_CaptureLayer() for _ in range(num_layers)])


def captured_states(cache: Cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The per-layer ``(keys, values)`` a :func:`capture_cache` recorded, each (B, H, T, D)."""
    missing = [i for i, layer in enumerate(cache.layers) if not layer.is_initialized]
    if missing:
        raise RuntimeError(
            f"layers {missing} wrote nothing to the cache; this model shares or skips their keys"
        )
    return [(layer.keys, layer.values) for layer in cache.layers]


def virtual_tokens_prefix(model: nn.Module, prompt: PromptOutput) -> PrefixStates:
    """The per-layer prefix a prompt amounts to in a causal decoder (gradients flow through).

    ``model`` is a ``transformers`` causal LM; virtual tokens (P, E) are run through its backbone once.
    """
    if isinstance(prompt, PrefixStates):
        return prompt
    embeddings = prompt.embeddings.to(model.dtype)
    cache = capture_cache(model.config.num_hidden_layers)
    model.base_model(inputs_embeds=embeddings[None], use_cache=True, **cache_kwargs(model.base_model, cache))
    return PrefixStates([(keys[0], values[0]) for keys, values in captured_states(cache)])


def attention_modules(stack: nn.Module) -> list[nn.Module]:
    """The attention modules ``stack`` (an encoder) calls, in call order: one per layer."""
    capture = AttentionCapture()
    device = next(stack.parameters()).device
    with torch.no_grad():
        stack(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), softprompt_capture=capture)
    return [module for module, _, _ in capture.calls]


def _self_states(model: nn.Module, ids: torch.Tensor) -> list:
    """A causal decoder's keys/values per layer, captured through its cache."""
    cache = capture_cache(model.config.num_hidden_layers)
    model.base_model(input_ids=ids, use_cache=True, **cache_kwargs(model.base_model, cache))
    return captured_states(cache)


def _encoder_states(stack: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list]:
    """An encoder stack's output (1, P, H) and its keys/values per layer, captured in its attention calls."""
    capture = AttentionCapture()
    encoded = stack(input_ids=ids, softprompt_capture=capture).last_hidden_state
    return encoded, [(keys, values) for _, keys, values in capture.calls]


def _decoder_states(model: nn.Module, shape: ModelShape, ids: torch.Tensor, encoded: torch.Tensor) -> dict:
    """An encoder-decoder's decoder self- and cross-attention keys/values per layer, reading ``ids``."""
    count = len(shape.decoder_layers)
    cache = EncoderDecoderCache(capture_cache(count), capture_cache(count))
    decoder = model.get_decoder()
    decoder(input_ids=ids, encoder_hidden_states=encoded, use_cache=True, **cache_kwargs(decoder, cache))
    return {
        "decoder": captured_states(cache.self_attention_cache),
        "cross": captured_states(cache.cross_attention_cache),
    }


def site_states(model: nn.Module, shape: ModelShape, ids: torch.Tensor) -> dict[Site, list]:
    """The keys/values the frozen ``model`` computes for ``ids`` (P,) at every attention site it has.

    Returns ``{site: [(keys, values) per layer]}``, each (H, P, D) in fp32, computed in eval mode
    (the model's own numbers, not a dropout sample of them). An encoder-decoder's decoder reads
    ``ids`` too, attending to their encoding.
    """
    device = model.get_input_embeddings().weight.device
    ids = ids[None].to(device)
    was_training = model.training
    model.eval()
    states: dict[Site, list] = {}
    try:
        with torch.no_grad():
            if "self" in shape.sites:
                states["self"] = _self_states(model, ids)
            if "encoder" in shape.sites:
                use_prefix_attention(model)
                stack = model.get_encoder() if "decoder" in shape.sites else model.base_model
                encoded, states["encoder"] = _encoder_states(stack, ids)
            if "decoder" in shape.sites:
                states |= _decoder_states(model, shape, ids, encoded)
    finally:
        model.train(was_training)
    return {site: [(k[0].float(), v[0].float()) for k, v in layers] for site, layers in states.items()}
