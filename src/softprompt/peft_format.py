"""Reading and writing ``peft`` prompt-learning adapter folders (``adapter_config.json`` +
``adapter_model.safetensors``) for prompt tuning, prefix tuning and P-tuning.

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

from softprompt.io import AdapterFileError, atomic_write
from softprompt.methods import PrefixTuningConfig, PromptTuningConfig, PTuningConfig, SoftPromptConfig

if TYPE_CHECKING:
    from softprompt.model import SoftPromptModel

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
PEFT_TYPES = {"PROMPT_TUNING": "prompt_tuning", "P_TUNING": "p_tuning", "PREFIX_TUNING": "prefix_tuning"}


def is_peft_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def read_peft_folder(
    path: str | os.PathLike,
) -> tuple[SoftPromptConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a ``peft`` folder as ``(config, folded tensors, safe peft fields)``."""
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
    if fields.get("num_transformer_submodules", 1) != 1:
        raise AdapterFileError(
            f"{folder} is an encoder-decoder peft adapter; this softprompt reads causal ones"
        )
    try:
        weights = load_file(str(folder / WEIGHTS_NAME))
    except FileNotFoundError as err:
        raise AdapterFileError(f"{folder} has no {WEIGHTS_NAME} (only safetensors weights are read)") from err
    except (SafetensorError, OSError) as err:
        raise AdapterFileError(f"{folder / WEIGHTS_NAME} is truncated or corrupt ({err})") from err
    if "prompt_embeddings" not in weights:
        raise AdapterFileError(f"{folder / WEIGHTS_NAME} has no 'prompt_embeddings' tensor")
    table = weights["prompt_embeddings"].float()
    length = fields.get("num_virtual_tokens", table.shape[0])
    method = PEFT_TYPES[peft_type]
    if method == "prefix_tuning":
        return PrefixTuningConfig(num_virtual_tokens=length, init="zero"), {"prefix": table}, fields
    config_cls = PTuningConfig if method == "p_tuning" else PromptTuningConfig
    return config_cls(num_virtual_tokens=length, init="random"), {"embeddings": table}, fields


def export_peft(model: SoftPromptModel, directory: str | os.PathLike) -> Path:
    """Write ``model``'s folded prompt as a ``peft`` adapter folder; returns the folder."""
    folder = Path(directory)
    shape = model.shape
    tensors = model.prompt.folded()
    method = model.config.method
    peft_type = {v: k for k, v in PEFT_TYPES.items()}[method]
    config: dict[str, Any] = {
        "peft_type": peft_type,
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": next(iter(tensors.values())).shape[0],
        "num_transformer_submodules": 1,
        "num_layers": shape.num_layers,
        "inference_mode": True,
        "base_model_name_or_path": shape.name_or_path or None,
    }
    if "prefix" in tensors:
        if len(set(shape.layers)) != 1:
            raise ValueError("peft's prefix format needs the same key/value shape in every layer")
        layer = shape.layers[0]
        # peft views the prefix as (P, L * 2, heads, token_dim // heads): heads are key/value heads here.
        config |= {
            "num_attention_heads": layer.num_kv_heads,
            "token_dim": layer.num_kv_heads * layer.head_dim,
            "prefix_projection": False,
            "encoder_hidden_size": shape.hidden_size,
        }
        table = tensors["prefix"]
    else:
        config |= {"num_attention_heads": shape.num_attention_heads, "token_dim": shape.embed_dim}
        if method == "p_tuning":
            config |= {
                "encoder_hidden_size": model.config.encoder_hidden_size,
                "encoder_reparameterization_type": model.config.encoder.upper(),
                "encoder_num_layers": 2,
            }
        table = tensors["embeddings"]
    folder.mkdir(parents=True, exist_ok=True)
    weights = {"prompt_embeddings": table.contiguous().cpu()}
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(weights, str(tmp), metadata={"format": "pt"}))
    atomic_write(folder / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(config, indent=2)))
    return folder
