"""Reading and writing ``peft`` prompt-learning adapter folders (``adapter_config.json`` +
``adapter_model.safetensors``) for prompt tuning, prefix tuning and P-tuning, for the task types
CAUSAL_LM, SEQ_2_SEQ_LM, SEQ_CLS, TOKEN_CLS and FEATURE_EXTRACTION (classifier heads included).

``peft`` saves prompts folded (its ``prompt_embeddings`` tensor), in the same layouts softprompt
uses: (P, E) input embeddings, or a (P, L * 2 * H * D) prefix. Only the few config fields that
describe those shapes are read; everything else in a foreign config — tokenizer settings that
could run remote code, module lists, paths — is ignored, never executed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from softprompt.families import ModelShape
from softprompt.files.adapter import HEAD_PREFIX, AdapterFileError, split_head
from softprompt.files.atomic import atomic_write
from softprompt.kinds import HEADS
from softprompt.methods import METHODS, SoftPromptConfig, method_of

if TYPE_CHECKING:
    from softprompt.models import PromptedModel

logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# The fields read from a foreign config; all others are dropped.
SAFE_FIELDS = {
    "peft_type",
    "task_type",
    "num_virtual_tokens",
    "token_dim",
    "num_transformer_submodules",
    "num_attention_heads",
    "num_layers",
    "encoder_hidden_size",
    "encoder_reparameterization_type",
    "prefix_projection",
    "base_model_name_or_path",
}
# peft's method names and task types, from the method and head registries.
PEFT_TYPES = {method.peft_type: method for method in METHODS.values()}
TASK_TYPES = {head.peft_task_type: name for name, head in HEADS.items()}
# Where peft saves a task head ("modules_to_save"), and where softprompt files keep it.
PEFT_HEAD_PREFIX = "base_model."


def is_peft_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def read_peft_folder(
    path: str | os.PathLike, shape: ModelShape | None = None
) -> tuple[SoftPromptConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a ``peft`` folder as ``(config, folded tensors, safe peft fields)``.

    With the base model's ``shape``, the tensors are laid out for it: an encoder-decoder prefix is
    rearranged the way ``peft`` really applies it (see :func:`peft_decoder_layers`), a seq2seq prompt
    keeps the rows ``peft`` uses, and a saved task head comes back as ``head.*`` tensors.
    """
    folder = Path(path)
    try:
        raw = json.loads((folder / CONFIG_NAME).read_text())
    except json.JSONDecodeError as err:
        raise AdapterFileError(f"{folder / CONFIG_NAME} is not valid JSON: {err}") from err
    fields = {k: v for k, v in raw.items() if k in SAFE_FIELDS}
    dropped = sorted(k for k, v in raw.items() if k not in SAFE_FIELDS and v not in (None, False, [], {}))
    if dropped:
        logger.info("ignoring peft config fields %s (not needed, never executed)", dropped)
    peft_type = fields.get("peft_type")
    if peft_type not in PEFT_TYPES:
        raise AdapterFileError(
            f"{folder} is a peft {peft_type!r} adapter; softprompt reads {', '.join(PEFT_TYPES)} adapters"
        )
    task_type = fields.get("task_type")
    if shape is not None and task_type in TASK_TYPES and TASK_TYPES[task_type] != shape.head:
        raise AdapterFileError(
            f"{folder} is a peft {task_type} adapter, but the base model is a {shape.head} model "
            f"({shape.family}); wrap a model with the task head it was made for"
        )
    submodules = fields.get("num_transformer_submodules", 1)
    if submodules not in (1, 2) or (submodules == 2 and shape is not None and shape.kind != "seq2seq"):
        raise AdapterFileError(
            f"{folder} is a peft adapter for {submodules} transformer stacks, which does not fit this "
            f"{shape.family if shape else ''} model".rstrip()
        )
    try:
        weights = load_file(str(folder / WEIGHTS_NAME))
    except FileNotFoundError as err:
        raise AdapterFileError(f"{folder} has no {WEIGHTS_NAME} (only safetensors weights are read)") from err
    except (SafetensorError, OSError) as err:
        raise AdapterFileError(f"{folder / WEIGHTS_NAME} is truncated or corrupt ({err})") from err
    if "prompt_embeddings" not in weights:
        raise AdapterFileError(f"{folder / WEIGHTS_NAME} has no 'prompt_embeddings' tensor")
    table = weights.pop("prompt_embeddings").float()
    # A task head peft saved ("modules_to_save"): `base_model.<module>.<param>`.
    head = {
        HEAD_PREFIX + k.removeprefix(PEFT_HEAD_PREFIX): v
        for k, v in weights.items()
        if k.startswith(PEFT_HEAD_PREFIX)
    }
    length = fields.get("num_virtual_tokens", table.shape[0])
    method = PEFT_TYPES[peft_type]
    config = method.from_peft(length, fields, shape)
    if method.saves == "prefix":
        if submodules == 2:
            # peft's encoder-decoder prefix fills the decoder's self-attention only.
            layers = fields.get("num_layers") or len(shape.decoder_layers)
            if shape is not None and layers != len(shape.decoder_layers):
                raise AdapterFileError(
                    f"{folder} is a peft prefix for {layers} decoder layers; this {shape.family} model has "
                    f"{len(shape.decoder_layers)}"
                )
            table = peft_decoder_layers(table, layers)
        return config, {"prefix": table, **head}, fields
    # An encoder-decoder prompt has a row per virtual token and stack; peft uses the encoder's rows.
    return config, {"embeddings": table[:length], **head}, fields


def _peft_slots(layers: int) -> list[int]:
    """Which layer of peft's prefix table decoder layer ``j`` reads: ``2 j mod L``.

    ``peft`` (0.21, ``get_prompt``) doubles the (L * 2) key/value chunks, cuts them into groups of four
    per decoder layer (self key, self value, cross key, cross value) and then empties the cross half:
    decoder layer ``j`` gets the keys/values stored for layer ``2 j mod L``, and the rest go unused.
    """
    return [(2 * j) % layers for j in range(layers)]


def peft_decoder_layers(table: torch.Tensor, layers: int) -> torch.Tensor:
    """peft's encoder-decoder prefix table (P, L * 2 * H * D) -> softprompt's ``decoder`` layout, in
    which layer ``j``'s numbers are the ``j``-th chunk: what each decoder layer really gets in peft."""
    chunks = table.chunk(layers, dim=-1)
    return torch.cat([chunks[slot] for slot in _peft_slots(layers)], dim=-1)


def decoder_layers_for_peft(table: torch.Tensor, layers: int) -> torch.Tensor:
    """Inverse of :func:`peft_decoder_layers`, where one exists; raises where peft cannot hold the prefix."""
    chunks = table.chunk(layers, dim=-1)
    placed: dict[int, torch.Tensor] = {}
    for chunk, slot in zip(chunks, _peft_slots(layers), strict=True):
        if slot in placed and not torch.equal(placed[slot], chunk):
            raise ValueError(
                f"peft gives decoder layer j the prefix stored for layer 2j mod {layers}, so with an even number "
                "of decoder layers it cannot hold a prefix whose layers j and j + L/2 differ; this prefix "
                "cannot be exported to peft faithfully (an odd number of layers can)"
            )
        placed[slot] = chunk
    zeros = torch.zeros_like(chunks[0])
    return torch.cat([placed.get(slot, zeros) for slot in range(layers)], dim=-1)


def export_peft(model: PromptedModel, directory: str | os.PathLike) -> Path:
    """Write ``model``'s folded prompt (and task head) as a ``peft`` adapter folder; returns the folder."""
    folder = Path(directory)
    shape = model.shape
    tensors, head = split_head(model.adapter_tensors())
    method = method_of(model.prompt_config)
    if shape.head not in HEADS:
        raise ValueError(f"peft has no task type for a {type(model.base_model).__name__} model")
    submodules = 2 if shape.kind == "seq2seq" else 1
    length = next(iter(tensors.values())).shape[0]
    config: dict[str, Any] = {
        "peft_type": method.peft_type,
        "task_type": HEADS[shape.head].peft_task_type,
        "num_virtual_tokens": length,
        "num_transformer_submodules": submodules,
        "num_layers": len(shape.decoder_layers) if shape.kind == "seq2seq" else shape.num_layers,
        "inference_mode": True,
        "base_model_name_or_path": shape.name_or_path or None,
    }
    if head:
        config["modules_to_save"] = sorted({name.removeprefix(HEAD_PREFIX).split(".")[0] for name in head})
    layout = method.layout(model.prompt_config, shape)
    if layout is not None:
        if layout.site_names not in (("self",), ("encoder",), ("decoder",)):
            raise ValueError(
                f"peft puts prefixes in one stack only (the decoder's self-attention of an encoder-decoder); "
                f"this prefix fills {', '.join(layout.site_names)}. Use PrefixTuningConfig(prefix_sites='decoder') "
                "for a prefix peft can load"
            )
        if len(set(layout.layers)) != 1:
            raise ValueError("peft's prefix format needs the same key/value shape in every layer")
        layer = layout.layers[0]
        # peft views the prefix as (P, L * 2, heads, token_dim // heads): heads are key/value heads here.
        config |= {
            "num_attention_heads": layer.num_kv_heads,
            "token_dim": layer.num_kv_heads * layer.head_dim,
            "prefix_projection": False,
            "encoder_hidden_size": shape.hidden_size,
        }
        table = tensors["prefix"]
        if submodules == 2:
            table = decoder_layers_for_peft(table, len(layout.layers))
    else:
        config |= {"num_attention_heads": shape.num_attention_heads, "token_dim": shape.embed_dim}
        config |= method.peft_fields(model.prompt_config)
        table = tensors["embeddings"]
        if submodules == 2:  # peft keeps a row per virtual token and stack; it reads the encoder's
            table = torch.cat([table, torch.zeros_like(table)])
    folder.mkdir(parents=True, exist_ok=True)
    weights = {"prompt_embeddings": table.contiguous().cpu()}
    weights |= {PEFT_HEAD_PREFIX + k.removeprefix(HEAD_PREFIX): v.contiguous().cpu() for k, v in head.items()}
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(weights, str(tmp), metadata={"format": "pt"}))
    atomic_write(folder / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(config, indent=2)))
    return folder
