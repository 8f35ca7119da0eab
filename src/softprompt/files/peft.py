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
from safetensors.torch import save_file

from softprompt import hub
from softprompt.families import ModelShape
from softprompt.files.atomic import replace_folder
from softprompt.files.container import (
    FLOAT_DTYPES,
    check_checksum,
    load_json,
    read_regular_file,
    read_safetensors,
    tensor_checksum,
)
from softprompt.files.errors import (
    AdapterNotFoundError,
    RecordError,
    TensorError,
    UnsafeFileError,
    WrongModelError,
    short,
)
from softprompt.files.schema import (
    HEAD_PREFIX,
    check_base_model,
    check_finite,
    check_same_model,
    describe_type,
    matches,
    split_head,
)
from softprompt.kinds import HEADS
from softprompt.methods import METHODS, SoftPromptConfig, method_of

if TYPE_CHECKING:
    from softprompt.models import PromptedModel

logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 1 << 20
# The fields read from a foreign config, with their types; all others are dropped, never used.
SAFE_FIELDS: dict[str, Any] = {
    "peft_type": str,
    "task_type": str | None,
    "num_virtual_tokens": int | None,
    "token_dim": int | None,
    "num_transformer_submodules": int | None,
    "num_attention_heads": int | None,
    "num_layers": int | None,
    "encoder_hidden_size": int | None,
    "encoder_reparameterization_type": str | None,
    "prefix_projection": bool | None,
    "base_model_name_or_path": str | None,
}
# peft's method names and task types, from the method and head registries.
PEFT_TYPES = {method.peft_type: method for method in METHODS.values()}
TASK_TYPES = {head.peft_task_type: name for name, head in HEADS.items()}
# Where peft saves a task head ("modules_to_save"), and where softprompt files keep it.
PEFT_HEAD_PREFIX = "base_model."
# What softprompt adds to the weights' metadata of a folder it exports (peft ignores it): the base
# model's shape, which peft's config does not hold (e.g. the vocabulary), and a checksum.
BASE_MODEL_KEY = "softprompt_base_model"
_EDITED = "the config was edited or damaged: export the adapter again"
CHECKSUM_KEY = "softprompt_checksum"


def is_peft_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder with an ``adapter_config.json`` (of whatever kind: it is checked on reading)."""
    return os.path.lexists(Path(path) / CONFIG_NAME)


def read_peft_config(path: str | os.PathLike) -> dict[str, Any]:
    """The safe fields of a peft folder's ``adapter_config.json``, each of its type (unset ones dropped)."""
    file = Path(path) / CONFIG_NAME
    raw = load_json(read_regular_file(file, MAX_CONFIG_BYTES), file, "the peft config")
    if not isinstance(raw, dict):
        raise RecordError(file, "the peft config", raw, "a JSON object")
    for name, kind in SAFE_FIELDS.items():
        if name in raw and not matches(raw[name], kind):
            raise RecordError(
                file,
                name,
                raw[name],
                describe_type(kind),
                fix=_EDITED,
            )
        if matches(raw.get(name), int) and raw[name] < 1:
            raise RecordError(file, name, raw[name], "an integer of at least 1", fix=_EDITED)
    dropped = sorted(k for k, v in raw.items() if k not in SAFE_FIELDS and v not in (None, False, [], {}))
    if dropped:
        logger.info(
            "ignoring peft config fields %s (not needed, never executed)", [short(k) for k in dropped]
        )
    return {k: v for k, v in raw.items() if k in SAFE_FIELDS and v is not None}


def read_peft_folder(
    path: str | os.PathLike, shape: ModelShape
) -> tuple[SoftPromptConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a ``peft`` folder for a model of ``shape`` as ``(config, folded tensors, safe peft fields)``.

    Every field the config holds is checked against the model (task type, layers, heads, token
    width, virtual tokens against the table; the base model's name only warns), and so is the base
    model shape softprompt records in folders it exports. The tensors are laid out for the model: an
    encoder-decoder prefix is rearranged the way ``peft`` really applies it (see
    :func:`peft_decoder_layers`), a seq2seq prompt keeps the rows ``peft`` uses, and a saved task head
    comes back as ``head.*`` tensors.
    """
    folder = Path(path)
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    fields = read_peft_config(folder)
    peft_type = fields.get("peft_type")
    if peft_type not in PEFT_TYPES:
        raise RecordError(
            config_file,
            "peft_type",
            peft_type,
            f"one of {', '.join(PEFT_TYPES)} (the prompt-learning methods softprompt reads)",
            fix="softprompt loads peft prompt-learning adapters only; load other adapter types with peft",
        )
    task_type = fields.get("task_type")
    if task_type in TASK_TYPES and TASK_TYPES[task_type] != shape.head:
        raise WrongModelError(
            config_file,
            "task_type",
            found_text=f"a peft {task_type} adapter",
            expected=f"an adapter for this {shape.head} model ({shape.family})",
            fix="wrap a model with the task head it was made for",
        )
    submodules = fields.get("num_transformer_submodules", 1)
    if submodules not in (1, 2) or (submodules == 2 and shape.kind != "seq2seq"):
        raise WrongModelError(
            config_file,
            "num_transformer_submodules",
            submodules,
            f"{'2 (encoder-decoder)' if shape.kind == 'seq2seq' else '1'} for this {shape.family} model",
        )
    weights, metadata = _read_weights(folder)
    if BASE_MODEL_KEY in metadata:
        saved = load_json(metadata[BASE_MODEL_KEY], weights_file, f"metadata {BASE_MODEL_KEY}")
        check_base_model(saved, weights_file)
        check_same_model(saved, shape, weights_file)
    method = PEFT_TYPES[peft_type]
    table = _prompt_table(weights, weights_file)
    rows_per_token = submodules if method.saves == "embeddings" else 1
    length = fields.get("num_virtual_tokens", table.shape[0] // rows_per_token)
    if table.shape[0] != length * rows_per_token:
        raise TensorError(
            weights_file,
            "tensor 'prompt_embeddings'",
            found_text=f"{table.shape[0]} rows",
            expected=f"{length * rows_per_token}: num_virtual_tokens={length} in {CONFIG_NAME}"
            + (f", once per each of the {submodules} stacks" if rows_per_token > 1 else ""),
            fix="the folder's two files disagree (a copy of only one of them?): export the adapter again",
        )
    config = method.from_peft(length, fields, shape)
    _check_fields_fit(fields, config, table, shape, folder)
    head = {
        HEAD_PREFIX + k.removeprefix(PEFT_HEAD_PREFIX): v
        for k, v in weights.items()
        if k != "prompt_embeddings"
    }
    if method.saves == "prefix":
        if submodules == 2:  # peft's encoder-decoder prefix fills the decoder's self-attention only
            table = peft_decoder_layers(table, len(shape.decoder_layers))
        return config, {"prefix": table, **head}, fields
    # An encoder-decoder prompt has a row per virtual token and stack; peft uses the encoder's rows.
    return config, {"embeddings": table[:length], **head}, fields


def _read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    file = folder / WEIGHTS_NAME
    if not os.path.lexists(file):
        pickled = folder / "adapter_model.bin"
        if os.path.lexists(pickled):
            raise UnsafeFileError(
                pickled, "the weights", found_text="adapter_model.bin, a pickle", expected=WEIGHTS_NAME
            )
        raise AdapterNotFoundError(
            folder,
            f"the folder's {WEIGHTS_NAME}",
            found_text="missing",
            expected="the weights beside adapter_config.json",
            fix="copy the whole adapter folder (softprompt reads safetensors weights only)",
        )
    metadata, weights = read_safetensors(file, dtypes=FLOAT_DTYPES)
    if CHECKSUM_KEY in metadata:
        check_checksum(weights, metadata[CHECKSUM_KEY], file, f"metadata {CHECKSUM_KEY}")
    others = sorted(k for k in weights if k != "prompt_embeddings" and not k.startswith(PEFT_HEAD_PREFIX))
    if others:
        raise TensorError(
            file,
            "the tensors",
            found_text=f"{others}",
            expected=f"'prompt_embeddings' and task-head tensors {PEFT_HEAD_PREFIX}* (a prompt-learning adapter)",
        )
    check_finite(weights, file)
    return weights, metadata


def _prompt_table(weights: dict[str, torch.Tensor], file: Path) -> torch.Tensor:
    if "prompt_embeddings" not in weights:
        raise TensorError(
            file, "tensor 'prompt_embeddings'", found_text="missing", expected="peft's saved prompt table"
        )
    table = weights["prompt_embeddings"]
    if table.dim() != 2 or 0 in table.shape:
        raise TensorError(
            file,
            "tensor 'prompt_embeddings'",
            found_text=f"of shape {tuple(table.shape)}",
            expected="(rows, width), both at least 1",
        )
    return table.float()


def _check_fields_fit(
    fields: dict[str, Any], config: SoftPromptConfig, table: torch.Tensor, shape: ModelShape, folder: Path
) -> None:
    """Refuse a folder whose config fields describe another model, naming each field that differs."""
    method = method_of(config)
    layout = method.layout(config, shape)
    if layout is None:  # virtual tokens: peft records the model's heads, layers and the token width
        expected = {"token_dim": table.shape[1], "num_attention_heads": shape.num_attention_heads}
        layers = {shape.num_layers, len(shape.decoder_layers) or shape.num_layers}
    else:  # peft views a prefix as (P, L * 2, heads, token_dim // heads), heads being key/value heads
        kinds = set(layout.layers)
        layers = {len(layout.layers)}
        expected = {}
        if len(kinds) == 1:
            (layer,) = kinds
            expected = {
                "token_dim": layer.num_kv_heads * layer.head_dim,
                "num_attention_heads": layer.num_kv_heads,
            }
    differences = [
        f"{key}: folder {fields[key]}, model {value}"
        for key, value in expected.items()
        if key in fields and fields[key] != value
    ]
    if "num_layers" in fields and fields["num_layers"] not in layers:
        differences.append(
            f"num_layers: folder {fields['num_layers']}, model {' or '.join(map(str, sorted(layers)))}"
        )
    width = method.saved_width(config, shape)
    if table.shape[1] != width:
        differences.append(f"prompt_embeddings width: folder {table.shape[1]}, model {width}")
    if differences:
        raise WrongModelError(
            folder,
            "the peft adapter",
            found_text="made for another model: " + "; ".join(differences),
            expected=f"an adapter for this {shape.family} model ({shape.name_or_path or 'unnamed'})",
        )
    name = fields.get("base_model_name_or_path")
    if name and shape.name_or_path and _base_name(name) != _base_name(shape.name_or_path):
        logger.warning(
            "%s names the base model %s, and this model is %r; its shape fits, so it is loaded",
            folder,
            short(name),
            shape.name_or_path,
        )


def _base_name(name_or_path: str) -> str:
    """The model a name or path names: ``org/Model`` and ``/models/Model/`` both name ``model``."""
    return name_or_path.rstrip("/").rsplit("/", 1)[-1].lower()


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
    """Write ``model``'s folded prompt (and task head) as a ``peft`` adapter folder; returns the folder.

    The folder is swapped in whole (:func:`~softprompt.files.atomic.replace_folder`): weights and
    config always come from the same export. Its weights' metadata also records the base model's
    shape and a checksum, which softprompt checks on reading and ``peft`` ignores.
    """
    folder = Path(directory)
    shape = model.shape
    tensors, head = split_head(model.adapter_tensors())
    method = method_of(model.prompt.config)
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
        # The Hub's name for the base (a built-in alias names its Hub repo), so peft's
        # AutoPeftModelFor... finds the base model.
        "base_model_name_or_path": hub.hub_id(shape.name_or_path) or shape.name_or_path or None,
    }
    if head:
        config["modules_to_save"] = sorted({name.removeprefix(HEAD_PREFIX).split(".")[0] for name in head})
    layout = method.layout(model.prompt.config, shape)
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
        if layer.value_head_dim != layer.head_dim:
            raise ValueError(
                f"peft's prefix format needs keys and values of one width; {shape.family} caches keys "
                f"{layer.head_dim} and values {layer.value_head_dim} wide. Keep the softprompt file"
            )
        if shape.kind == "causal" and (
            shape.recurrent_layers or shape.layer_indices != tuple(range(shape.num_layers))
        ):
            raise ValueError(
                f"peft's prefix format fills every decoder layer; {shape.family} takes a prefix in layers "
                f"{list(shape.layer_indices)} only (the others share keys/values or carry a recurrent state). "
                "Keep the softprompt file"
            )
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
        config |= method.peft_fields(model.prompt.config)
        table = tensors["embeddings"]
        if submodules == 2:  # peft keeps a row per virtual token and stack; it reads the encoder's
            table = torch.cat([table, torch.zeros_like(table)])
    weights = {"prompt_embeddings": table.contiguous().cpu()}
    weights |= {PEFT_HEAD_PREFIX + k.removeprefix(HEAD_PREFIX): v.contiguous().cpu() for k, v in head.items()}
    metadata = {
        "format": "pt",
        BASE_MODEL_KEY: json.dumps({"name_or_path": shape.name_or_path, **shape.fingerprint()}),
        CHECKSUM_KEY: tensor_checksum(weights),
    }

    def build(tmp: Path) -> None:
        save_file(weights, str(tmp / WEIGHTS_NAME), metadata=metadata)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))

    replace_folder(folder, build)
    return folder
