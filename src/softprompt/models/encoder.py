"""``EncoderSoftPromptModel``: a frozen encoder (BERT, RoBERTa, DeBERTa-v2, DistilBERT...) plus a
soft prompt, for sequence classification, token classification or features (P-tuning v2's setting).

How each method enters an encoder (arranged by :mod:`softprompt.injection.encoder_input`):

* **prompt tuning / P-tuning** — virtual tokens (P, E) are prepended to the input embeddings; they
  run with every batch, since in an encoder they attend to the input. A backbone that takes no
  ``inputs_embeds`` (ESM-C) is handed placeholder ids, and its own embedding module gives the
  arranged embeddings for them. A model that gives
  its first position global attention by default (Longformer's classifiers) gives it to the first
  position the encoder sees, the first virtual token (which the sequence head reads).
* **prefix tuning = deep prompts** (P-tuning v2) — a key/value prefix in every encoder layer,
  through :class:`softprompt.injection.attention.AttentionPrefix`. Where the model takes position
  ids the caller's tokens take the positions after the prefix (as in P-tuning v2 and ``peft``).
  One attention module that runs as several layers (ALBERT's shared layer group) takes one layer
  of prefix, read in each of its runs. Encoders whose attention calls no replaceable function
  (DeBERTa-v2, MPNet, XLM, Longformer...) take it through positions instead
  (:mod:`softprompt.injection.positional_prefix`): placeholders after ``[CLS]`` whose key/value
  projections the prefix overwrites in every layer (the key and value channels of a fused
  query-key-value projection: DeBERTa's), proven read by the probe in ``families.py``; where
  neither route is proven (MRA on a CPU) prefix tuning is refused with the reason.

Each row's prompt, tokens and positions are what they would be if it ran alone, whatever the
padding side. Token outputs (hidden states,
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

Examples:
    >>> model = softprompt.wrap(encoder_model, softprompt.PrefixTuningConfig(num_virtual_tokens=16, init="zero"))
    >>> model(input_ids, attention_mask=attention_mask, labels=torch.tensor([1, 0])).loss.backward()
    >>> sorted(model.head)                                   # the new head trains with the prompt
    ['classifier']
    >>> path = model.save(tmp_dir / "sst2.safetensors")     # prompt + head
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from softprompt import compat
from softprompt.families import ModelShape, UnsupportedModelError
from softprompt.injection import RowPrompts
from softprompt.injection.capture import prefix_attention_modules
from softprompt.injection.encoder_input import EncoderBatch, arrange
from softprompt.methods import SoftPrompt
from softprompt.models.base import PromptedModel
from softprompt.models.heads import classification_loss, head_modules, trainable

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
        if pooling not in ("model", "mean"):
            raise ValueError(f"pooling must be 'model' or 'mean', got {pooling!r}")
        if pooling == "mean" and shape.head != "sequence-classification":
            raise UnsupportedModelError(
                f"pooling='mean' is for sequence classification; this {type(base_model).__name__} does {shape.head}"
            )
        super().__init__(base_model, prompt, shape)
        self.pooling = pooling
        if pooling == "mean":
            self.mean_classifier = _new_linear_head(base_model, shape.hidden_size)
            self.head: dict[str, nn.Module] = {"mean_classifier": self.mean_classifier}
        else:
            self.head = head_modules(base_model) if shape.head != "features" else {}
        trainable(self.head)
        self._attention: list[nn.Module] | None = None

    def model_options(self) -> dict[str, Any]:
        return {"pooling": self.pooling} if self.pooling != "model" else {}

    # -------------------------------------------------------------------------------------- prompts
    def _batch(self, input_ids, attention_mask, inputs_embeds, token_type_ids, row_prompts) -> EncoderBatch:
        tokens = input_ids if input_ids is not None else inputs_embeds
        if row_prompts is None:
            row_prompts = self.own_prompts(tokens.shape[0], tokens.device)
        attention_route = self.shape.encoder_prefix_route == "attention"
        if "encoder" in row_prompts.sites and attention_route and self._attention is None:
            self._attention = prefix_attention_modules(self.base_model, self.base_model.base_model)
        return arrange(
            self.base_model.get_input_embeddings(),
            self.shape,
            row_prompts,
            self._attention,
            input_ids,
            attention_mask,
            inputs_embeds,
            token_type_ids,
            takes_embeddings=compat.takes_argument(self.base_model.base_model, "inputs_embeds"),
        )

    # -------------------------------------------------------------------------------------- forward
    def hidden_states(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        row_prompts: RowPrompts | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Last hidden states of the caller's tokens (not the virtual ones): (B, T, H)."""
        batch = self._batch(input_ids, attention_mask, inputs_embeds, token_type_ids, row_prompts)
        with batch.entering(self.base_model, self.base_model.base_model):
            outputs = self.base_model.base_model(**batch.kwargs, **kwargs)
        return batch.tokens(outputs.last_hidden_state)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        row_prompts: RowPrompts | None = None,
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
                input_ids, attention_mask, token_type_ids, labels, inputs_embeds, row_prompts, **kwargs
            )
        token_level = self.shape.head == "token-classification"
        batch = self._batch(input_ids, attention_mask, inputs_embeds, token_type_ids, row_prompts)
        if labels is not None:
            labels = self._check_labels(labels, input_ids if input_ids is not None else inputs_embeds)
            kwargs["labels"] = batch.labels(labels) if token_level else labels
        if compat.takes_argument(self.base_model, "global_attention_mask"):
            kwargs["global_attention_mask"] = batch.token_mask(kwargs.get("global_attention_mask"))
        with batch.entering(self.base_model, self.base_model.base_model):
            outputs = self.base_model(**batch.kwargs, **kwargs)
        if token_level:
            outputs.logits = batch.tokens(outputs.logits)
        if self.shape.head == "features":
            outputs.last_hidden_state = batch.tokens(outputs.last_hidden_state)
        return outputs

    def generate(
        self, input_ids: torch.Tensor, attention_mask=None, row_prompts=None, **kwargs
    ) -> torch.Tensor:
        """Encoders do not generate text: they classify, tag tokens or give features."""
        raise UnsupportedModelError(
            f"{type(self.base_model).__name__} is an encoder: it does not generate; call the model for "
            f"its {self.shape.head} output"
        )

    def _mean_pooled(
        self, input_ids, attention_mask, token_type_ids, labels, inputs_embeds, row_prompts, **kwargs
    ) -> SequenceClassifierOutput:
        """Logits (B, C) of the new linear head over the mean of each row's real tokens (B, T, H) -> (B, H)."""
        tokens = input_ids if input_ids is not None else inputs_embeds
        hidden = self.hidden_states(
            input_ids, attention_mask, token_type_ids, inputs_embeds, row_prompts, **kwargs
        )
        if attention_mask is None:
            attention_mask = torch.ones(tokens.shape[:2], device=hidden.device)
        pooled = mean_pool(hidden, attention_mask)
        logits = self.mean_classifier(pooled.to(self.mean_classifier.weight.dtype))
        loss = None
        if labels is not None:
            labels = self._check_labels(labels, tokens)
            loss = classification_loss(logits, labels, self.config.problem_type)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def export_peft(self, directory):
        if self.pooling != "model":
            raise ValueError(
                "peft has no mean-pooling head: only pooling='model' adapters export to the peft format"
            )
        return super().export_peft(directory)

    def _check_labels(self, labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if self.shape.head == "features":
            raise UnsupportedModelError(
                f"{type(self.base_model).__name__} has no head to train with labels; wrap an "
                "AutoModelForSequenceClassification or AutoModelForTokenClassification model"
            )
        per_token = labels.dim() == 2 and labels.shape == tokens.shape[:2] and not labels.is_floating_point()
        if self.shape.head == "token-classification" and labels.shape != tokens.shape[:2]:
            raise ValueError(
                f"token classification needs labels (B, T) = {tuple(tokens.shape[:2])}, got {tuple(labels.shape)}"
            )
        if self.shape.head == "sequence-classification" and per_token and labels.shape[1] > 1:
            raise UnsupportedModelError(
                f"{type(self.base_model).__name__} classifies whole sequences (labels (B,)); for one label per token "
                "wrap an AutoModelForTokenClassification model"
            )
        return labels


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


__all__ = ["EncoderSoftPromptModel", "mean_pool"]
