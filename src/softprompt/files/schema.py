"""The adapter record's schema: every field typed and bounded, checked before anything uses it.

An adapter file's record (the JSON in its safetensors header) holds::

    format_version  1 or 2 (2 adds the checksum)
    method          a registered method's name
    config          the method config's fields (typed as its dataclass declares them)
    base_model      name_or_path and the model's shape (ModelShape.fingerprint())
    dtype           the prompt tensor's dtype
    model_options   optional: keyword arguments of the model class (e.g. {"pooling": "mean"})
    task            optional: an object describing the run's task (template, label words...)
    checksum        version 2: "sha256:..." of the tensors (see container.tensor_checksum)

Examples:
    >>> record = {"format_version": 2, "method": "prompt_tuning", "config": {"num_virtual_tokens": "4"},
    ...           "base_model": {"name_or_path": "m"}, "dtype": "float32", "checksum": "sha256:0"}
    >>> try:
    ...     config_from_record(check_record(record, "a.safetensors"), "a.safetensors")
    ... except RecordError as err:
    ...     print(str(err).splitlines()[0])
    a.safetensors: config.num_virtual_tokens is '4' (str); expected an integer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import TYPE_CHECKING, Any, Literal, Union

import torch

from softprompt.files.container import json_depth
from softprompt.files.errors import RecordError, TensorError, VersionError, WrongModelError, describe, short

if TYPE_CHECKING:
    from softprompt.families import ModelShape
    from softprompt.methods import SoftPromptConfig

FORMAT_VERSION = 2
# Tensors of a trained task head are saved as ``head.<module name>.<parameter>``.
HEAD_PREFIX = "head."
READABLE_VERSIONS = (1, 2)  # version 1: written before the checksum; read without one
MAX_TASK_BYTES = 64 << 10
MAX_TASK_DEPTH = 16
REQUIRED = ("format_version", "method", "config", "base_model", "dtype")
OPTIONAL = ("model_options", "task", "checksum")
# The shape facts a record's base_model holds and their JSON types (ModelShape.fingerprint()).
BASE_MODEL_FIELDS: dict[str, Any] = {
    "name_or_path": str,
    "family": str,
    "hidden_size": int,
    "embed_dim": int,
    "vocab_size": int,
    "num_layers": int,
    "num_attention_heads": int,
    "layers": list[list[int]],
    "decoder_layers": list[list[int]],
    "attention_layers": list[int],
    "recurrent_layers": list[int],
}
Scalar = Union[str, int, float, bool, None]  # noqa: UP007 - a runtime value for matches()


def check_record(record: Any, path) -> dict[str, Any]:
    """``record`` if it has the adapter record's fields with their types; raises :class:`RecordError`."""
    if not isinstance(record, dict):
        raise RecordError(path, "the softprompt record", record, "a JSON object")
    version = record.get("format_version")
    if not (matches(version, int) and version in READABLE_VERSIONS):
        raise VersionError(
            path, "format_version", version, f"one of {READABLE_VERSIONS} (this softprompt's versions)"
        )
    unknown = sorted(set(record) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise RecordError(
            path,
            "the record",
            found_text=f"fields {unknown}",
            expected=f"only {', '.join(REQUIRED + OPTIONAL)}",
            fix="upgrade softprompt if a newer version wrote this file; otherwise save the adapter again",
        )
    for name in REQUIRED + (("checksum",) if version >= 2 else ()):
        if name not in record:
            raise RecordError(
                path, name, found_text="missing", expected=f"the field {name!r} every adapter record holds"
            )
    require(record, "method", str, path)
    if record["method"] not in _methods().METHODS:
        raise RecordError(
            path,
            "method",
            found_text=f"the unknown method {record['method']!r}",
            expected=f"one of {', '.join(map(repr, _methods().METHODS))} (the methods registered in this softprompt)",
            fix="upgrade softprompt, or register the method (softprompt.methods) before loading",
        )
    require(record, "config", dict[str, Any], path)
    require(record, "dtype", str, path)
    require(record, "checksum", str, path, optional=True)
    require(record, "model_options", dict[str, Scalar], path, optional=True)
    check_base_model(record["base_model"], path)
    _check_task(record.get("task"), path)
    return record


def config_from_record(record: dict[str, Any], path) -> SoftPromptConfig:
    """The method config a (checked) record describes, each field of the type its dataclass declares."""
    method = _methods().METHODS[record["method"]]
    choices = record["config"]
    types_of = typing.get_type_hints(method.config)
    fields = {f.name for f in dataclasses.fields(method.config)}
    unknown = sorted(set(choices) - fields)
    if unknown:
        raise RecordError(
            path,
            "config",
            found_text=f"keys {unknown}",
            expected=f"fields of {method.config.__name__}: {sorted(fields)}",
            fix="upgrade softprompt if a newer version wrote this file; otherwise save the adapter again",
        )
    for name, value in choices.items():
        if not matches(value, types_of[name]):
            raise RecordError(path, f"config.{name}", value, expected=describe_type(types_of[name]))
    try:
        return method.reload_config(choices)
    except (ValueError, TypeError) as err:
        raise RecordError(
            path, "config", found_text=f"{choices} ({err})", expected=f"a valid {method.name} config"
        ) from None


def require(record: dict[str, Any], name: str, kind: Any, path, *, optional: bool = False) -> None:
    """Refuse ``record[name]`` unless it is of the JSON type ``kind``."""
    if optional and name not in record:
        return
    if not matches(record[name], kind):
        raise RecordError(path, name, record[name], describe_type(kind))


def matches(value: Any, kind: Any) -> bool:
    """Whether a JSON value is of ``kind``: str, int, float, bool, None, Literal, unions, list[...], dict[str, ...]."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return True
    if kind is None or kind is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if origin is Literal:
        return any(type(value) is type(arg) and value == arg for arg in args)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # JSON writes 1.0 as 1
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind is str:
        return isinstance(value, str)
    if origin is list or _is_sequence(kind):  # JSON writes a tuple[X, ...] field as a list
        return isinstance(value, list) and all(matches(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(matches(v, args[1]) for v in value.values())
    return False  # a type no file may hold


def describe_type(kind: Any) -> str:
    """``kind`` in words, as an error message's "expected" part."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is None or kind is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is list or _is_sequence(kind):
        return f"a list of {describe_type(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin is dict:
        return "an object" if args[1] is Any else f"an object of {describe_type(args[1])} values"
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    return names.get(kind, "a JSON value")


def _is_sequence(kind: Any) -> bool:
    """Whether ``kind`` is ``tuple[X, ...]`` (a config field holding any number of Xs, e.g. task names)."""
    args = typing.get_args(kind)
    return typing.get_origin(kind) is tuple and len(args) == 2 and args[1] is Ellipsis


def check_base_model(saved: Any, path) -> None:
    if not isinstance(saved, dict):
        raise RecordError(
            path, "base_model", saved, "an object: the name and shape of the model it was made for"
        )
    for name, value in saved.items():
        kind = BASE_MODEL_FIELDS.get(name, Union[Scalar, list[Any]])  # noqa: UP007 - newer facts
        if not matches(value, kind) or json_depth(json.dumps(value)) > 3:
            raise RecordError(
                path, f"base_model.{name}", value, describe_type(BASE_MODEL_FIELDS.get(name, Scalar))
            )


def _check_task(task: Any, path) -> None:
    if task is None:
        return
    if not isinstance(task, dict):
        raise RecordError(path, "task", task, "an object (the run's template, label words, ...) or null")
    text = json.dumps(task)
    if len(text) > MAX_TASK_BYTES or json_depth(text) > MAX_TASK_DEPTH:
        raise RecordError(
            path,
            "task",
            found_text=f"an object of {len(text):,} bytes nested {json_depth(text)} deep",
            expected=f"at most {MAX_TASK_BYTES:,} bytes and {MAX_TASK_DEPTH} levels",
        )


# ---------------------------------------------------------------------------------------- tensors
def split_head(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(prompt tensors, task-head tensors)`` of an adapter's tensors (head tensors keep their ``head.`` names)."""
    head = {name: t for name, t in tensors.items() if name.startswith(HEAD_PREFIX)}
    return {name: t for name, t in tensors.items() if name not in head}, head


def check_tensors(tensors: dict[str, torch.Tensor], config: SoftPromptConfig, path) -> torch.Tensor:
    """The prompt's table, refusing tensors that are not one ``(P, width)`` table of what the method
    saves (plus head tensors, and the tensors a method declares beside its table — a multitask prompt's
    per-task factors), or that hold a NaN or an infinity (as float32, the dtype prompts run in)."""
    method, length = _methods().method_of(config), config.num_virtual_tokens
    prompt, _ = split_head(tensors)
    width = prompt[method.saves].shape[-1] if method.saves in prompt and prompt[method.saves].dim() else 0
    extra = _extra_tensors(method, config, width)
    if set(prompt) != {method.saves, *extra}:
        raise TensorError(
            path,
            "the tensors",
            found_text=f"named {sorted(prompt)}",
            expected=f"one tensor {method.saves!r} (what a {method.name} prompt saves)"
            + "".join(f", {name!r}" for name in extra)
            + " and head.* tensors of a task head",
        )
    table = prompt[method.saves]
    if table.dim() != 2 or table.shape[0] != length or table.shape[1] == 0:
        raise TensorError(
            path,
            f"tensor {method.saves!r}",
            found_text=f"of shape {tuple(table.shape)}",
            expected=f"({length}, width): a row per virtual token (num_virtual_tokens={length})",
        )
    for name, shape in extra.items():
        if tuple(prompt[name].shape) != shape:
            raise TensorError(
                path,
                f"tensor {name!r}",
                found_text=f"of shape {tuple(prompt[name].shape)}",
                expected=f"{shape}",
            )
    check_finite(tensors, path)
    return table


def _extra_tensors(method, config: SoftPromptConfig, width: int) -> dict[str, tuple[int, ...]]:
    """The tensors ``method``'s files hold beside its (P, width) table, by name and shape (none for most)."""
    declared = getattr(method, "extra_tensors", None)  # Method.extra_tensors where a method declares it
    return declared(config, width) if declared is not None else {}


def check_finite(tensors: dict[str, torch.Tensor], path) -> None:
    """Refuse a tensor holding a NaN or an infinity (as float32, the dtype prompts and heads run in)."""
    for name, tensor in tensors.items():
        bad = int((~torch.isfinite(tensor.float())).sum())
        if bad:
            raise TensorError(
                path,
                f"tensor {name!r}",
                found_text=f"{bad} of {tensor.numel()} numbers NaN or infinite (as float32)",
                expected="finite numbers (a NaN or infinity turns every logit into NaN)",
            )


# ------------------------------------------------------------------------------------- base model
def check_same_model(saved: dict[str, Any], shape: ModelShape, path) -> None:
    """Refuse a file whose recorded base model (a checked ``base_model``) differs from ``shape``,
    naming every fact that differs."""
    expected = shape.fingerprint()
    order = list(BASE_MODEL_FIELDS)
    keys = sorted(
        (set(expected) | set(saved)) - {"name_or_path"},
        key=lambda k: (k not in order, order.index(k) if k in order else 0, k),
    )
    differences = [_difference(key, saved, expected) for key in keys if saved.get(key) != expected.get(key)]
    if differences:
        made_for = saved.get("name_or_path") or saved.get("family") or "a model it does not name"
        raise WrongModelError(
            path,
            "base_model",
            found_text=f"{made_for!r}, which differs from this model in " + "; ".join(differences),
            expected=f"this {shape.family} model ({shape.name_or_path or 'unnamed'})",
            fix=f"the file was made for another base model ({made_for}): load it onto that model "
            "(--base NAME on the command line)",
        )


def _difference(key: str, saved: dict[str, Any], expected: dict[str, Any]) -> str:
    """``key: file X, model Y``, with the types shown when they differ (3 and '3' must not look alike)."""
    file, model = saved.get(key), expected.get(key)
    if key in saved and key in expected and type(file) is type(model):
        return f"{key}: file {short(file)}, model {short(model)}"
    file_text = describe(file) if key in saved else "not recorded"
    return f"{key}: file {file_text}, model {describe(model) if key in expected else 'not recorded'}"


def _methods():
    """softprompt.methods, imported on first use: its initializers read adapter files (this module)."""
    import softprompt.methods

    return softprompt.methods
