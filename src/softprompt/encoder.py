"""``EncoderSoftPromptModel``: a frozen encoder (BERT, RoBERTa, DeBERTa-v2, DistilBERT...) plus a
soft prompt, for sequence classification, token classification or features (P-tuning v2's setting).

How each method enters an encoder:

* **prompt tuning / P-tuning** — virtual tokens (P, E) are prepended to the input embeddings. In an
  encoder they attend to the input and the input to them, so (unlike in a causal decoder) they
  cannot be compiled into a prefix once: they run with every batch. The attention mask grows by
  ``P``, token types are 0 for them, and the caller's tokens take the positions after them.
* **prefix tuning = deep prompts** (P-tuning v2) — a key/value prefix in every encoder layer,
  through :class:`softprompt.cache.AttentionPrefix`. Where the model takes position ids the
  caller's tokens take the positions after the prefix (as in P-tuning v2 and ``peft``); prefix
  slots carry no position of their own. DeBERTa-v2 cannot take one (see ``families.py``).

Rows are right-aligned first (pads after the tokens), so each row's prompt, tokens and positions
are what they would be if it ran alone, whatever the padding side. Token outputs (hidden states,
token-classification logits, their labels) cover the caller's tokens only, in the caller's layout:
token labels need no shifting for the virtual tokens. Sequence heads read the first position the
encoder sees, as in ``peft`` and P-tuning v2: the first virtual token with prompt tuning and
P-tuning, ``[CLS]`` with deep prompts.

``pooling="mean"`` (sequence classification) reads the mean of the caller's tokens' last hidden
states through a new linear head instead of the model's own first-position head: sentence
encoders trained for mean pooling (all-MiniLM-L6-v2 and other sentence-transformers) carry little
of the sentence in ``[CLS]`` (benchmarks/RESULTS.md: deep prompts 71.4 -> 78.0 on SST-2).

A classifier's head (the modules outside the backbone: ``classifier``, ``score``,
``pre_classifier``, DeBERTa's ``pooler``...) is usually new, so it trains with the prompt, is saved in
the adapter file as part of the task, and counts in the model's size. The backbone stays frozen.

Example:
    >>> base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)  # doctest: +SKIP
    >>> model = softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=16, init="zero"))
    >>> model(input_ids, attention_mask=mask, labels=labels).loss.backward()   # prompt + head learn
    >>> model.save("sst2.safetensors")                                          # prompt + head
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from softprompt.cache import AttentionPrefix, attention_modules, use_prefix_attention
from softprompt.families import ModelShape, Site, UnsupportedModelError
from softprompt.injection import BatchPrefix, batch_prefix
from softprompt.io import AdapterFileError
from softprompt.methods import PrefixStates, SoftPrompt, VirtualTokens
from softprompt.model import IGNORE_INDEX, PromptedModel

HEAD_PREFIX = "head."
# Tasks an encoder model can do with a soft prompt, and what the model class must be for each.
ENCODER_TASKS = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "features": "AutoModel (hidden states only)",
}


@dataclass
class BatchPrompt:
    """A batch's prompts at each place a prompt enters a model with an encoder.

    ``tokens``: virtual tokens before each row's input, (B, P, E), with ``tokens_mask`` (B, P);
    ``sites``: key/value prefixes per attention site (``encoder``, ``decoder``, ``cross``).
    """

    tokens: torch.Tensor | None = None
    tokens_mask: torch.Tensor | None = None
    sites: dict[Site, BatchPrefix] = field(default_factory=dict)

    def repeat_interleave(self, repeats: int) -> BatchPrompt:
        """Each row ``repeats`` times in a row, as ``generate`` expands rows for beams and samples."""
        if self.tokens is None:
            tokens = mask = None
        else:
            tokens = self.tokens.repeat_interleave(repeats, 0)
            mask = self.tokens_mask.repeat_interleave(repeats, 0)
        return BatchPrompt(tokens, mask, {s: p.repeat_interleave(repeats) for s, p in self.sites.items()})


@dataclass
class PromptParts:
    """One prompt's output where it enters a model with an encoder.

    ``tokens``: virtual tokens (P, E) before the encoder's input; ``sites``: per-site prefixes.
    """

    tokens: torch.Tensor | None = None
    sites: dict[Site, PrefixStates] = field(default_factory=dict)


def prompt_parts(prompt: SoftPrompt, shape: ModelShape) -> PromptParts:
    """Run ``prompt`` and cut its output into the places it enters (gradients flow)."""
    out = prompt()
    if isinstance(out, VirtualTokens):
        return PromptParts(tokens=out.embeddings)
    layout = shape.prefix_layout(getattr(prompt.config, "prefix_sites", "all"))
    return PromptParts(
        sites={site: PrefixStates(layers) for site, layers in layout.by_site(out.layers).items()}
    )


def batch_prompt(
    parts: Sequence[PromptParts], rows: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> BatchPrompt:
    """Each row's prompt: ``rows`` (B,) indexes ``parts``, -1 for none.

    Shorter virtual-token blocks and prefixes are left-padded with masked slots, so each row's real
    virtual tokens sit right before its input and no row sees another row's prompt.
    """
    batch = rows.shape[0]
    tokens = mask = None
    with_tokens = [i for i, part in enumerate(parts) if part.tokens is not None]
    if with_tokens and len(parts) == 1 and bool((rows == 0).all()):
        # One shared prompt: broadcast without copying.
        tokens = parts[0].tokens.to(device, dtype)[None].expand(batch, -1, -1)
        mask = torch.ones(batch, tokens.shape[1], dtype=torch.long, device=device)
    elif with_tokens:
        longest = max(parts[i].tokens.shape[0] for i in with_tokens)
        width = parts[with_tokens[0]].tokens.shape[-1]
        tokens = torch.zeros(batch, longest, width, dtype=dtype, device=device)
        mask = torch.zeros(batch, longest, dtype=torch.long, device=device)
        for row, index in enumerate(rows.tolist()):
            if index >= 0 and parts[index].tokens is not None:
                own = parts[index].tokens
                tokens[row, longest - own.shape[0] :] = own.to(device, dtype)
                mask[row, longest - own.shape[0] :] = 1
    sites = {}
    for site in dict.fromkeys(site for part in parts for site in part.sites):
        holders = [i for i, part in enumerate(parts) if site in part.sites]
        site_rows = torch.tensor([holders.index(i) if i in holders else -1 for i in rows.tolist()])
        if bool((site_rows >= 0).any()):
            sites[site] = batch_prefix([parts[i].sites[site] for i in holders], site_rows, dtype, device)
    return BatchPrompt(tokens, mask, sites)


def prompt_for_batch(
    prompt: SoftPrompt | None, shape: ModelShape, batch: int, dtype: torch.dtype, device: torch.device
) -> BatchPrompt:
    """One prompt's output, broadcast to ``batch`` rows (recomputed, so gradients flow)."""
    if prompt is None:
        return BatchPrompt()
    return batch_prompt([prompt_parts(prompt, shape)], torch.zeros(batch, dtype=torch.long), dtype, device)


@dataclass
class EncoderBatch:
    """The caller's batch as the encoder sees it: rows right-aligned, virtual tokens first.

    ``kwargs`` go to the encoder; ``order`` (B, T) is the caller position of each aligned token.
    """

    kwargs: dict
    order: torch.Tensor
    virtual: int

    def tokens(self, states: torch.Tensor) -> torch.Tensor:
        """Encoder outputs (B, P + T, ...) -> the caller's tokens (B, T, ...), in the caller's layout."""
        aligned = states[:, self.virtual :]
        back = torch.argsort(self.order, dim=-1)
        index = back.view(*back.shape, *([1] * (aligned.dim() - 2))).expand(-1, -1, *aligned.shape[2:])
        return aligned.gather(1, index)

    def labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Token labels (B, T) in the caller's layout -> (B, P + T) aligned, ignored at virtual tokens."""
        aligned = labels.gather(1, self.order.to(labels.device))
        ignored = torch.full(
            (labels.shape[0], self.virtual), IGNORE_INDEX, dtype=labels.dtype, device=labels.device
        )
        return torch.cat([ignored, aligned], dim=-1)


def encoder_batch(
    embed: nn.Module,
    shape: ModelShape,
    prompt: BatchPrompt,
    modules: list[nn.Module] | None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
) -> EncoderBatch:
    """Arrange a batch and its prompt for an encoder (see the module docstring).

    ``embed`` is the model's input embedding; ``modules`` the encoder's attention modules, one per
    layer, which an ``encoder`` prefix enters (see :func:`softprompt.cache.attention_modules`).
    """
    tokens = input_ids if input_ids is not None else inputs_embeds
    batch, length = tokens.shape[:2]
    device = tokens.device
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=device)
    mask = attention_mask.long()
    order = torch.argsort(1 - mask, dim=-1, stable=True)  # tokens first, pads last, tokens keep order
    mask = mask.gather(1, order)
    if inputs_embeds is None:
        inputs_embeds = embed(input_ids.gather(1, order))
    else:
        inputs_embeds = inputs_embeds.gather(1, order[..., None].expand(-1, -1, inputs_embeds.shape[-1]))
    kwargs: dict = {}
    if token_type_ids is not None:
        token_type_ids = token_type_ids.gather(1, order)
    virtual = 0
    if prompt.tokens is not None:
        virtual = prompt.tokens.shape[1]
        inputs_embeds = torch.cat([prompt.tokens.to(inputs_embeds.dtype), inputs_embeds], dim=1)
        mask = torch.cat([prompt.tokens_mask, mask], dim=-1)
        if token_type_ids is not None:
            token_type_ids = torch.cat([torch.zeros_like(prompt.tokens_mask), token_type_ids], dim=-1)
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids
    prefix_lengths = torch.zeros(batch, dtype=torch.long, device=device)
    if "encoder" in prompt.sites:
        prefix = prompt.sites["encoder"]
        kwargs["softprompt_prefix"] = AttentionPrefix(
            dict(zip(modules, prefix.layers, strict=True)), prefix.mask
        )
        prefix_lengths = prefix.lengths
    if shape.takes_position_ids:
        # Real slots count from the end of the row's prompt, skipping pads (RoBERTa counts from its offset).
        positions = mask.cumsum(-1) - 1 + prefix_lengths[:, None] + shape.position_offset
        kwargs["position_ids"] = positions.masked_fill(mask == 0, max(shape.position_offset - 1, 0))
    kwargs |= {"inputs_embeds": inputs_embeds, "attention_mask": mask}
    return EncoderBatch(kwargs, order, virtual)


def head_modules(base_model: nn.Module) -> dict[str, nn.Module]:
    """The task head: the model's parameterised modules outside its backbone (``model.base_model``)."""
    backbone = base_model.base_model
    if backbone is base_model:
        return {}
    return {
        name: module
        for name, module in base_model.named_children()
        if module is not backbone and any(True for _ in module.parameters())
    }


Pooling = Literal["model", "mean"]


class EncoderSoftPromptModel(PromptedModel):
    """A frozen ``transformers`` encoder adapted by a trainable soft prompt (and its task head).

    Args:
        pooling: how a sequence classifier reads the sequence: ``"model"`` — the model's own head
            (first position: ``[CLS]`` or the first virtual token); ``"mean"`` — a new linear head
            (``mean_classifier``, saved in the adapter file) over the mean of the caller's tokens.
    """

    def __init__(
        self, base_model: nn.Module, prompt: SoftPrompt | None, shape: ModelShape, pooling: Pooling = "model"
    ) -> None:
        if shape.task not in ENCODER_TASKS:
            supported = "; ".join(f"{task} ({cls})" for task, cls in ENCODER_TASKS.items())
            raise UnsupportedModelError(
                f"softprompt cannot adapt a {type(base_model).__name__}: on {shape.family} encoders it supports "
                f"{supported}"
            )
        if pooling not in ("model", "mean"):
            raise ValueError(f"pooling must be 'model' or 'mean', got {pooling!r}")
        if pooling == "mean" and shape.task != "sequence-classification":
            raise UnsupportedModelError(
                f"pooling='mean' is for sequence classification; this {type(base_model).__name__} does {shape.task}"
            )
        super().__init__(base_model, prompt, shape)
        self.pooling = pooling
        if pooling == "mean":
            self.mean_classifier = _new_linear_head(base_model, shape.hidden_size)
            self.head: dict[str, nn.Module] = {"mean_classifier": self.mean_classifier}
        else:
            self.head = head_modules(base_model) if shape.task != "features" else {}
        for module in self.head.values():
            module.requires_grad_(True)
        self._attention: list[nn.Module] | None = None

    def model_options(self) -> dict[str, Any]:
        return {"pooling": self.pooling} if self.pooling != "model" else {}

    # -------------------------------------------------------------------------------------- prompts
    def batch_prefix(self, batch_size: int, device: torch.device) -> BatchPrompt:
        """The prompt for ``batch_size`` rows: virtual tokens, or per-layer encoder prefixes."""
        return prompt_for_batch(self.prompt, self.shape, batch_size, self.base_model.dtype, device)

    def _batch(self, input_ids, attention_mask, inputs_embeds, token_type_ids, prefix) -> EncoderBatch:
        tokens = input_ids if input_ids is not None else inputs_embeds
        if prefix is None:
            prefix = self.batch_prefix(tokens.shape[0], tokens.device)
        if "encoder" in prefix.sites and self._attention is None:
            use_prefix_attention(self.base_model)
            self._attention = attention_modules(self.base_model.base_model)
        return encoder_batch(
            self.base_model.get_input_embeddings(),
            self.shape,
            prefix,
            self._attention,
            input_ids,
            attention_mask,
            inputs_embeds,
            token_type_ids,
        )

    # -------------------------------------------------------------------------------------- forward
    def hidden_states(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        prefix: BatchPrompt | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Last hidden states of the caller's tokens (not the virtual ones): (B, T, H)."""
        batch = self._batch(input_ids, attention_mask, inputs_embeds, token_type_ids, prefix)
        outputs = self.base_model.base_model(**batch.kwargs, **kwargs)
        return batch.tokens(outputs.last_hidden_state)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        prefix: BatchPrompt | None = None,
        **kwargs,
    ):
        """The base model's own output (and loss, with ``labels``) for the caller's batch.

        Args:
            input_ids: (B, T) token ids (or ``inputs_embeds`` (B, T, E)); ``attention_mask`` (B, T), any
                padding side; ``token_type_ids`` (B, T) for sentence pairs.
            labels: sequence classification: (B,) class ids (or float targets, as ``transformers``);
                token classification: (B, T), one per caller token, -100 ignored.

        Returns the model's output with token-level tensors for the caller's tokens only:
        ``logits`` (B, C) or (B, T, C); a features model returns ``last_hidden_state`` (B, T, H).
        """
        if self.pooling == "mean":
            return self._mean_pooled(
                input_ids, attention_mask, token_type_ids, labels, inputs_embeds, prefix, **kwargs
            )
        token_level = self.shape.task == "token-classification"
        batch = self._batch(input_ids, attention_mask, inputs_embeds, token_type_ids, prefix)
        if labels is not None:
            labels = self._check_labels(labels, input_ids if input_ids is not None else inputs_embeds)
            kwargs["labels"] = batch.labels(labels) if token_level else labels
        outputs = self.base_model(**batch.kwargs, **kwargs)
        if token_level:
            outputs.logits = batch.tokens(outputs.logits)
        if self.shape.task == "features":
            outputs.last_hidden_state = batch.tokens(outputs.last_hidden_state)
        return outputs

    def _mean_pooled(
        self, input_ids, attention_mask, token_type_ids, labels, inputs_embeds, prefix, **kwargs
    ) -> SequenceClassifierOutput:
        """Logits (B, C) of the new linear head over the mean of each row's real tokens (B, T, H) -> (B, H)."""
        tokens = input_ids if input_ids is not None else inputs_embeds
        hidden = self.hidden_states(
            input_ids, attention_mask, token_type_ids, inputs_embeds, prefix, **kwargs
        )
        if attention_mask is None:
            attention_mask = torch.ones(tokens.shape[:2], device=hidden.device)
        pooled = mean_pool(hidden, attention_mask)
        logits = self.mean_classifier(pooled.to(self.mean_classifier.weight.dtype))
        loss = None
        if labels is not None:
            labels = self._check_labels(labels, tokens)
            loss = _classification_loss(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def export_peft(self, directory):
        if self.pooling != "model":
            raise ValueError(
                "peft has no mean-pooling head: only pooling='model' adapters export to the peft format"
            )
        return super().export_peft(directory)

    def _check_labels(self, labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if self.shape.task == "features":
            raise UnsupportedModelError(
                f"{type(self.base_model).__name__} has no head to train with labels; wrap an "
                "AutoModelForSequenceClassification or AutoModelForTokenClassification model"
            )
        per_token = labels.dim() == 2 and labels.shape == tokens.shape[:2] and not labels.is_floating_point()
        if self.shape.task == "token-classification" and labels.shape != tokens.shape[:2]:
            raise ValueError(
                f"token classification needs labels (B, T) = {tuple(tokens.shape[:2])}, got {tuple(labels.shape)}"
            )
        if self.shape.task == "sequence-classification" and per_token and labels.shape[1] > 1:
            raise UnsupportedModelError(
                f"{type(self.base_model).__name__} classifies whole sequences (labels (B,)); for one label per token "
                "wrap an AutoModelForTokenClassification model"
            )
        return labels

    # ---------------------------------------------------------------------------------------- files
    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The folded prompt plus the task head's weights (``head.<name>``)."""
        tensors = super().adapter_tensors()
        for name, module in self.head.items():
            for key, value in module.state_dict().items():
                tensors[f"{HEAD_PREFIX}{name}.{key}"] = value.detach().clone()
        return tensors

    def load_head(self, tensors: dict[str, torch.Tensor], source) -> None:
        """Set the task head from a file's ``head.*`` tensors; head weights a file lacks stay as they are
        (``peft`` saves only ``classifier``/``score``, not e.g. DeBERTa's pooler)."""
        expected = {
            f"{HEAD_PREFIX}{name}.{key}": value
            for name, module in self.head.items()
            for key, value in module.state_dict().items()
        }
        unknown = sorted(set(tensors) - set(expected))
        if unknown:
            raise AdapterFileError(
                f"{source} holds task-head tensors {unknown} that this {type(self.base_model).__name__} does not "
                f"have; its head is {sorted(expected) or 'none'}"
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


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (B, H): the mean over each row's real tokens (the sentence-transformers embedding)."""
    weights = attention_mask.to(hidden.dtype)[..., None]  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def _new_linear_head(base_model: nn.Module, width: int) -> nn.Linear:
    """A (width -> num_labels) classifier initialised as ``transformers`` initialises its heads."""
    config = base_model.config
    head = nn.Linear(width, config.num_labels, dtype=base_model.dtype, device=base_model.device)
    with torch.no_grad():
        head.weight.normal_(0.0, getattr(config, "initializer_range", 0.02))
        head.bias.zero_()
    return head


def _classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """As ``transformers`` picks it: one output -> regression (MSE), class ids -> cross-entropy,
    float targets over several outputs -> multi-label (BCE with logits)."""
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    if not labels.is_floating_point():
        return F.cross_entropy(logits, labels)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


__all__ = [
    "BatchPrompt",
    "EncoderBatch",
    "EncoderSoftPromptModel",
    "encoder_batch",
    "mean_pool",
    "prompt_for_batch",
]
