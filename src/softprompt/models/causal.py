"""``SoftPromptModel``: a frozen causal LM plus one trainable soft prompt.

Every method enters a causal decoder as a key/value prefix in every layer (``self`` site): a
prefix-tuning prompt already is one, and virtual tokens (prompt tuning, P-tuning) are run once
through the frozen model to the keys/values they leave (:func:`~softprompt.injection.capture.virtual_tokens_prefix`).

Examples:
    >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4))
    >>> out = model(input_ids, attention_mask=attention_mask, labels=input_ids)  # logits: (B, T, V)
    >>> out.loss.backward()                                                      # only the prompt learns
    >>> model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=3).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from softprompt.compat import cache_kwargs
from softprompt.families import ModelShape
from softprompt.injection import IGNORE_INDEX, BatchPrefix, CompiledPrompt, RowPrompts
from softprompt.injection.attention import use_grouped_attention
from softprompt.injection.caches import generation_cache, prefix_cache
from softprompt.injection.capture import virtual_tokens_prefix
from softprompt.injection.positions import left_align, positions_after_prefix, with_prefix_columns
from softprompt.injection.prompts import no_prefix
from softprompt.methods import SoftPrompt
from softprompt.models.base import PromptedModel


class SoftPromptModel(PromptedModel):
    """A frozen ``transformers`` causal LM adapted by a trainable soft prompt.

    Only ``self.prompt`` has trainable parameters; the base model is frozen and never modified.
    With ``prompt=None`` it runs the bare model unless a call passes per-row prefixes (the task bank).
    """

    def __init__(self, base_model: nn.Module, prompt: SoftPrompt | None, shape: ModelShape) -> None:
        super().__init__(base_model, prompt, shape)
        # Whether forward passes ask the attention to keep grouped key/value heads (injection.attention).
        self._grouped_attention = use_grouped_attention(base_model, shape)

    # -------------------------------------------------------------------------------------- prompts
    def compile_prompt(self, prompt: SoftPrompt) -> CompiledPrompt:
        """A task's prompt as the per-layer ``self`` prefix it amounts to: virtual tokens run once
        through the frozen model (they never attend to the input in a causal decoder)."""
        return CompiledPrompt(sites={"self": virtual_tokens_prefix(self.base_model, prompt())})

    def _prefix(self, row_prompts: RowPrompts | None, batch: int, device: torch.device) -> BatchPrefix:
        """The rows' ``self`` prefix (the model's own prompt without ``row_prompts``); P = 0 for none."""
        if row_prompts is None:
            row_prompts = self.own_prompts(batch, device)
        if "self" in row_prompts.sites:
            return row_prompts.sites["self"]
        return no_prefix(self.shape, batch, self.base_model.dtype, device)

    # -------------------------------------------------------------------------------------- forward
    def hidden_states(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        row_prompts: RowPrompts | None = None,
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
        prefix = self._prefix(row_prompts, batch, device)
        full_mask = with_prefix_columns(attention_mask, prefix.mask)  # checks the mask's rank
        if self.shape.takes_position_ids:
            if position_ids is None and attention_mask.dim() == 4:
                position_ids = torch.arange(length, device=device).expand(batch, -1) + prefix.lengths[:, None]
            elif position_ids is None:
                position_ids = positions_after_prefix(attention_mask, prefix.lengths)
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
        row_prompts: RowPrompts | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """``transformers`` ``generate`` (greedy, sampling, beam search...) with the prompt in the cache.

        The prompt's prefix enters the key/value cache once, before the first token. Rows are
        left-aligned first, so right-padded batches generate as if each row ran alone. Returns the
        (left-padded) input rows followed by the new tokens, without virtual tokens. ``row_prompts``
        gives each row its own prompt instead of the model's (see :meth:`row_prompts`).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        input_ids, attention_mask = left_align(input_ids, attention_mask)
        batch = input_ids.shape[0]
        config = kwargs.get("generation_config") or self.base_model.generation_config
        # `generate` repeats each row for beams / returned sequences, but cannot repeat a cache.
        expand = max(
            kwargs.get("num_beams") or config.num_beams or 1,
            kwargs.get("num_return_sequences") or config.num_return_sequences or 1,
        )
        prefix = self._prefix(row_prompts, batch, input_ids.device)
        cache = generation_cache(self.base_model.config, prefix.repeat_interleave(expand).layers)

        # `generate` skips the input ids the cache already covers: stand-ins take the prefix's places.
        virtual = prefix.mask.shape[1]
        pad = self.base_model.generation_config.pad_token_id or 0
        stand_ins = torch.full((batch, virtual), pad, dtype=input_ids.dtype, device=input_ids.device)
        full_mask = with_prefix_columns(attention_mask, prefix.mask)
        if self.shape.takes_position_ids:
            kwargs["position_ids"] = torch.cat(
                [
                    torch.zeros_like(prefix.mask),
                    positions_after_prefix(attention_mask, prefix.lengths),
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
