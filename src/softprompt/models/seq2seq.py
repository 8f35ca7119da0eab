"""``Seq2SeqSoftPromptModel``: a frozen encoder-decoder (T5, mT5, BART, mBART) plus a soft prompt.

How each method enters an encoder-decoder:

* **prompt tuning / P-tuning** (Lester et al.'s T5 setting) — virtual tokens are prepended to the
  encoder's input (see :mod:`softprompt.injection.encoder_input`); the decoder's cross-attention
  sees their encoded states too.
* **prefix tuning** (Li & Liang's BART setting) — a prefix in every attention of the model, each
  site with its own numbers: encoder self-attention (through
  :class:`softprompt.injection.attention.AttentionPrefix`, or, where the encoder's attention is
  computed inline — FSMT, LED, MVP, LongT5, BigBird-Pegasus — through placeholder positions whose
  key/value projections it overwrites, :mod:`softprompt.injection.positional_prefix`; the decoder's
  cross-attention does not read the placeholders), decoder self-attention and decoder
  cross-attention (through an ``EncoderDecoderCache``, see
  :func:`softprompt.injection.caches.encoder_decoder_prefix_cache`).
  ``PrefixTuningConfig(prefix_sites="decoder")`` fills the decoder's self-attention only, as
  ``peft`` does. Decoder positions start after the decoder prefix (as after ``P`` real tokens);
  encoder prefix slots carry no position (T5 gives them no relative bias).

Examples:
    >>> model = softprompt.wrap(t5_model, softprompt.PrefixTuningConfig(num_virtual_tokens=10))
    >>> model(input_ids, attention_mask=attention_mask, labels=input_ids).loss.backward()
    >>> model.generate(input_ids, attention_mask=attention_mask, num_beams=2, max_new_tokens=4).shape
    torch.Size([2, 5])
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import Seq2SeqLMOutput
from transformers.utils import ModelOutput

from softprompt import compat
from softprompt.compat import cache_kwargs
from softprompt.families import ModelShape, UnsupportedModelError
from softprompt.injection import IGNORE_INDEX, CompiledPrompt, RowPrompts
from softprompt.injection.caches import encoder_decoder_generation_cache, encoder_decoder_prefix_cache
from softprompt.injection.capture import prefix_attention_modules
from softprompt.injection.encoder_input import arrange
from softprompt.integrations.streaming import real_text_streamer
from softprompt.methods import SoftPrompt
from softprompt.models.base import PromptedModel


class Seq2SeqSoftPromptModel(PromptedModel):
    """A frozen ``transformers`` encoder-decoder LM adapted by a trainable soft prompt."""

    def __init__(self, base_model: nn.Module, prompt: SoftPrompt | None, shape: ModelShape) -> None:
        super().__init__(base_model, prompt, shape)
        self._attention: list[nn.Module] | None = None

    # -------------------------------------------------------------------------------------- prompts
    def row_prompts(
        self, compiled: list[CompiledPrompt], rows: torch.Tensor, device: torch.device
    ) -> RowPrompts:
        """Per-row prompts from compiled ones: ``rows`` (B,) indexes ``compiled``, -1 for none."""
        if self.shape.index_positions:
            # Virtual tokens and decoder prefixes shift the positions of what follows them.
            lengths = {
                (0, 0)
                if i < 0
                else (
                    0 if compiled[i].tokens is None else compiled[i].tokens.shape[0],
                    compiled[i].sites["decoder"].length if "decoder" in compiled[i].sites else 0,
                )
                for i in rows.tolist()
            }
            if len(lengths) > 1:
                raise UnsupportedModelError(
                    f"{self.shape.family} numbers positions by index and cannot take them from the mask, so rows "
                    f"whose prompts differ in length (virtual tokens, decoder prefix: {sorted(lengths)}) would "
                    "shift each other: batch together only tasks of equal lengths"
                )
        return super().row_prompts(compiled, rows, device)

    def encode(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        row_prompts: RowPrompts | None = None,
    ) -> tuple[ModelOutput, torch.Tensor, RowPrompts]:
        """Run the encoder with the prompts: ``(its output, mask (B, P + T), row prompts)``.

        The output is the encoder's own (MoE encoders such as Switch Transformers' carry router
        probabilities the decoder's loss reads); its ``last_hidden_state`` (B, P + T, H) includes the
        virtual tokens' states (cross-attention reads them), in the encoder's row order
        (right-aligned), which cross-attention does not depend on. An encoder prefix through positions
        adds its placeholders' states, which the mask hides from cross-attention.
        """
        tokens = input_ids if input_ids is not None else inputs_embeds
        if row_prompts is None:
            row_prompts = self.own_prompts(tokens.shape[0], tokens.device)
        encoder = self.base_model.get_encoder()
        attention_route = self.shape.encoder_prefix_route == "attention"
        if "encoder" in row_prompts.sites and attention_route and self._attention is None:
            self._attention = prefix_attention_modules(self.base_model, encoder)
        batch = arrange(
            self.base_model.get_input_embeddings(),
            self.shape,
            row_prompts,
            self._attention,
            input_ids,
            attention_mask,
            inputs_embeds,
        )
        kwargs = {}
        if batch.prefix is not None and compat.takes_argument(encoder, "global_attention_mask"):
            # LED: the placeholders global, so tokens beyond their window read the prefix too
            kwargs["global_attention_mask"] = batch.token_mask(torch.zeros_like(batch.token_index))
        with batch.entering(self.base_model, encoder):
            encoded = encoder(**batch.kwargs, **kwargs)
        return encoded, batch.memory_mask(), row_prompts

    @staticmethod
    def _cross_mask(prefix: RowPrompts, encoder_mask: torch.Tensor) -> torch.Tensor:
        """What cross-attention may read: the cross prefix, then the encoder's states (B, P_c + P + T)."""
        if "cross" not in prefix.sites:
            return encoder_mask
        return torch.cat([prefix.sites["cross"].mask, encoder_mask], dim=-1)

    @staticmethod
    def _decoder_mask(prefix: RowPrompts, mask: torch.Tensor | None, batch: int, length: int, device):
        """The decoder's self-attention mask: its prefix, then its tokens (B, P_d + T_dec)."""
        if "decoder" not in prefix.sites:
            return mask
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.long, device=device)
        return torch.cat([prefix.sites["decoder"].mask, mask.long()], dim=-1)

    def _decoder_inputs_from(self, labels: torch.Tensor) -> torch.Tensor:
        """The decoder's input for ``labels`` (B, T): the model's own shift where it has one, else the
        labels shifted right after ``decoder_start_token_id``, ignored places padded (M2M-100)."""
        if hasattr(self.base_model, "prepare_decoder_input_ids_from_labels"):
            return self.base_model.prepare_decoder_input_ids_from_labels(labels=labels)
        config = self.base_model.config
        start = torch.full_like(labels[:, :1], config.decoder_start_token_id)
        shifted = torch.cat([start, labels[:, :-1]], dim=-1)
        return shifted.masked_fill(shifted == IGNORE_INDEX, config.pad_token_id)

    # -------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        row_prompts: RowPrompts | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        """Decoder logits (B, T_dec, V) and, with ``labels``, the model's own loss.

        Args:
            input_ids: (B, T) encoder input (or ``inputs_embeds``); ``attention_mask`` (B, T), any padding.
            decoder_input_ids: (B, T_dec); when omitted, made from ``labels`` as the model does
                (shifted right after the decoder start token).
            labels: (B, T_dec) target ids, -100 ignored.
        """
        encoder_outputs, encoder_mask, prefix = self.encode(
            input_ids, attention_mask, inputs_embeds, row_prompts
        )
        encoded = encoder_outputs.last_hidden_state
        batch = encoded.shape[0]
        if decoder_input_ids is None and labels is not None:
            decoder_input_ids = self._decoder_inputs_from(labels)
        cache = None
        if "decoder" in prefix.sites or "cross" in prefix.sites:
            cache = encoder_decoder_prefix_cache(
                prefix.states("decoder"), prefix.states("cross"), len(self.shape.decoder_layers)
            )
            decoder_attention_mask = self._decoder_mask(
                prefix, decoder_attention_mask, batch, decoder_input_ids.shape[1], encoded.device
            )
        outputs = self.base_model(
            encoder_outputs=encoder_outputs,
            attention_mask=self._cross_mask(prefix, encoder_mask),
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            **cache_kwargs(self.base_model, cache),
            labels=labels,
            # No growing cache of the model's own: only the pure prefix cache may be replayed by
            # gradient checkpointing (see softprompt.cache).
            use_cache=False,
            **kwargs,
        )
        return Seq2SeqLMOutput(loss=outputs.loss, logits=outputs.logits)

    # ----------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        row_prompts: RowPrompts | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """``transformers`` ``generate`` (greedy, sampling, beam search...) with the prompt in place.

        The encoder runs once with the prompt; decoder prefixes enter the cache once, before the first
        token. Returns the decoder's sequences (start token first), as ``generate`` does. Decoder
        prefixes live in the cache, so ``generate`` always runs with ``use_cache=True``.
        """
        kwargs["use_cache"] = True
        encoder_outputs, encoder_mask, prefix = self.encode(input_ids, attention_mask, None, row_prompts)
        encoded = encoder_outputs.last_hidden_state
        batch = encoded.shape[0]
        config = kwargs.get("generation_config") or self.base_model.generation_config
        # `generate` repeats each row for beams / returned sequences, but cannot repeat a cache.
        expand = max(
            kwargs.get("num_beams") or config.num_beams or 1,
            kwargs.get("num_return_sequences") or config.num_return_sequences or 1,
        )
        virtual = 0
        # Our own cache even without decoder prefixes: it grows one layer at a time, where the one
        # `generate` builds from the config miscounts decoders deeper than their encoder (T5 v1.1 style).
        repeated = prefix.repeat_interleave(expand)
        kwargs |= cache_kwargs(
            self.base_model,
            encoder_decoder_generation_cache(repeated.states("decoder"), repeated.states("cross")),
        )
        if "decoder" in prefix.sites:
            # `generate` skips the decoder ids the cache already covers: start tokens take the prefix's
            # places (the first id must be the start token, or `generate` prepends one).
            virtual = prefix.sites["decoder"].mask.shape[1]
            start = config.decoder_start_token_id
            if start is None:
                start = self.base_model.config.decoder_start_token_id
            kwargs["decoder_input_ids"] = torch.full(
                (batch, virtual + 1), start, dtype=torch.long, device=encoded.device
            )
            kwargs["decoder_attention_mask"] = self._decoder_mask(prefix, None, batch, 1, encoded.device)
            if "max_length" in kwargs:
                kwargs["max_length"] += virtual
            if "streamer" in kwargs:  # the start tokens in the prefix's places are no text
                kwargs["streamer"] = real_text_streamer(kwargs["streamer"], virtual)
        output = self.base_model.generate(
            encoder_outputs=encoder_outputs,
            attention_mask=self._cross_mask(prefix, encoder_mask),
            **kwargs,
        )
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        return sequences[:, virtual:]


__all__ = ["Seq2SeqSoftPromptModel"]
