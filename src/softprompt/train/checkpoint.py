"""Resumable checkpoints: trainable weights, optimiser, scheduler, RNG states and the data position.

The batch order of an epoch is a pure function of (seed, epoch) (see
:class:`softprompt.data.LengthGroupedSampler`), so the data position is two numbers: the epoch and
the batches already consumed in it. A run resumed from a checkpoint therefore computes exactly the
steps an uninterrupted run would, and on CPU ends with a bit-identical prompt.

The file is one safetensors file, written atomically: every tensor of the state (prompt, optimiser
moments, the torch RNG state) is a safetensors entry, and the rest (counters, hyper-parameters,
the Python and NumPy RNG states) is JSON in its header — nothing is pickled.

Examples:
    >>> save_checkpoint(run_dir / CHECKPOINT_NAME, model, optimizer, scheduler, progress)  # doctest: +SKIP
    >>> progress = load_checkpoint(run_dir / CHECKPOINT_NAME, model, optimizer, scheduler)  # doctest: +SKIP
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
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from softprompt.files.atomic import atomic_write

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
        best_score: the best dev score so far (higher is better), or None before any evaluation.
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
    """The checkpoint's state as saved (tensors on the CPU); raises ValueError for a foreign or corrupt file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get(_STATE_KEY)
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not iterable)
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{path} is truncated or corrupt ({err}); resume from an earlier run folder"
        ) from err
    if header is None:
        raise ValueError(f"{path} is not a softprompt checkpoint (no {_STATE_KEY} header)")
    return _from_json(json.loads(header), tensors)


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> Progress:
    """Restore weights, optimiser, scheduler and RNG states in place; return the saved progress."""
    state = read_checkpoint(Path(path))
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is a checkpoint of another format ({state.get('format_version')!r})")
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    saved = state["trainable"]
    if set(saved) != set(params):
        raise ValueError(
            f"{path} holds parameters {sorted(saved)}, but this run trains {sorted(params)}; "
            "was the prompt config changed since the checkpoint?"
        )
    with torch.no_grad():
        for name, p in params.items():
            if saved[name].shape != p.shape:
                raise ValueError(
                    f"{path}: {name} has shape {tuple(saved[name].shape)}, expected {tuple(p.shape)}"
                )
            p.copy_(saved[name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_states(state["rng"])
    return Progress(**state["progress"])


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


def _from_json(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`_to_json` (tuples come back as lists)."""
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__pairs__" in value:
            return {k: _from_json(v, tensors) for k, v in value["__pairs__"]}
        return {k: _from_json(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v, tensors) for v in value]
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
