"""Everything of ``transformers`` that is private or changed between 5.x releases, in one place.

* The cache argument: ``transformers`` 5.24 renamed the key/value-cache argument of every model's
  ``forward`` from ``past_key_values`` to ``cache`` (the old name is a deprecated alias, removed in
  5.40). softprompt hands caches to models in several places (prefixes, compiled prompts,
  generation), so it asks each model class which name it takes instead of pinning a release.
* The attention implementation a model runs (``config._attn_implementation``) and whether it can
  switch (``_can_set_attn_implementation``).
* Gradient checkpointing's cache switches (``GradientCheckpointingLayer._can_checkpoint_with_cache``).
* Which keyword arguments a model's ``forward`` takes (``logits_to_keep``), and where its backbone is
  (``base_model_prefix`` does not always name it).
* Recurrent states a model keeps in its own modules instead of its cache (``_setup_cache``).

No other module touches a private ``transformers`` attribute.

Examples:
    >>> import transformers as T
    >>> model = T.GPT2LMHeadModel(T.GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=16))
    >>> list(cache_kwargs(model, None))[0] in ("cache", "past_key_values")
    True
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer


@functools.cache
def _cache_argument(module_class: type[nn.Module]) -> str:
    parameters = inspect.signature(module_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(module: nn.Module, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` with the name ``module.forward`` (and its ``generate``) takes the cache by."""
    return {_cache_argument(type(module)): cache}


@functools.cache
def _forward_parameters(module_class: type[nn.Module]) -> frozenset[str]:
    return frozenset(inspect.signature(module_class.forward).parameters)


def takes_argument(module: nn.Module, name: str) -> bool:
    """Whether ``module.forward`` names the keyword argument ``name`` (e.g. ``logits_to_keep``)."""
    return name in _forward_parameters(type(module))


def reads_argument(module: nn.Module, name: str) -> bool:
    """Whether ``module.forward`` names ``name``, or passes every argument on to a module it wraps
    (``forward(self, *args, **kwargs)``, as BART's ``BartDecoderWrapper`` does)."""
    if takes_argument(module, name):
        return True
    parameters = list(inspect.signature(type(module).forward).parameters.values())[1:]  # after self
    passed_on = {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}
    return bool(parameters) and all(p.kind in passed_on for p in parameters)


def backbone(model: nn.Module) -> nn.Module:
    """The backbone of a ``transformers`` model with a head (its last hidden states, no head).

    ``model.base_model`` follows ``base_model_prefix``; where that names no attribute (Llama 4's text
    model says ``language_model`` but keeps ``model``), ``base_model`` is the model itself, and the
    backbone is its one ``PreTrainedModel`` child.
    """
    if model.base_model is not model:
        return model.base_model
    return next(child for child in model.children() if isinstance(child, PreTrainedModel))


def reset_module_states(model: nn.Module, batch: int, device: torch.device, dtype: torch.dtype) -> None:
    """Start afresh, for ``batch`` rows, the recurrent states ``model`` keeps in its own modules.

    RecurrentGemma keeps its recurrent blocks' states in the blocks, not in the cache it is given,
    and sets them up only when it is given no cache (``_setup_cache``): a call given a cache would
    start from the final state of whatever ran before it. Models without such states are left alone.
    """
    setup = getattr(model, "_setup_cache", None)
    if setup is not None:
        setup(model.config, batch, device, dtype)


def attention_implementation(model: nn.Module) -> str | None:
    """The attention function ``model`` runs (``sdpa``, ``eager``, a registered name...)."""
    return model.config._attn_implementation


def can_switch_attention(model: nn.Module) -> bool:
    """Whether ``model``'s attention goes through ``AttentionInterface`` and can be switched.

    Models whose attention calls no replaceable function (Falcon) cannot; asking them to switch
    would only log a warning. This is the check ``set_attn_implementation`` itself makes.
    """
    return model._can_set_attn_implementation()


@contextmanager
def checkpointing_keeps_cache(model: nn.Module) -> Iterator[None]:
    """Within the block, a checkpointed ``model`` keeps caches that are safe to replay (pure functions
    of their input); every switch is put back on exit.

    ``transformers`` drops the cache under gradient checkpointing, in each checkpointed layer and in
    some backbones' own loops (GPT-2), because a growing cache would be appended to twice. softprompt's
    prefix would vanish (or mismatch its mask). The layers still checkpoint: non-reentrant
    checkpointing replays each layer's forward with the arguments it was first called with, cache
    included, so the switches need only hold while the forward runs. Checkpointing may have been
    switched on before or after wrapping, by softprompt, ``transformers`` or ``Trainer``: the switch
    is made per call.
    """
    layers, loops = [], []
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            _refuse_reentrant(module)
            if module.gradient_checkpointing and not module._can_checkpoint_with_cache:
                layers.append(module)
        elif getattr(module, "gradient_checkpointing", False) is True and _holds_checkpointed_layers(module):
            loops.append(module)
    for module in layers:
        module._can_checkpoint_with_cache = True
    for module in loops:
        module.gradient_checkpointing = False
    try:
        yield
    finally:
        for module in layers:
            del module._can_checkpoint_with_cache  # back to the class's own answer
        for module in loops:
            module.gradient_checkpointing = True


def _refuse_reentrant(layer: GradientCheckpointingLayer) -> None:
    # Reentrant checkpointing runs a backward pass per layer; every layer's would go back through the
    # one compiled prompt they share ("backward through the graph a second time"). It may have been
    # switched on the base model directly, so each forward checks.
    checkpoint = getattr(layer, "_gradient_checkpointing_func", None)
    checkpointing = layer.gradient_checkpointing and layer.training and torch.is_grad_enabled()
    if checkpointing:
        require_non_reentrant(getattr(checkpoint, "keywords", {}))


def require_non_reentrant(checkpointing_kwargs: dict[str, Any]) -> None:
    """Refuse reentrant checkpointing (``use_reentrant=True`` in ``transformers``' checkpointing kwargs)."""
    if checkpointing_kwargs.get("use_reentrant"):
        raise ValueError(
            "softprompt needs non-reentrant checkpointing (use_reentrant=False): every layer reads the "
            "one prompt, which reentrant checkpointing would differentiate once per layer. Switch it on with "
            "model.gradient_checkpointing_enable() (or gradient_checkpointing_kwargs={'use_reentrant': False})"
        )


def _holds_checkpointed_layers(module: nn.Module) -> bool:
    # A backbone loop (GPT-2's) holds the layers; a flag inside a layer (T5's attention marks its zero
    # position bias as requiring grad under checkpointing) is not about caches and stays.
    return any(isinstance(m, GradientCheckpointingLayer) for m in module.modules())


def token_embeddings(embed: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """``embed(ids)`` (B, T, E); quantised embeddings (I-BERT's) return (embeddings, scale): the first.

    Examples:
        >>> token_embeddings(torch.nn.Embedding(10, 4), torch.tensor([[1, 2]])).shape
        torch.Size([1, 2, 4])
    """
    embedded = embed(ids)
    return embedded[0] if isinstance(embedded, tuple) else embedded


def keep_differentiable(model: nn.Module) -> nn.Module:
    """Turn off bitsandbytes' CPU repacking of 4-bit weights for inference (it has no backward).

    Must run before the model's first forward pass: a weight already repacked stays so. Safe on
    any model (a layer that is not 4-bit is left alone); returns ``model``.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bitsandbytes.nn.Linear4bit
            module.support_avx512bf16_for_cpu = False
    return model
