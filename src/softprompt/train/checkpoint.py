"""Resumable checkpoints: trainable weights, optimiser, scheduler, RNG states and the data position.

The batch order of an epoch is a pure function of (seed, epoch) (see
:class:`softprompt.data.LengthGroupedSampler`), so the data position is two numbers: the epoch and
the batches already consumed in it. A run resumed from a checkpoint therefore computes exactly the
steps an uninterrupted run would, and on CPU ends with a bit-identical prompt.

The file is one safetensors file, written atomically: every tensor of the state (prompt, optimiser
moments, the torch RNG state) is a safetensors entry, and the rest (counters, hyper-parameters,
the Python and NumPy RNG states) is JSON in its header — nothing is pickled. It is read like any
file from outside (:mod:`softprompt.files.container`): a damaged or foreign checkpoint, or one of
another run, is refused with an :class:`~softprompt.files.errors.AdapterFileError` naming what
does not fit, before anything is restored from it.

Examples:
    >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4))
    >>> optimizer = torch.optim.AdamW(model.prompt.parameters(), lr=0.1)
    >>> scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    >>> save_checkpoint(tmp_dir / CHECKPOINT_NAME, model, optimizer, scheduler, Progress(step=3))
    >>> load_checkpoint(tmp_dir / CHECKPOINT_NAME, model, optimizer, scheduler).step
    3
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from softprompt.files.atomic import atomic_write
from softprompt.files.container import load_json, read_safetensors
from softprompt.files.errors import AdapterFileError, CorruptFileError, RecordError, VersionError

CHECKPOINT_NAME = "checkpoint.safetensors"
FORMAT_VERSION = 2
_STATE_KEY = "softprompt_checkpoint"


@dataclass
class Progress:
    """Where a run is: the loop's counters and the early-stopping state.

    Attributes:
        step: optimiser steps done.
        epoch: the current epoch.
        batches_done: batches of ``epoch`` already consumed.
        best_score: the best dev score so far (the least for loss and mse, else the most), or None before any evaluation.
        best_step: the step that scored ``best_score``.
        best_scores: all dev scores of that evaluation.
        evals_since_best: evaluations since the best one (early stopping counts these).
        train_seconds: time spent in the training loop, summed over sessions.
        zero_shot: the bare model's dev scores, measured once before training.
        stopped_early: whether early stopping ended the run.
    """

    step: int = 0
    epoch: int = 0
    batches_done: int = 0
    best_score: float | None = None
    best_step: int | None = None
    best_scores: dict[str, float] | None = None
    evals_since_best: int = 0
    train_seconds: float = 0.0
    zero_shot: dict[str, float] | None = None
    stopped_early: bool = False


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the parameters that train, by name (the prompt, and a task head if any)."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: Progress,
) -> None:
    """Write everything a resumed run needs to continue exactly, atomically."""
    state = {
        "format_version": FORMAT_VERSION,
        "trainable": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": dataclasses.asdict(progress),
        "rng": _rng_states(),
    }
    tensors: dict[str, torch.Tensor] = {}
    header = json.dumps(_to_json(state, tensors))
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={_STATE_KEY: header}))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's state as saved (tensors on the CPU); refuses a foreign or damaged file."""
    metadata, tensors = read_safetensors(path)
    if _STATE_KEY not in metadata:
        raise RecordError(
            path,
            "the safetensors metadata",
            found_text=f"keys {sorted(metadata)}",
            expected=f"a {_STATE_KEY!r} header: this is a safetensors file but not a softprompt checkpoint",
            fix=_FIX,
        )
    state = load_json(metadata[_STATE_KEY], path, "the checkpoint header")
    if not isinstance(state, dict):
        raise RecordError(path, "the checkpoint header", state, "a JSON object", fix=_FIX)
    return _from_json(state, tensors, path)


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> Progress:
    """Restore weights, optimiser, scheduler and RNG states in place; return the saved progress.

    Everything is checked before anything is restored: a checkpoint of another format, of another
    prompt config, or a damaged one changes nothing.
    """
    state = read_checkpoint(Path(path))
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise VersionError(
            path, "format_version", version, f"{FORMAT_VERSION} (this softprompt's checkpoints)", fix=_FIX
        )
    missing = [key for key in ("trainable", "optimizer", "scheduler", "progress", "rng") if key not in state]
    if missing:
        raise RecordError(
            path, "the checkpoint", found_text=f"without {missing}", expected="a whole checkpoint", fix=_FIX
        )
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    saved = state["trainable"]
    if not isinstance(saved, dict) or set(saved) != set(params):
        names = sorted(saved) if isinstance(saved, dict) else saved
        raise AdapterFileError(
            path,
            "the trained parameters",
            found_text=f"{names}",
            expected=f"those this run trains, {sorted(params)}",
            fix="the prompt config changed since the checkpoint: resume with the config the run started with",
        )
    for name, p in params.items():
        value = saved[name]
        if not isinstance(value, torch.Tensor) or value.shape != p.shape or value.dtype != p.dtype:
            found = (
                f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else repr(value)[:60]
            )
            raise AdapterFileError(
                path,
                f"parameter {name!r}",
                found_text=found,
                expected=f"{tuple(p.shape)} {p.dtype}, as this run trains it",
                fix="resume with the config and base model the run started with",
            )
    progress = _restore(path, "progress", lambda: Progress(**state["progress"]))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
    _restore(path, "optimizer", lambda: optimizer.load_state_dict(state["optimizer"]))
    _restore(path, "scheduler", lambda: scheduler.load_state_dict(state["scheduler"]))
    _restore(path, "rng", lambda: _set_rng_states(state["rng"]))
    return progress


def _is_pair(item: Any) -> bool:
    return isinstance(item, list) and len(item) == 2 and isinstance(item[0], str | int)


_FIX = "resume from the run folder this checkpoint belongs to, or start afresh without --resume"


def _restore(path: Path, part: str, action):
    """Run ``action`` (restoring one part of the state); a part that does not fit is refused by name."""
    try:
        return action()
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
        raise AdapterFileError(
            path,
            f"the checkpoint's {part}",
            found_text=f"unusable ({type(err).__name__}: {err})",
            expected=f"the {part} state this run saves",
            fix=_FIX,
        ) from None


def _to_json(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON, with each tensor moved into ``tensors`` and replaced by a reference to it.

    Dicts with non-string keys (the optimiser state is keyed by parameter index) are kept as lists
    of pairs so the keys come back with their type.
    """
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _to_json(v, tensors) for k, v in value.items()}
        return {"__pairs__": [[k, _to_json(v, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_to_json(v, tensors) for v in value]
    return value


def _from_json(value: Any, tensors: dict[str, torch.Tensor], path: Path) -> Any:
    """The inverse of :func:`_to_json` (tuples come back as lists); refuses references that do not resolve."""
    if isinstance(value, dict):
        if "__tensor__" in value:
            if value["__tensor__"] not in tensors:
                raise CorruptFileError(
                    path, "a tensor reference", value["__tensor__"], "a tensor of the file", fix=_FIX
                )
            return tensors[value["__tensor__"]]
        if "__pairs__" in value:
            pairs = value["__pairs__"]
            if not (isinstance(pairs, list) and all(_is_pair(p) for p in pairs)):
                raise CorruptFileError(path, "a keyed entry", pairs, "a list of [key, value] pairs", fix=_FIX)
            return {k: _from_json(v, tensors, path) for k, v in pairs}
        return {k: _from_json(v, tensors, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v, tensors, path) for v in value]
    return value


def _rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
