"""How soft prompts join a batch: one package for every way a prompt enters a model, per row.

Vocabulary (used the same way everywhere):

* a **prompt module** (:class:`~softprompt.methods.SoftPrompt`) returns virtual tokens (P, E) or a
  prefix (per layer keys/values) — *what* a prompt is;
* a :class:`~softprompt.injection.prompts.CompiledPrompt` is one task's prompt *placed* for a model:
  virtual tokens before an encoder's input and/or key/value prefixes at attention **sites**
  (``self``, ``encoder``, ``decoder``, ``cross``);
* :class:`~softprompt.injection.prompts.RowPrompts` are a batch's prompts *row by row*
  (:func:`~softprompt.injection.prompts.gather`): what a model's ``forward`` and ``generate`` take
  as ``row_prompts=``, so a batch may mix tasks;
* a :class:`~softprompt.injection.prompts.BatchPrefix` is one site's per-row keys/values and mask.

Modules, one job each:

* :mod:`~softprompt.injection.prompts` — the types above and gathering them per row;
* :mod:`~softprompt.injection.positions` — positions after each row's prompt, mask columns, alignment;
* :mod:`~softprompt.injection.encoder_input` — virtual tokens and prefixes arranged for an encoder;
* :mod:`~softprompt.injection.caches` — the ``transformers`` caches that carry prefixes;
* :mod:`~softprompt.injection.sparse_indexer` — prefixes in sparse attention (DSA indexers);
* :mod:`~softprompt.injection.attention` — the attention function for sites without a cache path;
* :mod:`~softprompt.injection.capture` — recording a model's own keys/values (compiling virtual
  tokens in a causal decoder, prefix inits, attention modules of an encoder).
"""

from softprompt.injection.positions import IGNORE_INDEX
from softprompt.injection.prompts import (
    BatchPrefix,
    CompiledPrompt,
    RowPrompts,
    gather,
    gather_prefixes,
    place,
)

__all__ = [
    "IGNORE_INDEX",
    "BatchPrefix",
    "CompiledPrompt",
    "RowPrompts",
    "gather",
    "gather_prefixes",
    "place",
]
