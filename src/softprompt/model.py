"""``SoftPromptModel``: a frozen causal LM plus one trainable soft prompt.

Example:
    >>> import softprompt
    >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=20))
    >>> out = model(input_ids, attention_mask=mask, labels=input_ids)   # logits: (B, T, V)
    >>> out.loss.backward()                                            # only the prompt gets gradients
    >>> model.generate(input_ids, attention_mask=mask, max_new_tokens=20)
    >>> model.save("sentiment.safetensors")                            # a few KiB
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from softprompt import injection
from softprompt.cache import (
    allow_checkpointing_with_cache,
    generation_cache,
    prefix_cache,
    use_grouped_attention,
)
from softprompt.compat import cache_kwargs
from softprompt.families import ModelShape
from softprompt.io import write_adapter
from softprompt.methods import PrefixStates, SoftPrompt

IGNORE_INDEX = -100


def parameter_versions(module: nn.Module) -> tuple[int, ...]:
    """Version counters of ``module``'s parameters: they change with every in-place update (optimiser steps)."""
    return tuple(p._version for p in module.parameters())


class PromptedModel(nn.Module):
    """A frozen ``transformers`` model plus one trainable soft prompt: what every model shape shares.

    One subclass per kind of model (``ModelShape.kind``) says how the prompt joins a batch:
    :class:`SoftPromptModel` (causal LMs), :class:`softprompt.seq2seq.Seq2SeqSoftPromptModel` and
    :class:`softprompt.encoder.EncoderSoftPromptModel`.
    """

    def __init__(self, base_model: nn.Module, prompt: SoftPrompt | None, shape: ModelShape) -> None:
        super().__init__()
        self.base_model = base_model.requires_grad_(False)
        self.prompt = prompt
        self.shape = shape

    # ----------------------------------------------------------------------------------------- info
    @property
    def config(self):
        """The prompt's config (the user's choices)."""
        return self.prompt.config

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def gradient_checkpointing_enable(self) -> None:
        """Recompute the frozen layers' activations in backward; works with every method."""
        self.base_model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
        allow_checkpointing_with_cache(self.base_model)

    def model_options(self) -> dict[str, Any]:
        """Keyword arguments (beyond the prompt) that rebuild this model class on load, e.g. pooling."""
        return {}

    # ---------------------------------------------------------------------------------------- files
    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """What an adapter file holds: the folded prompt (classifiers add their task head)."""
        return self.prompt.folded()

    def save(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write the folded prompt (optionally as fp16/bf16) and its record to one safetensors file."""
        tensors = {name: t.to(dtype) if dtype else t for name, t in self.adapter_tensors().items()}
        record = {
            "method": self.config.method,
            "config": asdict(self.config),
            "base_model": {"name_or_path": self.shape.name_or_path, **self.shape.fingerprint()},
            "dtype": str(next(iter(tensors.values())).dtype).removeprefix("torch."),
        }
        options = self.model_options()
        if options:
            record["model_options"] = options
        return write_adapter(path, tensors, record)

    def export_peft(self, directory: str | os.PathLike) -> Path:
        """Write the prompt as a ``peft`` adapter folder that ``PeftModel.from_pretrained`` loads."""
        from softprompt.peft_format import export_peft

        return export_peft(self, directory)


class SoftPromptModel(PromptedModel):
    """A frozen ``transformers`` causal LM adapted by a trainable soft prompt.

    Only ``self.prompt`` has trainable parameters; the base model is frozen and never modified.
    With ``prompt=None`` it runs the bare model unless a call passes per-row prefixes (the task bank).
    """

    def __init__(self, base_model: nn.Module, prompt: SoftPrompt | None, shape: ModelShape) -> None:
        super().__init__(base_model, prompt, shape)
        # (parameter versions, prefix) of the last compile without gradients
        self._served: tuple[tuple[int, ...], PrefixStates] | None = None
        # Whether forward passes ask the attention to keep grouped key/value heads (cache.py).
        self._grouped_attention = use_grouped_attention(base_model, shape)

    # -------------------------------------------------------------------------------------- prompts
    def compile_prompt(self, prompt: SoftPrompt) -> PrefixStates:
        """A task's prompt as the per-layer prefix it amounts to (what a task bank keeps per task)."""
        return injection.compile_prompt(self.base_model, prompt())

    def rows_prompt(
        self, compiled: list[PrefixStates], rows: torch.Tensor, device: torch.device
    ) -> injection.BatchPrefix:
        """Per-row prefixes from compiled prompts: ``rows`` (B,) indexes ``compiled``, -1 for none."""
        if not compiled:
            return injection.no_prefix(self.shape, rows.shape[0], self.base_model.dtype, device)
        return injection.batch_prefix(compiled, rows, self.base_model.dtype, device)

    def batch_prefix(self, batch_size: int, device: torch.device) -> injection.BatchPrefix:
        """The prompt's per-layer prefix for ``batch_size`` rows.

        Recomputed while gradients are on, so they flow into the prompt; without gradients (serving)
        it is compiled once and reused until the prompt's parameters change.
        """
        if self.prompt is None:
            return injection.no_prefix(self.shape, batch_size, self.base_model.dtype, device)
        if torch.is_grad_enabled():
            prefix = self.compile_prompt(self.prompt)
        else:
            versions = parameter_versions(self.prompt)
            if self._served is None or self._served[0] != versions:
                self._served = (versions, self.compile_prompt(self.prompt))
            prefix = self._served[1]
        rows = torch.zeros(batch_size, dtype=torch.long)
        return injection.batch_prefix([prefix], rows, self.base_model.dtype, device)

    # -------------------------------------------------------------------------------------- forward
    def hidden_states(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        prefix: injection.BatchPrefix | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Last hidden states of the caller's tokens (not the virtual ones): (B, T, H).

        ``attention_mask`` is a (B, T) padding mask, or a 4-D (B, 1, T, T) mask of the caller's own
        attention pattern (bool, or additive float); with a 4-D mask, pass ``position_ids`` unless
        the rows are plain left-to-right sequences without pads.
        """
        tokens = input_ids if input_ids is not None else inputs_embeds
        batch, length = tokens.shape[:2]
        device = tokens.device
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=device)
        if prefix is None:
            prefix = self.batch_prefix(batch, device)
        full_mask = injection.with_prefix_columns(attention_mask, prefix.mask)  # checks the mask's rank
        if self.shape.takes_position_ids:
            if position_ids is None and attention_mask.dim() == 4:
                position_ids = torch.arange(length, device=device).expand(batch, -1) + prefix.lengths[:, None]
            elif position_ids is None:
                position_ids = injection.positions_after_prefix(attention_mask, prefix.lengths)
            else:  # the caller's own positions, moved past each row's prompt
                position_ids = position_ids + prefix.lengths[:, None]
            kwargs["position_ids"] = position_ids
        if self._grouped_attention:
            kwargs["softprompt_grouped"] = True
        outputs = self.base_model.base_model(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=full_mask,
            use_cache=True,
            **cache_kwargs(self.base_model.base_model, prefix_cache(prefix.layers)),
            **kwargs,
        )
        return outputs.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Project hidden states (..., H) to vocabulary logits (..., V) with the frozen output head."""
        # One (N, H) @ (H, V) product. A sliced (B, k, H) view (``hidden[:, -2:-1]``) cannot be folded
        # into one matrix, so ``linear`` would run a batched matmul that reads the (V, H) head once per
        # row: 3x slower forward + backward on CPU. ``reshape`` copies such a view into (B * k, H).
        flat = self.base_model.get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1]))
        logits = flat.view(*hidden.shape[:-1], flat.shape[-1])  # (..., V)
        if self.shape.logit_scale is not None:
            logits = logits * self.shape.logit_scale
        if self.shape.logit_softcap is not None:
            cap = self.shape.logit_softcap
            logits = torch.tanh(logits / cap) * cap
        return logits

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        logits_at: str = "all",
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits of the caller's tokens and, with ``labels``, the next-token loss.

        Args:
            input_ids: (B, T) token ids (or pass ``inputs_embeds`` (B, T, E)).
            attention_mask: (B, T), 1 for tokens, 0 for pads; left or right padding.
            labels: (B, T) as in ``transformers``: ``labels[:, t]`` is predicted at ``t - 1``; -100 ignored.
            logits_at: ``"all"`` returns logits (B, T, V); ``"labels"`` computes logits only where a label
                is set, returned flat as (N, V) in row-major order of those positions, so training never
                materialises full-vocabulary logits for unlabelled positions.
        """
        if logits_at not in ("all", "labels"):
            raise ValueError(f"logits_at must be 'all' or 'labels', got {logits_at!r}")
        if logits_at == "labels" and labels is None:
            raise ValueError("logits_at='labels' needs labels")
        hidden = self.hidden_states(input_ids, attention_mask, **kwargs)
        if labels is None:
            return CausalLMOutputWithPast(logits=self.logits(hidden))
        # Position t predicts token t + 1.
        targets = labels[:, 1:]
        if logits_at == "labels":
            where = targets != IGNORE_INDEX  # (B, T - 1)
            logits = self.logits(hidden[:, :-1][where])  # (N, V)
            loss = F.cross_entropy(logits.float(), targets[where])
            return CausalLMOutputWithPast(loss=loss, logits=logits)
        logits = self.logits(hidden)
        loss = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX
        )
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    # ----------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prefix: injection.BatchPrefix | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """``transformers`` ``generate`` (greedy, sampling, beam search...) with the prompt in the cache.

        The prompt's prefix enters the key/value cache once, before the first token. Rows are
        left-aligned first, so right-padded batches generate as if each row ran alone. Returns the
        (left-padded) input rows followed by the new tokens, without virtual tokens. ``prefix``
        overrides the model's own prompt with per-row prefixes (see :func:`injection.batch_prefix`).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        input_ids, attention_mask = injection.left_align(input_ids, attention_mask)
        batch = input_ids.shape[0]
        config = kwargs.get("generation_config") or self.base_model.generation_config
        # `generate` repeats each row for beams / returned sequences, but cannot repeat a cache.
        expand = max(
            kwargs.get("num_beams") or config.num_beams or 1,
            kwargs.get("num_return_sequences") or config.num_return_sequences or 1,
        )
        if prefix is None:
            prefix = self.batch_prefix(batch, input_ids.device)
        cache = generation_cache(self.base_model.config, prefix.repeat_interleave(expand).layers)

        # `generate` skips the input ids the cache already covers: stand-ins take the prefix's places.
        virtual = prefix.mask.shape[1]
        pad = self.base_model.generation_config.pad_token_id or 0
        stand_ins = torch.full((batch, virtual), pad, dtype=input_ids.dtype, device=input_ids.device)
        full_mask = injection.with_prefix_columns(attention_mask, prefix.mask)
        if self.shape.takes_position_ids:
            kwargs["position_ids"] = torch.cat(
                [
                    torch.zeros_like(prefix.mask),
                    injection.positions_after_prefix(attention_mask, prefix.lengths),
                ],
                -1,
            )
        if "max_length" in kwargs:
            kwargs["max_length"] += virtual
        output = self.base_model.generate(
            input_ids=torch.cat([stand_ins, input_ids], dim=-1),
            attention_mask=full_mask,
            **cache_kwargs(self.base_model, cache),
            **kwargs,
        )
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        return sequences[:, virtual:]
