"""Training recipes: softprompt's measured defaults per method, and the papers' recipes as named presets.

A preset fills the ``prompt`` and ``train`` sections *under* the user's config: any key the user
sets wins, key by key. A preset's ``prompt`` options apply only when the method is the preset's own.
A config with ``preset: null`` (the default) gets :data:`DEFAULTS` for its ``prompt.method``.

The defaults were measured on SmolLM2-135M-Instruct (the built-in example and SST-2; see the
README): soft prompts are sensitive to the learning rate, and the papers' rates were set for other
models and budgets. Lester et al.'s lr 0.3 with Adafactor moves each number of the prompt by about
0.3 a step — right for T5, whose embeddings are large, but many times the size of the embeddings of
GPT-2- and Llama-style models (RMS ~0.1), where it learns erratically. AdamW at 1e-2 takes steps
of about 0.01 and trains smoothly.

Paper recipes (``preset: <name>``):

* ``lester`` — Lester et al. 2021 (arXiv 2104.08691) §3: Adafactor (no parameter scaling, no
  relative step), constant learning rate 0.3, weight decay 1e-5, 20 virtual tokens (the paper
  sweeps 1-150) initialised from the class labels' embeddings.
* ``li-liang`` — Li & Liang 2021 (arXiv 2101.00190) §5: AdamW, learning rate 8e-5 (their range
  5e-5..8e-5) with linear decay, a prefix of 10 reparameterised by an MLP of width 512 (folded away
  for saving), initialised from real tokens' activations (their §7.2). Meant for runs of thousands
  of steps.
* ``p-tuning`` — Liu et al. 2021 (arXiv 2103.10385): a bi-LSTM + MLP prompt encoder (residual,
  starting at the init) trained with AdamW. The paper's lr 1e-5 is for tuning the whole model;
  with a frozen model the encoder needs a larger one.

Examples:
    >>> resolved = apply_preset({"preset": "lester", "train": {"lr": 0.1}})
    >>> resolved["train"]["optimizer"], resolved["train"]["lr"], resolved["prompt"]["method"]
    ('adafactor', 0.1, 'prompt_tuning')
    >>> apply_preset({})["train"]["optimizer"]
    'adamw'
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """A paper's recipe: the prompt method and its options, and the optimiser settings."""

    description: str
    method: str
    prompt: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "lester": Preset(
        "Prompt tuning as in Lester et al. 2021: Adafactor, constant lr 0.3, class-label init.",
        method="prompt_tuning",
        # init "text" without init_text means: the class labels' words (see config.PromptSection).
        prompt={"num_virtual_tokens": 20, "init": "text"},
        train={
            "optimizer": "adafactor",
            "lr": 0.3,
            "schedule": "constant",
            "warmup_steps": 0,
            "weight_decay": 1e-5,
            "max_grad_norm": 1.0,
        },
    ),
    "li-liang": Preset(
        "Prefix tuning as in Li & Liang 2021: AdamW, lr 8e-5 with linear decay, prefix 10, MLP 512.",
        method="prefix_tuning",
        prompt={"num_virtual_tokens": 10, "projection_hidden_size": 512, "init": "vocab"},
        train={
            "optimizer": "adamw",
            "lr": 8e-5,
            "schedule": "linear",
            "warmup_steps": 0,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
        },
    ),
    "p-tuning": Preset(
        "P-tuning as in Liu et al. 2021: a bi-LSTM + MLP prompt encoder trained with AdamW.",
        method="p_tuning",
        prompt={"num_virtual_tokens": 20, "init": "text", "encoder": "lstm", "encoder_hidden_size": 256},
        train={
            "optimizer": "adamw",
            "lr": 1e-3,
            "schedule": "linear",
            "warmup_steps": 0,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
        },
    ),
}

_ADAMW = {"optimizer": "adamw", "weight_decay": 0.0, "max_grad_norm": 1.0, "warmup_steps": 0}

# What a config without a preset gets, per method: measured on SmolLM2-135M-Instruct.
# Task kinds whose labels have words (the text init's default text).
WORDED_KINDS = ("classification", "multi_label")
DEFAULTS: dict[str, Preset] = {
    "prompt_tuning": Preset(
        "Prompt tuning: 20 virtual tokens from the class labels, AdamW lr 1e-2, constant schedule.",
        method="prompt_tuning",
        prompt={"num_virtual_tokens": 20, "init": "text"},
        train={**_ADAMW, "lr": 1e-2, "schedule": "constant"},
    ),
    "prefix_tuning": Preset(
        "Prefix tuning: a prefix of 10 from real tokens' keys/values, AdamW lr 3e-3, constant schedule.",
        method="prefix_tuning",
        prompt={"num_virtual_tokens": 10, "init": "vocab"},
        train={**_ADAMW, "lr": 3e-3, "schedule": "constant"},
    ),
    "p_tuning": Preset(
        "P-tuning: 20 virtual tokens from the class labels through an MLP encoder, AdamW lr 3e-3.",
        method="p_tuning",
        prompt={"num_virtual_tokens": 20, "init": "text", "encoder": "mlp"},
        train={**_ADAMW, "lr": 3e-3, "schedule": "constant"},
    ),
}
DEFAULT_METHOD = "prompt_tuning"


def _wordless(resolved: dict[str, Any]) -> bool:
    """A text init with no text to start from: no ``init_text``, and a task kind without label words."""
    prompt, task = resolved["prompt"], resolved.get("task")
    kind = task.get("kind", "classification") if isinstance(task, dict) else None
    return prompt.get("init") == "text" and not prompt.get("init_text") and kind not in (None, *WORDED_KINDS)


def apply_preset(raw: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of the raw config with the preset's (or the method's defaults') values filled in
    where the user set none. Unknown preset or method names are left for validation to report.

    Examples:
        >>> apply_preset({"prompt": {"method": "prefix_tuning"}})["train"]["lr"]
        0.003
    """
    resolved = copy.deepcopy(raw)
    prompt = resolved.get("prompt")
    method = prompt.get("method") if isinstance(prompt, dict) else None
    name = resolved.get("preset")
    if name is not None:
        if name not in PRESETS:
            return resolved  # validation names the key and the choices
        preset = PRESETS[name]
    elif (method or DEFAULT_METHOD) in DEFAULTS:
        preset = DEFAULTS[method or DEFAULT_METHOD]
    else:
        return resolved  # an unknown method: validation reports it
    if prompt is None:
        prompt = resolved["prompt"] = {}
    if isinstance(prompt, dict):
        chosen_init = "init" in prompt  # the user's own choice is theirs to keep (validation checks it)
        prompt.setdefault("method", preset.method)
        if prompt["method"] == preset.method:
            for key, value in preset.prompt.items():
                prompt.setdefault(key, value)
            if not chosen_init and _wordless(resolved):
                # The class labels' words the text init starts from: this task has none. Sampled
                # vocabulary is Lester et al.'s next best, and the resolved config says so.
                prompt["init"] = "vocab"
    train = resolved.setdefault("train", {})
    if isinstance(train, dict):
        for key, value in preset.train.items():
            train.setdefault(key, value)
    return resolved
