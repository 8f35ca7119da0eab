"""A classifier's task head: the modules outside the backbone that train with the prompt and are
saved with it, and the loss ``transformers`` computes from their logits.

A model with a classification head (``...ForSequenceClassification``, ``...ForTokenClassification``)
is a backbone (``model.base_model``) plus a few modules beside it — ``score``, ``classifier``,
``pre_classifier``... — usually new and random. They train with the prompt and are saved in the
adapter file under ``head.<module>.<tensor>`` (:data:`~softprompt.files.adapter.HEAD_PREFIX`), as
``peft`` saves them through ``modules_to_save``. Encoders and decoders share this code.

A decoder's sequence classifier pools "the last token" its own way (pad ids in the ids, argmax
tricks), which a prompt in front or a left pad can break. softprompt pools it itself, from the
attention mask (:func:`last_token`), and applies the head modules to that hidden state; at wrap
time :func:`check_last_token_head` proves on a probe row that this is what the model computes.

Examples:
    >>> import transformers as T
    >>> config = T.LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
    ...                        num_attention_heads=2, num_labels=3)
    >>> classifier = T.LlamaForSequenceClassification(config)
    >>> sorted(head_modules(classifier))
    ['score']
    >>> hidden = torch.arange(6.0).reshape(1, 3, 2)                 # (B, T, H)
    >>> last_token(hidden, torch.tensor([[0, 1, 1]]))               # left-padded: the last column
    tensor([[4., 5.]])
    >>> last_token(hidden, torch.tensor([[1, 1, 0]]))               # right-padded: the second
    tensor([[2., 3.]])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from softprompt import compat
from softprompt.families import UnsupportedModelError
from softprompt.files.adapter import HEAD_PREFIX, AdapterFileError
from softprompt.injection.positions import last_token_index

# Ids of the probe row that proves a decoder classifier's pooling: a few real tokens, no pads.
PROBE_LENGTH = 4


def head_modules(base_model: nn.Module) -> dict[str, nn.Module]:
    """The task head: the model's parameterised modules outside its backbone, in the order the model
    registers them (a bare backbone, ``AutoModel``, has none)."""
    if base_model.base_model is base_model and not any(
        isinstance(child, PreTrainedModel) for child in base_model.children()
    ):
        return {}
    backbone = compat.backbone(base_model)
    return {
        name: module
        for name, module in base_model.named_children()
        if module is not backbone and any(True for _ in module.parameters())
    }


def trainable(head: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """``head`` with its parameters trainable (the base model around it stays frozen)."""
    for module in head.values():
        module.requires_grad_(True)
    return head


def _named_state(head: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The head's state as an adapter file names it: ``head.<module>.<tensor>`` -> the module's tensor."""
    return {
        f"{HEAD_PREFIX}{name}.{key}": value
        for name, module in head.items()
        for key, value in module.state_dict().items()
    }


def head_tensors(head: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The head's weights as an adapter file names them: ``head.<module>.<tensor>`` -> a detached copy."""
    return {name: value.detach().clone() for name, value in _named_state(head).items()}


def load_head_tensors(
    head: dict[str, nn.Module], tensors: dict[str, torch.Tensor], source, model_name: str
) -> None:
    """Set ``head`` from a file's ``head.*`` tensors; head weights a file lacks stay as they are
    (``peft`` saves only ``classifier``/``score``, not e.g. DeBERTa's pooler).

    Raises :class:`~softprompt.files.errors.AdapterFileError` for a tensor this head has no place for
    or of another shape (a head trained for another number of labels).
    """
    expected = _named_state(head)
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise AdapterFileError(
            f"{source} holds task-head tensors {unknown} that this {model_name} does not have; its head is "
            f"{sorted(expected) or 'none'}"
        )
    for name, value in tensors.items():
        if value.shape != expected[name].shape:
            raise AdapterFileError(
                f"{source}: {name} has shape {tuple(value.shape)}, this model's head needs "
                f"{tuple(expected[name].shape)} (another number of labels?)"
            )
    with torch.no_grad():
        for name, value in tensors.items():
            expected[name].copy_(value)


def apply_head(head: dict[str, nn.Module], hidden: torch.Tensor) -> torch.Tensor:
    """The head modules applied in turn to hidden states (..., H) -> logits (..., C)."""
    for module in head.values():
        hidden = module(hidden.to(_dtype(module, hidden.dtype)))
    return hidden


def last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (B, H): each row's last real token by the mask, whatever the padding side or pad id."""
    last = last_token_index(attention_mask).to(hidden.device)  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def check_last_token_head(base_model: nn.Module, head: dict[str, nn.Module]) -> None:
    """Refuse a decoder sequence classifier whose logits are not its head over the last token's hidden
    state: on a probe row without pads, the model's own logits must equal ``head(backbone(ids)[:, -1])``
    to rounding. A head that pools otherwise or transforms what it reads would be given wrong numbers.
    """
    name = type(base_model).__name__
    if not head:
        raise UnsupportedModelError(f"{name} has no head module beside its backbone to classify with")
    config = base_model.config
    # A composite config (Gemma 3, Qwen3.5) keeps the pad id in its text part.
    pads = {getattr(c, "pad_token_id", None) for c in (config, config.get_text_config(decoder=True))}
    ids = torch.tensor([[i for i in range(3, 3 + PROBE_LENGTH + len(pads)) if i not in pads][:PROBE_LENGTH]])
    ids = ids.to(base_model.device)
    training = base_model.training
    base_model.eval()  # no dropout: the same numbers both ways
    try:
        with torch.no_grad():
            own = base_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()  # (1, C)
            hidden = compat.backbone(base_model)(input_ids=ids).last_hidden_state[:, -1]  # (1, H)
            ours = apply_head(head, hidden).float()
    finally:
        base_model.train(training)
    tolerance = max(1e-5, 8 * torch.finfo(base_model.dtype).eps) * max(1.0, float(own.abs().max()))
    if ours.shape != own.shape or float((ours - own).abs().max()) > tolerance:
        found = (
            f"shape {tuple(ours.shape)}" if ours.shape != own.shape else f"{(ours - own).abs().max():.2e} off"
        )
        raise UnsupportedModelError(
            f"{name}'s logits are not its head ({', '.join(head)}) over the last token's hidden state "
            f"({found} on a probe row): it pools or transforms in a way softprompt cannot follow with a "
            "prompt in front, so sequence classification is not supported on it; its causal LM is"
        )


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None = None
) -> torch.Tensor:
    """A sequence classifier's loss as ``transformers`` computes it (without setting the config's
    ``problem_type``): ``"regression"`` — MSE (one output: squeezed); ``"single_label_classification"``
    — cross-entropy over class ids; ``"multi_label_classification"`` — BCE with logits. Without a
    ``problem_type``: one output -> regression, integer labels -> single label, else multi-label."""
    outputs = logits.shape[-1]
    if problem_type is None:
        if outputs == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    labels = labels.to(logits.device)
    if problem_type == "regression":
        if outputs == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, outputs), labels.view(-1))
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    raise ValueError(
        f"problem_type must be regression, single_label_classification or multi_label_classification, "
        f"got {problem_type!r}"
    )


def _dtype(module: nn.Module, default: torch.dtype) -> torch.dtype:
    parameter = next(module.parameters(), None)
    return default if parameter is None else parameter.dtype


__all__ = [
    "apply_head",
    "check_last_token_head",
    "classification_loss",
    "head_modules",
    "head_tensors",
    "last_token",
    "load_head_tensors",
    "trainable",
]
