"""Argument names that changed between ``transformers`` 5.x releases, in one place.

``transformers`` 5.24 renamed the key/value-cache argument of every model's ``forward`` from
``past_key_values`` to ``cache`` (the old name is a deprecated alias, removed in 5.40). softprompt
hands caches to models in several places (prefixes, compiled prompts, generation), so it asks each
model class which name it takes instead of pinning a release.

Example:
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


@functools.cache
def _cache_argument(module_class: type[nn.Module]) -> str:
    parameters = inspect.signature(module_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(module: nn.Module, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` with the name ``module.forward`` (and its ``generate``) takes the cache by."""
    return {_cache_argument(type(module)): cache}
