"""Initial values for soft prompts: small functions, each one way to start (Lester et al. 2021, §3.2).

Input-space inits return (P, E) embeddings; prefix inits return a flat (P, F) prefix in the layout of
:func:`softprompt.methods.base.split_prefix` (the model's own keys/values of real tokens come from
:func:`softprompt.injection.capture.site_states`). Soft prompts live or die by their init, so the
inits that start from the frozen model's own numbers (``vocab``, ``text``) are the defaults.

Examples:
    >>> repeat_to_length(torch.tensor([7, 8]), 5).tolist()        # Lester's class-label init repeats
    [7, 8, 7, 8, 7]
    >>> uniform(2, 3, 0.5, torch.Generator().manual_seed(0)).abs().max() <= 0.5
    tensor(True)
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from softprompt.compat import token_embeddings
from softprompt.families import ModelShape
from softprompt.files.adapter import read_adapter
from softprompt.files.schema import check_same_model
from softprompt.injection.capture import site_states
from softprompt.kinds import Site
from softprompt.sharding import whole_parameters, whole_while_running

logger = logging.getLogger(__name__)


def repeat_to_length(ids: torch.Tensor, length: int) -> torch.Tensor:
    """Repeat or truncate a 1-D id sequence to ``length`` (Lester's class-label init repeats labels)."""
    if ids.numel() == 0:
        raise ValueError("the init text tokenized to no tokens; give a non-empty init_text")
    repeats = -(-length // ids.numel())
    return ids.repeat(repeats)[:length]


def text_token_ids(tokenizer, text: str | None, length: int) -> torch.Tensor:
    """Token ids of ``text`` (no special tokens), repeated or truncated to ``length``."""
    if tokenizer is None or not text:
        raise ValueError(
            "init='text' needs init_text and a tokenizer: softprompt.wrap(model, config, tokenizer=tok)"
        )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    return repeat_to_length(ids, length)


def sampled_vocab_ids(
    length: int, vocab_size: int, top_k: int | None, generator: torch.Generator
) -> torch.Tensor:
    """Ids sampled without replacement from the first ``top_k`` ids, or from the whole vocabulary.

    BPE and SentencePiece vocabularies are ordered by merge frequency, so the first ids are the most
    frequent tokens: Lester et al. sampled from the 5,000 most common ones.
    """
    pool = vocab_size if top_k is None else min(top_k, vocab_size)
    if length <= pool:
        return torch.randperm(pool, generator=generator)[:length]
    return torch.randint(pool, (length,), generator=generator)


def uniform(length: int, width: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Uniform noise in ``[-scale, scale]`` of shape (length, width)."""
    return (torch.rand(length, width, generator=generator) * 2 - 1) * scale


def embeddings_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The frozen model's input embeddings of ``ids``: (P,) -> (P, E).

    Uses the embedding module's forward, so models whose embedding scales its output (Gemma 3's
    scaled embedding) give the numbers a real token would have. A sharded embedding (FSDP2, or
    ZeRO-3's shape ``[0]`` partition, peft #206) is gathered for the lookup; every process of a
    sharded run must call this together.
    """
    embedding = model.get_input_embeddings()
    with torch.no_grad(), whole_parameters(embedding) as (weight, *_):
        return token_embeddings(embedding, ids.to(weight.device)).float().detach().clone()


def states_of(model: nn.Module, shape: ModelShape, ids: torch.Tensor) -> dict[Site, list]:
    """The frozen model's keys/values of ``ids`` (P,) at every attention site (prefix text and vocab
    inits): :func:`softprompt.injection.capture.site_states`, each sharded module gathered while it
    runs (a ZeRO-3 base is partitioned from the moment it loads, before DeepSpeed's own hooks exist).

    Examples:
        >>> shape = softprompt.families.model_shape(base_model)
        >>> keys, values = states_of(base_model, shape, torch.tensor([3, 4, 5]))["self"][0]
        >>> tuple(keys.shape)                                     # layer 0: (H, P, D)
        (2, 3, 8)
    """
    with whole_while_running(model):
        return site_states(model, shape, ids)


def rows_from_file(
    path: str | os.PathLike, name: str, length: int, width: int, shape: ModelShape | None = None
) -> torch.Tensor:
    """Tensor ``name`` (``embeddings`` or ``prefix``) of a saved adapter, as the start of a new prompt (SPoT's
    transfer: a prompt trained on a source task initialises the target task's).

    ``path`` is an adapter file or folder, or a Hub repo id (``"user/name"``, through the Hugging Face
    cache). A multitask file (``multitask_prompt_tuning``) gives its shared prompt. With ``shape`` the
    file must have been made for that same base model (:func:`~softprompt.files.schema.check_same_model`:
    a prompt means nothing on another model, even one of the same width); without it only the width
    is checked. A saved prompt of another length is tiled (rows ``0, 1, ..., P_saved - 1, 0, 1, ...``)
    or cut to ``length``, and the log says so.

    Examples:
        >>> source = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=2))
        >>> path = source.save(tmp_dir / "source.safetensors")
        >>> shape = softprompt.families.model_shape(base_model)
        >>> rows = rows_from_file(path, "embeddings", 3, shape.embed_dim, shape)
        >>> torch.equal(rows, source.prompt.embeddings[[0, 1, 0]])
        True
    """
    from softprompt.sharing import resolve  # sharing reads peft folders, whose module imports this one

    source = resolve(path)
    record, tensors = read_adapter(source)
    if shape is not None:
        check_same_model(record["base_model"], shape, source)
    if name not in tensors:
        raise ValueError(
            f"{source} holds a {record.get('method')} prompt without {name!r}; init='file' needs one"
        )
    table = tensors[name].float()
    if table.shape[-1] != width:
        raise ValueError(f"{source} has {name} of width {table.shape[-1]}, this model needs {width}")
    if table.shape[0] != length:
        how = "tiled" if table.shape[0] < length else "cut"
        logger.info("%s holds %d virtual tokens: %s to %d", source, table.shape[0], how, length)
    rows = repeat_to_length(torch.arange(table.shape[0]), length)
    return table[rows].clone()
