"""Everything of ``transformers`` that is private or changed between 5.x releases, in one place.

* The cache argument: ``transformers`` 5.24 renamed the key/value-cache argument of every model's
  ``forward`` from ``past_key_values`` to ``cache`` (the old name is a deprecated alias, removed in
  5.40). softprompt hands caches to models in several places (prefixes, compiled prompts,
  generation), so it asks each model class which name it takes instead of pinning a release.
* The attention implementation a model runs (``config._attn_implementation``) and whether it can
  switch (``_can_set_attn_implementation``).
* Gradient checkpointing's cache switches (``GradientCheckpointingLayer._can_checkpoint_with_cache``).

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
from typing import Any

from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


@functools.cache
def _cache_argument(module_class: type[nn.Module]) -> str:
    parameters = inspect.signature(module_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(module: nn.Module, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` with the name ``module.forward`` (and its ``generate``) takes the cache by."""
    return {_cache_argument(type(module)): cache}


def attention_implementation(model: nn.Module) -> str | None:
    """The attention function ``model`` runs (``sdpa``, ``eager``, a registered name...)."""
    return model.config._attn_implementation


def can_switch_attention(model: nn.Module) -> bool:
    """Whether ``model``'s attention goes through ``AttentionInterface`` and can be switched.

    Models whose attention calls no replaceable function (Falcon) cannot; asking them to switch
    would only log a warning. This is the check ``set_attn_implementation`` itself makes.
    """
    return model._can_set_attn_implementation()


def allow_checkpointing_with_cache(model: nn.Module) -> None:
    """Let a checkpointed model keep caches that are safe to replay (pure functions of their input).

    ``transformers`` drops the cache under gradient checkpointing, in each checkpointed layer and in
    some backbones' own loops (GPT-2), because a growing cache would be appended to twice. Without
    this, softprompt's prefix would silently vanish. The layers still checkpoint; backbone-level
    switches only ever decided about caches.
    """
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module._can_checkpoint_with_cache = True
        elif getattr(module, "gradient_checkpointing", False) and _holds_checkpointed_layers(module):
            module.gradient_checkpointing = False


def _holds_checkpointed_layers(module: nn.Module) -> bool:
    # A backbone loop (GPT-2's) holds the layers; a flag inside a layer (T5's attention marks its zero
    # position bias as requiring grad under checkpointing) is not about caches and stays.
    return any(isinstance(m, GradientCheckpointingLayer) for m in module.modules())
