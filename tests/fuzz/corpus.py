"""Hostile and broken inputs, built on demand: the fixed corpus of issue 13's cases, and the helpers
the property tests mutate good files with.

Each :class:`Case` builds one input in a folder and says which refusal it must meet: the exception
class (a subclass of :class:`softprompt.AdapterFileError`) and words its message must hold.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tiny import tiny_causal_lm

import softprompt
from softprompt.files import errors
from softprompt.files.container import tensor_checksum

# A file whose unpickling would run this (and leave the marker behind): it must never be unpickled.
MARKER_NAME = "unpickled-marker"


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def good_files(folder: Path) -> dict[str, Path]:
    """Valid inputs of every format: llama prompt/prefix files, a peft prompt and prefix folder."""
    folder.mkdir(parents=True, exist_ok=True)
    base = tiny_causal_lm("llama")
    prompt = softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=4, init="random"))
    prefix = softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=4, init="random"))
    return {
        "prompt": prompt.save(folder / "prompt.safetensors"),
        "prefix": prefix.save(folder / "prefix.safetensors"),
        "peft_prompt": prompt.export_peft(folder / "peft_prompt"),
        "peft_prefix": prefix.export_peft(folder / "peft_prefix"),
    }


def read_raw(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(record, tensors)`` of a good adapter file, unchecked, for building bad ones from."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        record = json.loads(f.metadata()["softprompt"])
        return record, {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def write_raw(path: Path, tensors: dict[str, torch.Tensor], record, *, checksum: bool = True) -> Path:
    """A safetensors file with ``record`` as its softprompt header, as given (a JSON text, or a value)."""
    if isinstance(record, dict) and checksum and "checksum" in record:
        record = {**record, "checksum": tensor_checksum(tensors)}
    text = record if isinstance(record, str) else json.dumps(record)
    save_file(tensors, str(path), metadata={"softprompt": text})
    return path


def raw_safetensors(path: Path, header: str, body: bytes) -> Path:
    """A file of the safetensors layout with a header written by hand (duplicated keys, lies...)."""
    data = header.encode()
    path.write_bytes(struct.pack("<Q", len(data)) + data + body)
    return path


def edited(good: Path, out: Path, change: Callable[[dict], object] | None = None, tensors=None, **kw) -> Path:
    """``good``'s record changed by ``change`` (which edits it in place or returns a new value)."""
    record, saved = read_raw(good)
    if change is not None:
        result = change(record)
        record = record if result is None else result
    return write_raw(out, saved if tensors is None else tensors, record, **kw)


def peft_edited(good: Path, out: Path, change: Callable[[dict], object]) -> Path:
    """A copy of the peft folder ``good`` with its config changed by ``change``."""
    import shutil

    shutil.copytree(good, out)
    config = json.loads((out / "adapter_config.json").read_text())
    result = change(config)
    text = result if isinstance(result, str | bytes) else json.dumps(config if result is None else result)
    (out / "adapter_config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    return out


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@dataclass
class Case:
    name: str
    make: Callable[[dict[str, Path], Path], Path]  # (good files, a fresh folder) -> the input to load
    error: type[errors.AdapterFileError]
    says: str  # words the message must hold
    base: str = "llama"


def _set(key, value):
    def change(record):
        record[key] = value

    return change


def _set_config(key, value):
    def change(record):
        record["config"][key] = value

    return change


def _without(key):
    return lambda record: record.pop(key) and None


def _tensor(name, value):
    def make(good, d):
        record, _ = read_raw(good["prompt" if name == "embeddings" else "prefix"])
        return write_raw(d / "x.safetensors", {name: value}, record)

    return make


def _with_dtype(dtype):
    return _tensor("embeddings", torch.zeros(4, 32).to(dtype))


def _write(folder: Path, data: bytes) -> Path:
    (folder / "x.safetensors").write_bytes(data)
    return folder / "x.safetensors"


def _flip_data_byte(good, d):
    data = bytearray(good["prompt"].read_bytes())
    data[-7] ^= 0x10
    (d / "x.safetensors").write_bytes(bytes(data))
    return d / "x.safetensors"


def _pickle(good, d):
    torch.save({"embeddings": torch.zeros(4, 32)}, d / "x.safetensors")
    return d / "x.safetensors"


def _evil_pickle(good, d):
    (d / "x.safetensors").write_bytes(pickle.dumps(RunsCode(d / MARKER_NAME)))
    return d / "x.safetensors"


def _fifo(good, d):
    os.mkfifo(d / "x.safetensors")
    return d / "x.safetensors"


def _symlink(target):
    def make(good, d):
        link = d / "x.safetensors"
        os.symlink(target if target != "self" else link, link)
        return link

    return make


def _peft_weights_fifo(good, d):
    import shutil

    shutil.copytree(good["peft_prompt"], d / "peft")
    (d / "peft" / "adapter_model.safetensors").unlink()
    os.mkfifo(d / "peft" / "adapter_model.safetensors")
    return d / "peft"


def _peft_pickled_weights(good, d):
    import shutil

    shutil.copytree(good["peft_prompt"], d / "peft")
    (d / "peft" / "adapter_model.safetensors").unlink()
    (d / "peft" / "adapter_model.bin").write_bytes(pickle.dumps(RunsCode(d / MARKER_NAME)))
    return d / "peft"


def _peft_narrow_prefix(good, d):
    import shutil

    shutil.copytree(good["peft_prefix"], d / "peft")
    weights = d / "peft" / "adapter_model.safetensors"
    save_file({"prompt_embeddings": torch.zeros(4, 1)}, str(weights), metadata={"format": "pt"})
    return d / "peft"


def _peft_made_for(family: str, **config):
    """A peft folder softprompt exported from a tiny ``family`` model (its metadata names the model)."""

    def make(good, d):
        base = tiny_causal_lm(family)
        for key, value in config.items():
            setattr(base.config, key, value)
        model = softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=4, init="random"))
        return model.export_peft(d / "peft")

    return make


def _peft_foreign_prefix(good, d):
    """A prefix for 2 layers of 1 key/value head of 16: the width of the Llama's (2 heads of 8), 64."""
    import shutil

    shutil.copytree(good["peft_prefix"], d / "peft")
    config = json.loads((d / "peft" / "adapter_config.json").read_text())
    config |= {"num_attention_heads": 1, "token_dim": 16}  # 1 head of 16 per layer: the same width, 64
    (d / "peft" / "adapter_config.json").write_text(json.dumps(config))
    weights = d / "peft" / "adapter_model.safetensors"
    save_file({"prompt_embeddings": torch.zeros(4, 64)}, str(weights), metadata={"format": "pt"})
    return d / "peft"


P = "peft_prompt"
CASES = [
    # --- records that are not what they claim -------------------------------------------------
    *[
        Case(
            f"record is {text}",
            lambda g, d, t=text: edited(g["prompt"], d / "x.safetensors", lambda r, t=t: t),
            errors.RecordError,
            "the softprompt record is",
        )
        for text in ("[]", "null", "1", '"x"')
    ],
    Case(
        "record nested 5000 deep",
        lambda g, d: edited(
            g["prompt"],
            d / "x.safetensors",
            lambda r: json.dumps(r)[:-1] + ', "task": {"a": ' + nested(5000) + "}}",
        ),
        errors.RecordError,
        "deep; expected at most 64 levels",
    ),
    Case(
        "method is a list",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _set("method", ["prompt_tuning"])),
        errors.RecordError,
        "method is ['prompt_tuning'] (list); expected a string",
    ),
    Case(
        "unknown method",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _set("method", "lora")),
        errors.RecordError,
        "unknown method 'lora'",
    ),
    Case(
        "config is null",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _set("config", None)),
        errors.RecordError,
        "config is None; expected an object",
    ),
    Case(
        "num_virtual_tokens is a string",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _set_config("num_virtual_tokens", "4")),
        errors.RecordError,
        "config.num_virtual_tokens is '4' (str)",
    ),
    Case(
        "num_virtual_tokens is 4.5",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _set_config("num_virtual_tokens", 4.5)),
        errors.RecordError,
        "config.num_virtual_tokens is 4.5 (float)",
    ),
    Case(
        "num_virtual_tokens is NaN",
        lambda g, d: edited(
            g["prompt"],
            d / "x.safetensors",
            lambda r: json.dumps(r).replace('"num_virtual_tokens": 4', '"num_virtual_tokens": NaN'),
        ),
        errors.RecordError,
        "NaN",
    ),
    Case(
        "num_virtual_tokens is 0",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _set_config("num_virtual_tokens", 0)),
        errors.RecordError,
        "at least 1",
    ),
    Case(
        "prefix_sites is a list",
        lambda g, d: edited(g["prefix"], d / "x.safetensors", _set_config("prefix_sites", ["all"])),
        errors.RecordError,
        "config.prefix_sites is ['all'] (list)",
    ),
    Case(
        "unknown config key",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _set_config("tokenizer_kwargs", {})),
        errors.RecordError,
        "keys ['tokenizer_kwargs']",
    ),
    Case(
        "base_model is a string",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _set("base_model", "llama")),
        errors.RecordError,
        "base_model is 'llama' (str)",
    ),
    Case(
        "base_model missing",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _without("base_model")),
        errors.RecordError,
        "base_model is missing",
    ),
    Case(
        "base_model.num_layers is a string",
        lambda g, d: edited(
            g["prompt"], d / "x.safetensors", lambda r: r["base_model"].update(num_layers="2")
        ),
        errors.RecordError,
        "base_model.num_layers is '2' (str)",
    ),
    Case(
        "model_options is a list",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _set("model_options", [])),
        errors.RecordError,
        "model_options is [] (list)",
    ),
    Case(
        "model_options names the model",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _set("model_options", {"base_model": None})),
        errors.AdapterFileError,
        "model_options is the options ['base_model']",
    ),
    Case(
        "task is a list",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _set("task", [1])),
        errors.RecordError,
        "task is [1] (list)",
    ),
    Case(
        "task is huge",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _set("task", {"t": "x" * 100_000})),
        errors.RecordError,
        "at most 65,536 bytes",
    ),
    Case(
        "unknown record field",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _set("trust_remote_code", True)),
        errors.RecordError,
        "fields ['trust_remote_code']",
    ),
    Case(
        "format_version is a string",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _set("format_version", "2")),
        errors.VersionError,
        "format_version is '2' (str)",
    ),
    Case(
        "format_version 99",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _set("format_version", 99)),
        errors.VersionError,
        "format_version is 99 (int)",
    ),
    Case(
        "version 2 without a checksum",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _without("checksum")),
        errors.RecordError,
        "checksum is missing",
    ),
    Case(
        "dtype field lies",
        lambda g, d: edited(g["prompt"], d / "x.safetensors", _set("dtype", "float16")),
        errors.RecordError,
        "dtype is 'float16' (str)",
    ),
    Case(
        "duplicated record key",
        lambda g, d: edited(
            g["prompt"], d / "x.safetensors", lambda r: json.dumps(r)[:-1] + ', "method": "prefix_tuning"}'
        ),
        errors.RecordError,
        "key 'method' is given twice",
    ),
    Case(
        "safetensors without a record",
        lambda g, d: (save_file({"x": torch.zeros(2)}, str(d / "x.safetensors")), d / "x.safetensors")[1],
        errors.RecordError,
        "not a softprompt adapter",
    ),
    # --- tensors ---------------------------------------------------------------------------------
    Case("0-d prompt", _tensor("embeddings", torch.tensor(1.0)), errors.TensorError, "of shape ()"),
    Case("1-D prompt", _tensor("embeddings", torch.zeros(32)), errors.TensorError, "of shape (32,)"),
    Case(
        "3-D prompt", _tensor("embeddings", torch.zeros(4, 2, 16)), errors.TensorError, "of shape (4, 2, 16)"
    ),
    Case(
        "too few rows", _tensor("embeddings", torch.zeros(3, 32)), errors.TensorError, "num_virtual_tokens=4"
    ),
    Case(
        "NaN prompt",
        _tensor("embeddings", torch.full((4, 32), float("nan"))),
        errors.TensorError,
        "128 of 128 numbers NaN",
    ),
    Case(
        "+inf prompt",
        _tensor("embeddings", torch.zeros(4, 32).index_fill_(1, torch.tensor([3]), float("inf"))),
        errors.TensorError,
        "4 of 128 numbers NaN or infinite",
    ),
    Case(
        "-inf prefix",
        _tensor("prefix", torch.full((4, 64), -float("inf"))),
        errors.TensorError,
        "NaN or infinite",
    ),
    Case(
        "fp16 overflow is not finite",
        _tensor("embeddings", torch.full((4, 32), 1e300, dtype=torch.float64)),
        errors.TensorError,
        "infinite (as float32)",
    ),
    *[
        Case(f"{dtype} prompt", _with_dtype(dtype), errors.TensorError, f"of dtype {code}")
        for dtype, code in [
            (torch.int64, "I64"),
            (torch.int32, "I32"),
            (torch.bool, "BOOL"),
            (torch.uint8, "U8"),
            (torch.float8_e4m3fn, "F8_E4M3"),
            (torch.float8_e5m2, "F8_E5M2"),
            (torch.complex64, "C64"),
        ]
    ],
    Case(
        "prompt_tuning record with a prefix tensor",
        lambda g, d: write_raw(d / "x.safetensors", {"prefix": torch.zeros(4, 32)}, read_raw(g["prompt"])[0]),
        errors.TensorError,
        "named ['prefix']",
    ),
    Case(
        "an extra tensor",
        lambda g, d: write_raw(
            d / "x.safetensors",
            {**read_raw(g["prompt"])[1], "extra": torch.zeros(1)},
            read_raw(g["prompt"])[0],
        ),
        errors.TensorError,
        "named ['embeddings', 'extra']",
    ),
    Case(
        "a head on a causal LM",
        lambda g, d: write_raw(
            d / "x.safetensors",
            {**read_raw(g["prompt"])[1], "head.score.weight": torch.zeros(2, 32)},
            read_raw(g["prompt"])[0],
        ),
        errors.WrongModelError,
        "task-head tensors",
    ),
    Case(
        "NaN head",
        lambda g, d: write_raw(
            d / "x.safetensors",
            {**read_raw(g["prompt"])[1], "head.score.weight": torch.full((2, 32), float("nan"))},
            read_raw(g["prompt"])[0],
        ),
        errors.TensorError,
        "tensor 'head.score.weight' is 64 of 64",
    ),
    Case(
        "duplicated tensor key",
        lambda g, d: raw_safetensors(
            d / "x.safetensors",
            '{"embeddings":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
            '"embeddings":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
            b"\0" * 8,
        ),
        errors.RecordError,
        "key 'embeddings' is given twice",
    ),
    Case(
        "unknown dtype",
        lambda g, d: raw_safetensors(
            d / "x.safetensors", '{"x":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}', b"\0"
        ),
        errors.TensorError,
        "dtype is 'F4'",
    ),
    Case(
        "offsets past the end",
        lambda g, d: raw_safetensors(
            d / "x.safetensors", '{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', b"\0" * 8
        ),
        errors.CorruptFileError,
        "data_offsets",
    ),
    Case(
        "negative shape",
        lambda g, d: raw_safetensors(
            d / "x.safetensors", '{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}', b""
        ),
        errors.CorruptFileError,
        "shape is [-1]",
    ),
    Case(
        "header length lies",
        lambda g, d: _write(d, struct.pack("<Q", 1 << 62) + b"{}"),
        errors.CorruptFileError,
        "the header length is",
    ),
    Case(
        "header not an object",
        lambda g, d: raw_safetensors(d / "x.safetensors", "[]", b""),
        errors.CorruptFileError,
        "the safetensors header is [] (list)",
    ),
    Case(
        "header not UTF-8",
        lambda g, d: _write(d, struct.pack("<Q", 2) + b"\xff\xfe"),
        errors.CorruptFileError,
        "not UTF-8",
    ),
    Case("flipped byte in the data", _flip_data_byte, errors.CorruptFileError, "checksum"),
    Case(
        "truncated",
        lambda g, d: _write(d, g["prompt"].read_bytes()[:-40]),
        errors.CorruptFileError,
        "truncated",
    ),
    Case("empty file", lambda g, d: _write(d, b""), errors.CorruptFileError, "0 bytes"),
    # --- pickles and special files ---------------------------------------------------------------
    Case("torch.save file", _pickle, errors.UnsafeFileError, "a zip archive (what torch.save writes"),
    Case("pickle that runs code", _evil_pickle, errors.UnsafeFileError, "a Python pickle"),
    Case("FIFO", _fifo, errors.SpecialFileError, "a named pipe (FIFO)"),
    Case("/dev/null", lambda g, d: Path("/dev/null"), errors.SpecialFileError, "a character device"),
    Case("symlink loop", _symlink("self"), errors.SpecialFileError, "a loop of symbolic links"),
    Case(
        "dangling link",
        _symlink("/nonexistent/adapter.safetensors"),
        errors.SpecialFileError,
        "which does not exist",
    ),
    Case("nothing there", lambda g, d: d / "missing", errors.AdapterNotFoundError, "the path is nothing"),
    # --- made for another model ------------------------------------------------------------------
    Case(
        "llama prompt onto gpt2",
        lambda g, d: g["prompt"],
        errors.WrongModelError,
        "family: file 'llama', model 'gpt2'",
        base="gpt2",
    ),
    Case(
        "num_layers 2 vs '2' shows the types",
        lambda g, d: edited(
            g["prompt"], d / "x.safetensors", lambda r: r["base_model"].update(family="gpt2")
        ),
        errors.WrongModelError,
        "family: file 'gpt2', model 'llama'",
    ),
    # --- peft folders ----------------------------------------------------------------------------
    Case(
        "peft config is []",
        lambda g, d: peft_edited(g[P], d / "peft", lambda c: "[]"),
        errors.RecordError,
        "the peft config is [] (list)",
    ),
    Case(
        "peft config not UTF-8",
        lambda g, d: peft_edited(g[P], d / "peft", lambda c: b"{\xff}"),
        errors.CorruptFileError,
        "not UTF-8",
    ),
    Case(
        "peft config nested",
        lambda g, d: peft_edited(g[P], d / "peft", lambda c: '{"x": ' + nested(5000) + "}"),
        errors.RecordError,
        "deep; expected at most 64 levels",
    ),
    Case(
        "peft num_virtual_tokens 4.5",
        lambda g, d: peft_edited(g[P], d / "peft", lambda c: c.update(num_virtual_tokens=4.5)),
        errors.RecordError,
        "num_virtual_tokens is 4.5 (float)",
    ),
    Case(
        "peft num_virtual_tokens '4'",
        lambda g, d: peft_edited(g[P], d / "peft", lambda c: c.update(num_virtual_tokens="4")),
        errors.RecordError,
        "num_virtual_tokens is '4' (str)",
    ),
    Case(
        "peft num_virtual_tokens NaN",
        lambda g, d: peft_edited(
            g[P],
            d / "peft",
            lambda c: json.dumps(c).replace('"num_virtual_tokens": 4', '"num_virtual_tokens": NaN'),
        ),
        errors.RecordError,
        "NaN",
    ),
    Case(
        "peft num_virtual_tokens 2 on 4 rows",
        lambda g, d: peft_edited(g[P], d / "peft", lambda c: c.update(num_virtual_tokens=2)),
        errors.TensorError,
        "4 rows; expected 2",
    ),
    Case(
        "peft LoRA",
        lambda g, d: peft_edited(g[P], d / "peft", lambda c: c.update(peft_type="LORA")),
        errors.RecordError,
        "peft_type is 'LORA' (str)",
    ),
    Case(
        "peft another task",
        lambda g, d: peft_edited(g[P], d / "peft", lambda c: c.update(task_type="SEQ_CLS")),
        errors.WrongModelError,
        "a peft SEQ_CLS adapter",
    ),
    Case(
        "peft heads differ",
        lambda g, d: peft_edited(g[P], d / "peft", lambda c: c.update(num_attention_heads=8)),
        errors.WrongModelError,
        "num_attention_heads: folder 8, model 4",
    ),
    Case(
        "peft layers differ",
        lambda g, d: peft_edited(g[P], d / "peft", lambda c: c.update(num_layers=12)),
        errors.WrongModelError,
        "num_layers: folder 12, model 2",
    ),
    Case(
        "peft token_dim disagrees with its table",
        lambda g, d: peft_edited(g[P], d / "peft", lambda c: c.update(token_dim=64)),
        errors.WrongModelError,
        "token_dim: folder 64, model 32",
    ),
    Case("peft weights are a FIFO", _peft_weights_fifo, errors.SpecialFileError, "a named pipe"),
    Case(
        "peft weights are a pickle",
        _peft_pickled_weights,
        errors.UnsafeFileError,
        "adapter_model.bin, a pickle",
    ),
    Case(
        "peft prefix narrower than the layers",
        _peft_narrow_prefix,
        errors.WrongModelError,
        "prompt_embeddings width: folder 1, model 64",
    ),
    Case(
        "peft prefix of the width for other heads",
        _peft_foreign_prefix,
        errors.WrongModelError,
        "num_attention_heads: folder 1, model 2",
    ),
    Case(
        "peft llama prompt onto gpt2",
        lambda g, d: g[P],
        errors.WrongModelError,
        "family: file 'llama', model 'gpt2'",
        base="gpt2",
    ),
    Case(
        "peft vocab 120 onto vocab 96",
        _peft_made_for("llama", vocab_size=120),
        errors.WrongModelError,
        "vocab_size: file 120, model 96",
    ),
    Case(
        "peft config is a folder",
        lambda g, d: (os.makedirs(d / "peft" / "adapter_config.json"), d / "peft")[1],
        errors.SpecialFileError,
        "a folder",
    ),
    Case(
        "peft tensor data flipped",
        lambda g, d: _flip_in(peft_edited(g[P], d / "peft", lambda c: None)),
        errors.CorruptFileError,
        "checksum",
    ),
]


def _flip_in(folder: Path) -> Path:
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    return folder
