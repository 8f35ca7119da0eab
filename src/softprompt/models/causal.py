"""``SoftPromptModel``: a frozen causal LM plus one trainable soft prompt.

Every method enters a causal decoder as a key/value prefix in its attention layers (``self`` site):
a prefix-tuning prompt already is one, and virtual tokens (prompt tuning, P-tuning) are run once
through the frozen model to the keys/values they leave (:func:`~softprompt.injection.capture.virtual_tokens_prefix`).
On models with recurrent layers (linear attention, Mamba) virtual tokens enter as input embeddings
instead: a recurrent state must read them. A decoder that keeps no cache at all (GPT-1) takes a
prefix at placeholder positions before the input, whose key/value projections write it in every
layer (:mod:`~softprompt.injection.positional_prefix`), virtual tokens as input embeddings, and
generates by running the whole sequence every step, as it does bare.

The logits are the model's own — its head with its scaling, soft-capping or head transform — asked
for only where they are needed (``logits_to_keep``). A forward pass runs every row with its pads
after its tokens, and ``generate`` lays rows out ``[pads][prompt][tokens]``, so a row computes the
same alone or in any batch, also where the model counts distances in key columns (sliding windows,
chunked attention, MPT's ALiBi).

Examples:
    >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4))
    >>> out = model(input_ids, attention_mask=attention_mask, labels=input_ids)  # logits: (B, T, V)
    >>> out.loss.backward()                                                      # only the prompt learns
    >>> model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=3).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache
from transformers.modeling_outputs import (
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from transformers.utils import ModelOutput

from softprompt import compat
from softprompt.compat import cache_kwargs
from softprompt.families import ModelShape, UnsupportedModelError
from softprompt.injection import IGNORE_INDEX, BatchPrefix, CompiledPrompt, RowPrompts
from softprompt.injection.attention import use_grouped_attention
from softprompt.injection.caches import generation_cache, prefix_cache
from softprompt.injection.capture import virtual_tokens_prefix
from softprompt.injection.positional_prefix import positional_prefix
from softprompt.injection.positions import (
    Alignment,
    left_align,
    pads_last,
    positions_after_prefix,
    with_prefix_columns,
)
from softprompt.injection.prompts import no_prefix
from softprompt.integrations.streaming import real_text_streamer
from softprompt.methods import SoftPrompt
from softprompt.methods.base import VirtualTokens
from softprompt.models.base import PromptedModel
from softprompt.models.heads import (
    apply_head,
    check_last_token_head,
    classification_loss,
    head_modules,
    last_token,
    trainable,
)


class SoftPromptModel(PromptedModel):
    """A frozen ``transformers`` causal decoder adapted by a trainable soft prompt.

    Only ``self.prompt`` (and a classifier's head) has trainable parameters; the backbone is frozen
    and never modified. With ``prompt=None`` it runs the bare model unless a call passes per-row
    prefixes (the task bank).

    A decoder with a classification head (``LlamaForSequenceClassification``,
    ``...ForTokenClassification``) trains its new head (``score``) with the prompt and saves it in the
    adapter file, as ``peft``'s ``modules_to_save`` does. A sequence classifier reads each row's last
    real token by the attention mask, whatever the padding side or pad id; wrapping proves on a probe
    row that the model's own logits are its head over that token, or refuses the model.

    Examples:
        >>> import transformers as T
        >>> config = T.LlamaConfig(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...                        num_attention_heads=2, num_labels=3, pad_token_id=0)
        >>> classifier = T.LlamaForSequenceClassification(config)
        >>> model = softprompt.wrap(classifier, softprompt.PromptTuningConfig(num_virtual_tokens=4))
        >>> out = model(input_ids, attention_mask=attention_mask, labels=torch.tensor([2, 0]))
        >>> out.logits.shape                                   # (B, C): each row's last real token
        torch.Size([2, 3])
        >>> out.loss.backward()                                # the prompt and the new head learn
        >>> sorted(model.head), model.head["score"].weight.grad is not None
        (['score'], True)
    """

    def __init__(self, base_model: nn.Module, prompt: SoftPrompt | None, shape: ModelShape) -> None:
        backbone = compat.backbone(base_model)
        if not compat.reads_argument(backbone, "attention_mask"):
            raise UnsupportedModelError(
                f"{shape.family}'s backbone ({type(backbone).__name__}) takes no attention_mask: it builds its "
                "own mask from the token ids, so it can be shown neither a batch's pads nor a prompt's slots"
            )
        super().__init__(base_model, prompt, shape)
        if shape.head in ("sequence-classification", "token-classification"):
            self.head = head_modules(base_model)
        if shape.head == "sequence-classification":
            check_last_token_head(base_model, self.head)
        trainable(self.head)
        # Whether forward passes ask the attention to keep grouped key/value heads (injection.attention).
        self._grouped_attention = use_grouped_attention(base_model, shape)
        # The module that looks up per-layer inputs by token id (Gemma 4), or None.
        self._per_layer_embedder = _per_layer_embedder(backbone)
        # A decoder without a cache (GPT-1) takes its prefix at placeholder positions before the input.
        self._positions = (
            positional_prefix(base_model, backbone) if shape.self_prefix_route == "positions" else None
        )
        # Whether a cache must be read one token at a time (ProphetNet): no prefix before an input.
        self._one_token_after_a_cache = self._positions is None and _reads_a_cache_one_token_at_a_time(
            base_model, shape
        )
        # Where virtual tokens cannot become a key/value prefix, they enter as input embeddings.
        self._tokens_as_embeddings = (
            bool(shape.recurrent_layers)
            or self._per_layer_embedder is not None
            or self._one_token_after_a_cache
            or self._positions is not None
        )

    # -------------------------------------------------------------------------------------- prompts
    def compile_prompt(self, prompt: SoftPrompt) -> CompiledPrompt:
        """A task's prompt as the per-layer ``self`` prefix it amounts to: virtual tokens run once
        through the frozen model (they never attend to the input in a causal decoder).

        On models with recurrent layers (linear attention, Mamba) virtual tokens stay tokens: the
        recurrent state must read them, which keys/values cannot give it. So do they on models whose
        layers also read inputs looked up by token id (Gemma 4's per-layer inputs), which a backbone
        run from embeddings alone cannot compute. They then enter every forward as input embeddings
        before the row's tokens.
        """
        output = prompt()
        if not isinstance(output, VirtualTokens) and self._one_token_after_a_cache:
            raise UnsupportedModelError(
                f"{self.shape.family} reads a key/value cache only one token at a time, so a prefix cannot "
                "stand before an input of several tokens; prompt tuning and P-tuning work (their virtual "
                "tokens enter as input embeddings)"
            )
        if isinstance(output, VirtualTokens) and self._tokens_as_embeddings:
            return CompiledPrompt(tokens=output.embeddings)
        if isinstance(output, VirtualTokens):
            # A copy: some models scale the inputs_embeds they are given in place (CTRL), and a prompt's
            # embeddings may be its parameter itself.
            output = VirtualTokens(output.embeddings.clone())
        return CompiledPrompt(sites={"self": virtual_tokens_prefix(self.base_model, output)})

    def row_prompts(
        self, compiled: list[CompiledPrompt], rows: torch.Tensor, device: torch.device
    ) -> RowPrompts:
        """Per-row prompts from compiled ones: ``rows`` (B,) indexes ``compiled``, -1 for none.

        Virtual tokens that enter as embeddings (models with recurrent layers) cannot be padded with
        masked slots — a recurrent state reads every column — so such rows must all carry virtual
        tokens of one length; other mixes are refused with the reason. A classifier's head belongs to
        the one task it was trained with: it runs its own prompt only.
        """
        if self.head and bool((rows >= 0).any()) and (self.prompt is None or len(compiled) > 1):
            raise UnsupportedModelError(
                f"{type(self.base_model).__name__} carries a task head trained with its own prompt, and every row "
                "shares it: it runs its own prompt only (not a task bank's or other per-row prompts). Serve "
                "classifiers one model per task"
            )
        prompts = super().row_prompts(compiled, rows, device)
        if prompts.tokens is not None and "self" in prompts.sites and self._positions is not None:
            raise UnsupportedModelError(
                f"{self.shape.family} keeps no key/value cache, so virtual tokens (prompt tuning, P-tuning) and "
                "prefixes (prefix tuning) both enter it as positions before the input: rows of one batch "
                "must carry the one kind or the other. Batch such rows by method"
            )
        if (
            prompts.tokens is not None
            and self.shape.recurrent_layers
            and ("self" in prompts.sites or not bool(prompts.tokens_mask.all()))
        ):
            raise UnsupportedModelError(
                f"{self.shape.family} reads virtual tokens in its recurrent layers "
                f"{list(self.shape.recurrent_layers)}, so prompt-tuning and P-tuning prompts enter it as input "
                "embeddings, where a masked slot would still reach the recurrent state: rows of one batch "
                "must then all carry virtual tokens of the same length (no rows without a prompt, no "
                "prefix-tuning rows beside them). Batch such rows by prompt length"
            )
        return prompts

    def _prompts(self, row_prompts: RowPrompts | None, batch: int, device: torch.device) -> RowPrompts:
        """The rows' prompts: ``row_prompts``, or the model's own prompt in every row."""
        return self.own_prompts(batch, device) if row_prompts is None else row_prompts

    def _prefix(self, prompts: RowPrompts, batch: int, device: torch.device) -> BatchPrefix:
        """The rows' ``self`` prefix; P = 0 for none."""
        if "self" in prompts.sites:
            return prompts.sites["self"]
        return no_prefix(self.shape, batch, self.base_model.dtype, device)

    # -------------------------------------------------------------------------------------- forward
    def _run(
        self,
        module: nn.Module,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        row_prompts: RowPrompts | None = None,
        where: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[ModelOutput, Alignment]:
        """``module`` (the causal LM, or its backbone) over the caller's tokens, each row after its prompt.

        Rows are right-padded for the run (pads after the tokens) and given back in the caller's layout
        by the returned :class:`~softprompt.injection.positions.Alignment`: sliding windows and
        MPT's ALiBi count key *columns*, so a pad between a row's prompt and its tokens would move the
        prompt away from them; pads after the tokens are never attended to.
        ``where`` (B, T) bool selects the positions the causal LM computes logits for (``logits_to_keep``).
        ``cache`` replaces the read-only prefix cache (it must start with the rows' prefix).
        """
        tokens = input_ids if input_ids is not None else inputs_embeds
        batch, length = tokens.shape[:2]
        device = tokens.device
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=device)
        align = pads_last(attention_mask)
        input_ids, inputs_embeds, attention_mask, position_ids, where = (
            align.apply(t) for t in (input_ids, inputs_embeds, attention_mask, position_ids, where)
        )
        with compat.checkpointing_keeps_cache(self.base_model):
            prompts = self._prompts(row_prompts, batch, device)
            prefix = self._prefix(prompts, batch, device)
            placed = contextlib.nullcontext()
            if prompts.tokens is not None:  # virtual tokens as embeddings, before the caller's tokens
                if self._per_layer_embedder is not None:
                    kwargs["per_layer_inputs"] = self._per_layer_inputs(
                        input_ids, inputs_embeds, prompts.tokens.shape[1]
                    )
                inputs_embeds, attention_mask, position_ids, where, align = self._columns_in_front(
                    "virtual tokens as input embeddings",
                    prompts.tokens,
                    prompts.tokens_mask,
                    (input_ids, inputs_embeds, attention_mask, position_ids, where, align),
                )
                input_ids = None
            elif self._positions is not None and prefix.mask.shape[1]:
                # A decoder without a cache: the prefix's slots become placeholder positions before the
                # caller's tokens, whose key/value projections write the prefix in every layer.
                slots = prefix.mask.shape[1]
                inputs_embeds, attention_mask, position_ids, where, align = self._columns_in_front(
                    "a prefix at positions before the input",
                    self._stand_in_embeddings(batch, slots, device),
                    prefix.mask,
                    (input_ids, inputs_embeds, attention_mask, position_ids, where, align),
                )
                input_ids = None
                placed = self._positions.entered(
                    prefix.layers, torch.arange(slots, device=device).expand(batch, -1)
                )
                prefix = no_prefix(self.shape, batch, self.base_model.dtype, device)
            full_mask = with_prefix_columns(attention_mask, prefix.mask)  # checks the mask's rank
            if self.shape.takes_position_ids:
                if position_ids is None and attention_mask.dim() == 4:
                    position_ids = (
                        torch.arange(length, device=device).expand(batch, -1)
                        + prefix.lengths[:, None]
                        + self.shape.position_offset
                    )
                elif position_ids is None:
                    position_ids = self._positions_after(attention_mask, prefix.lengths)
                else:  # the caller's own positions, moved past each row's prompt
                    position_ids = position_ids + prefix.lengths[:, None]
                kwargs["position_ids"] = position_ids
            if self._grouped_attention:
                kwargs["softprompt_grouped"] = True
            if where is not None:
                kwargs["logits_to_keep"] = where
            if cache is None and prefix.mask.shape[1]:
                cache = prefix_cache(prefix.layers, self.base_model.config, self.shape.layer_indices)
            if cache is not None:
                compat.reset_module_states(self.base_model, batch, device, self.base_model.dtype)
            with placed:
                outputs = module(
                    input_ids=input_ids,
                    inputs_embeds=inputs_embeds,
                    attention_mask=full_mask,
                    use_cache=cache is not None,  # no prefix: no cache (a recurrent layer needs its own)
                    **(cache_kwargs(module, cache) if cache is not None else {}),
                    **kwargs,
                )
        return outputs, align

    def _positions_after(self, attention_mask: torch.Tensor, prefix_lengths: torch.Tensor) -> torch.Tensor:
        """(B, T) position ids of the caller's tokens after each row's prompt, in the model's numbering
        (RoBERTa-style embeddings count from ``padding_idx + 1``)."""
        return positions_after_prefix(attention_mask, prefix_lengths) + self.shape.position_offset

    def _columns_in_front(
        self,
        what: str,
        columns: torch.Tensor,
        columns_mask: torch.Tensor,
        run: tuple,
    ) -> tuple:
        """A run's (input_ids, inputs_embeds, attention_mask, position_ids, where, align) with input
        ``columns`` (B, P, E) before the caller's tokens — virtual tokens, or a prefix's stand-ins —
        whose mask is ``columns_mask`` (B, P). Returns (inputs_embeds, attention_mask, position_ids,
        where, align); the run then takes no input ids. ``what`` names what the columns carry."""
        input_ids, inputs_embeds, attention_mask, position_ids, where, align = run
        if attention_mask.dim() != 2:
            raise ValueError(
                f"{self.shape.family} takes {what}: pass a (batch, seq) attention_mask, not a 4-D one"
            )
        if inputs_embeds is None:
            inputs_embeds = self.base_model.get_input_embeddings()(input_ids)
        inputs_embeds = torch.cat([columns.to(inputs_embeds.dtype), inputs_embeds], dim=1)
        if position_ids is not None:  # the caller's positions, after the columns
            count = columns_mask.sum(-1, keepdim=True)
            position_ids = torch.cat([(columns_mask.cumsum(-1) - 1).clamp(min=0), position_ids + count], -1)
        slots = columns.shape[1]
        return (
            inputs_embeds,
            with_prefix_columns(attention_mask, columns_mask),
            position_ids,
            None if where is None else F.pad(where, (slots, 0)),
            replace(align, leading=slots),
        )

    def _stand_in_ids(self, batch: int, slots: int, device: torch.device) -> torch.Tensor:
        """(B, P) pad ids standing in a prompt's places (what a place holds is overwritten where read)."""
        return torch.full((batch, slots), self._pad_id, dtype=torch.long, device=device)

    def _stand_in_embeddings(self, batch: int, slots: int, device: torch.device) -> torch.Tensor:
        """(B, P, E) embeddings of :meth:`_stand_in_ids`."""
        return self.base_model.get_input_embeddings()(self._stand_in_ids(batch, slots, device))

    def _per_layer_inputs(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, virtual: int
    ) -> torch.Tensor:
        """Per-layer inputs (B, P + T, L, D) of ``virtual`` tokens and the caller's, computed the model's
        way: virtual tokens have no id, so they get the pad token's, as Gemma 4 gives its image tokens;
        the caller's tokens theirs (from the embeddings where no ids are given)."""
        lookup = self._per_layer_embedder.get_per_layer_inputs
        tokens = input_ids if input_ids is not None else inputs_embeds
        pads = self._stand_in_ids(tokens.shape[0], virtual, tokens.device)
        return torch.cat([lookup(pads, None), lookup(input_ids, inputs_embeds)], dim=1)

    @property
    def loss_type(self) -> str | None:
        """An LM's loss is next-token cross-entropy whatever its class is called (GPT2LMHeadModel has no
        loss type): ``Trainer`` then counts ``num_items_in_batch`` over shifted labels, as the loss
        does. A classifier's is the base model's (unshifted labels)."""
        return "ForCausalLM" if self.shape.head == "causal-lm" else super().loss_type

    @property
    def _pad_id(self) -> int:
        """The id standing in a prompt's places: the pad token's (a classifier has no generation config)."""
        generation = getattr(self.base_model, "generation_config", None)
        pad = generation.pad_token_id if generation is not None else None
        return pad if pad is not None else getattr(self.base_model.config, "pad_token_id", None) or 0

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
        outputs, align = self._run(
            compat.backbone(self.base_model),
            input_ids,
            attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            row_prompts=row_prompts,
            **kwargs,
        )
        return align.undo(outputs.last_hidden_state)

    def logits_where(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        where: torch.Tensor,
        **kwargs,
    ) -> torch.Tensor:
        """The model's own logits where ``where`` (B, T) is True: (N, V), in row-major order.

        They come out of the causal LM's own head — its scaling, soft-capping or head transform
        included — computed only at the selected positions (``logits_to_keep``), so scoring a label
        never materialises full-vocabulary logits for the rest of the sequence.

        Examples:
            >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4))
            >>> last = torch.zeros(input_ids.shape, dtype=torch.bool)
            >>> last[:, -1] = True                                     # each row's last token
            >>> model.logits_where(input_ids, attention_mask, last).shape
            torch.Size([2, 96])
        """
        where = where.to(torch.bool)
        if not compat.takes_argument(self.base_model, "logits_to_keep"):  # these heads compute every position
            return self._all_logits(input_ids, attention_mask, **kwargs)[where]
        outputs, align = self._run(self.base_model, input_ids, attention_mask, where=where, **kwargs)
        return align.undo_selected(outputs.logits, where)  # (N, V)

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
        if self.shape.head != "causal-lm":
            if logits_at != "all":
                raise ValueError(
                    f"logits_at='labels' is for language models; this one does {self.shape.head}"
                )
            if self.shape.head == "sequence-classification":
                return self._classify(input_ids, attention_mask, labels, **kwargs)
            return self._tag(input_ids, attention_mask, labels, **kwargs)
        if logits_at == "labels" and labels is None:
            raise ValueError("logits_at='labels' needs labels")
        # Position t predicts token t + 1.
        if logits_at == "labels":
            where = F.pad(labels[:, 1:] != IGNORE_INDEX, (0, 1))  # (B, T)
            logits = self.logits_where(input_ids, attention_mask, where, **kwargs)  # (N, V)
            loss = F.cross_entropy(logits.float(), labels[:, 1:][where[:, :-1]])
            return CausalLMOutputWithPast(loss=loss, logits=logits)
        logits = self._all_logits(input_ids, attention_mask, **kwargs)
        if labels is None:
            return CausalLMOutputWithPast(logits=logits)
        loss = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
        )
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def _classify(self, input_ids, attention_mask, labels, **kwargs) -> SequenceClassifierOutputWithPast:
        """A sequence classifier's logits (B, C): its head over each row's last real token, and the
        loss ``transformers`` computes for its ``problem_type`` (regression, single or multi-label)."""
        tokens = input_ids if input_ids is not None else kwargs["inputs_embeds"]
        if attention_mask is None:
            attention_mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        if attention_mask.dim() != 2:
            raise ValueError(
                "a sequence classifier reads each row's last token from a (batch, seq) attention_mask"
            )
        hidden = self.hidden_states(input_ids, attention_mask, **kwargs)  # (B, T, H), the caller's layout
        logits = apply_head(self.head, last_token(hidden, attention_mask))  # (B, H) -> (B, C)
        loss = None if labels is None else classification_loss(logits, labels, self.config.problem_type)
        return SequenceClassifierOutputWithPast(loss=loss, logits=logits)

    def _tag(self, input_ids, attention_mask, labels, **kwargs) -> TokenClassifierOutput:
        """A token classifier's logits (B, T, C) for the caller's tokens and, with ``labels`` (B, T),
        the cross-entropy of each token's own label (no shift), -100 ignored."""
        logits = self._all_logits(input_ids, attention_mask, **kwargs)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.flatten(0, 1).float(), labels.flatten().to(logits.device), ignore_index=IGNORE_INDEX
            )
        return TokenClassifierOutput(loss=loss, logits=logits)

    def _all_logits(self, input_ids, attention_mask, **kwargs) -> torch.Tensor:
        """The model's own logits at every position, in the caller's layout: (B, T, V)."""
        outputs, align = self._run(self.base_model, input_ids, attention_mask, **kwargs)
        return align.undo(outputs.logits)

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

        Each row's columns are laid out ``[pads][prompt][tokens]``: its prompt sits right before its
        tokens, as when it runs alone, also for models that count distances in columns (sliding
        windows, MPT's ALiBi) — and a sliding-window cache drops the pads first. softprompt runs the
        input but each row's last token itself (pads after the tokens, see :meth:`_run`), moves the
        pads in front, and ``generate`` continues from that cache. Returns the (left-padded) input
        rows followed by the new tokens, without virtual tokens. ``row_prompts`` gives each row its
        own prompt instead of the model's (see :meth:`row_prompts`). The prompt lives in the cache,
        so ``generate`` always runs with ``use_cache=True`` (the tokens are the same either way; a
        config saying ``use_cache=False``, as MPT's does, would otherwise drop the prompt after the
        first step).
        """
        if self.shape.head != "causal-lm":
            raise UnsupportedModelError(
                f"{type(self.base_model).__name__} is a {self.shape.head} model: it does not generate; call "
                "the model for its logits"
            )
        kwargs["use_cache"] = True
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        input_ids, attention_mask = left_align(input_ids, attention_mask)
        batch, length = input_ids.shape
        config = kwargs.get("generation_config") or self.base_model.generation_config
        # `generate` repeats each row for beams / returned sequences, but cannot repeat a cache.
        expand = max(
            kwargs.get("num_beams") or config.num_beams or 1,
            kwargs.get("num_return_sequences") or config.num_return_sequences or 1,
        )
        prompts = self._prompts(row_prompts, batch, input_ids.device)
        if self._positions is not None:
            return self._generate_at_positions(input_ids, attention_mask, prompts, expand, **kwargs)
        # A recurrent state cannot be re-laid after the prefill: rows of one layout run without pads.
        if (self.left_pads_matter or self.shape.recurrent_layers) and _has_padding(attention_mask, prompts):
            return self._generate_by_layout(input_ids, attention_mask, prompts, **kwargs)
        if prompts.tokens is not None:
            return self._generate_after_embeddings(input_ids, attention_mask, prompts, expand, **kwargs)
        prefix = self._prefix(prompts, batch, input_ids.device)
        virtual = prefix.mask.shape[1]
        # A recurrent state cannot be re-ordered, nor can a sparse-attention indexer's keys be recorded
        # beside the prefilled keys/values: generate's own layout, [prefix][pads][tokens].
        if self.shape.recurrent_layers or self.shape.indexed_layers:
            states, layout = (
                prefix.layers,
                torch.arange(virtual + length, device=input_ids.device).expand(batch, -1),
            )
        else:
            states = self.prefilled_states(
                input_ids, attention_mask, prefix
            )  # per layer (B, H, P + T - 1, D)
            layout = _pads_first(attention_mask, virtual)  # (B, P + T): [pads][prompt][tokens]
        cache = generation_cache(
            self.base_model.config,
            [(k.repeat_interleave(expand, 0), v.repeat_interleave(expand, 0)) for k, v in states],
            self.shape.layer_indices,
        )

        # `generate` skips the input ids the cache already covers: stand-ins take the prefix's places.
        stand_ins = self._stand_in_ids(batch, virtual, input_ids.device)
        if self.shape.takes_position_ids:
            positions = self._positions_after(attention_mask, prefix.lengths)
            kwargs["position_ids"] = torch.cat([torch.zeros_like(prefix.mask), positions], -1).gather(
                -1, layout
            )
        _count_stand_ins(kwargs, virtual)
        compat.reset_module_states(self.base_model, batch * expand, input_ids.device, self.base_model.dtype)
        output = self.base_model.generate(
            input_ids=torch.cat([stand_ins, input_ids], dim=-1).gather(-1, layout),
            attention_mask=with_prefix_columns(attention_mask, prefix.mask).gather(-1, layout),
            **cache_kwargs(self.base_model, cache),
            **kwargs,
        )
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        return _without_stand_ins(sequences, layout, virtual, length)

    @functools.cached_property
    def left_pads_matter(self) -> bool:
        """Whether a left pad changes the numbers of the tokens after it, whatever the mask and the
        positions say.

        BART-family decoders (BART, mBART, Marian, Pegasus, Whisper, TrOCR...) number positions by
        cache column — learned or sinusoidal positions counted from the cache length — and take no
        ``position_ids`` to say otherwise; RecurrentGemma's recurrent blocks read every column, pads
        included. A row's numbers then change with the pads ``generate`` puts in front of it. Read
        from the model: two left pads change its last logits.
        """
        return _left_pads_change_the_output(self.base_model, self.shape.takes_position_ids)

    def _generate_by_layout(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompts: RowPrompts, **kwargs
    ) -> torch.Tensor:
        """``generate`` for a model whose pads move positions (:attr:`left_pads_matter`): each group
        of rows with the same number of tokens and prompt slots is generated on its own, without pads,
        and the rows come back in the caller's layout (left-padded input, then new tokens, ended with
        pads as ``generate`` ends a row that finished early)."""
        batch, length = input_ids.shape
        tokens = attention_mask.sum(-1)  # (B,) — left-aligned: a row's last `tokens` columns
        slots = _prompt_lengths(prompts, batch, input_ids.device)  # (B,)
        groups = []
        for layout in torch.stack([tokens, slots], -1).unique(dim=0):
            rows = ((tokens == layout[0]) & (slots == layout[1])).nonzero()[:, 0]
            count = int(layout[0])
            lengths = {k: kwargs[k] - (length - count) for k in ("max_length", "min_length") if k in kwargs}
            out = self.generate(
                input_ids[rows, length - count :],
                attention_mask[rows, length - count :],
                row_prompts=prompts.select(rows),
                **{**kwargs, **lengths},
            )  # (N * returned, count + new): the rows' tokens, then the new ones
            groups.append((rows, out[:, count:]))
        returned = out.shape[0] // rows.shape[0]  # sequences per input row
        new = max(out.shape[1] for _, out in groups)
        sequences = input_ids.new_full((batch * returned, length + new), self._pad_id)
        sequences[:, :length] = input_ids.repeat_interleave(returned, 0)
        for rows, out in groups:
            expanded = (rows[:, None] * returned + torch.arange(returned, device=rows.device)).flatten()
            sequences[expanded, length : length + out.shape[1]] = out
        return sequences

    def _generate_after_embeddings(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompts: RowPrompts,
        expand: int,
        **kwargs,
    ) -> torch.Tensor:
        """``generate`` after virtual tokens that enter as input embeddings (models whose recurrent layers
        must read them), each row ``[pads][virtual tokens][tokens]``.

        softprompt runs all but the last column itself — a recurrent state cannot be re-ordered
        afterwards, so the run keeps generation's layout — and ``generate`` continues from that cache
        with stand-in ids for the virtual tokens (some models' ``generate`` takes no embeddings). The run
        already repeats each row ``expand`` times, as ``generate`` will (a recurrent state cannot be
        repeated afterwards).
        """
        batch, length = input_ids.shape
        virtual = prompts.tokens.shape[1]
        pads_first = _pads_first(attention_mask, virtual)  # (B, P + T)
        embeds = self.base_model.get_input_embeddings()(input_ids)  # (B, T, E)
        embeds = torch.cat([prompts.tokens.to(embeds.dtype), embeds], dim=1)
        embeds = embeds.gather(1, pads_first[..., None].expand_as(embeds))  # (B, P + T, E)
        mask = with_prefix_columns(attention_mask, prompts.tokens_mask).gather(-1, pads_first)
        stand_ins = self._stand_in_ids(batch, virtual, input_ids.device)
        ids = torch.cat([stand_ins, input_ids], dim=-1).gather(-1, pads_first)
        if self.shape.takes_position_ids:
            kwargs["position_ids"] = self._positions_after(mask, torch.zeros_like(mask[:, 0]))

        cache = generation_cache(self.base_model.config, [])
        backbone = compat.backbone(self.base_model)
        positions = {}
        if self.shape.takes_position_ids:
            positions["position_ids"] = kwargs["position_ids"][:, :-1].repeat_interleave(expand, 0)
        if (
            self._per_layer_embedder is not None
        ):  # the stand-ins are pads: the virtual tokens' per-layer inputs
            per_layer = self._per_layer_embedder.get_per_layer_inputs(ids[:, :-1], None)
            positions["per_layer_inputs"] = per_layer.repeat_interleave(expand, 0)
        compat.reset_module_states(self.base_model, batch * expand, input_ids.device, self.base_model.dtype)
        backbone(
            inputs_embeds=embeds[:, :-1].repeat_interleave(expand, 0),
            attention_mask=mask[:, :-1].repeat_interleave(expand, 0),
            use_cache=True,
            **cache_kwargs(backbone, cache),
            **positions,
        )
        _count_stand_ins(kwargs, virtual)
        output = self.base_model.generate(
            input_ids=ids, attention_mask=mask, **cache_kwargs(self.base_model, cache), **kwargs
        )
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        return _without_stand_ins(sequences, pads_first, virtual, length)

    def _generate_at_positions(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompts: RowPrompts,
        expand: int,
        **kwargs,
    ) -> torch.Tensor:
        """``generate`` on a decoder that keeps no cache (GPT-1), each row ``[pads][prompt][tokens]``.

        Every step runs the whole sequence, as such a model generates: stand-in ids take the prompt's
        places, and in every step the prompt overwrites their embeddings (virtual tokens) or what
        their key/value projections give (a prefix). Beams and samples repeat each row ``expand`` times.
        """
        batch, length = input_ids.shape
        device = input_ids.device
        if prompts.tokens is not None:
            slots_mask = prompts.tokens_mask
        else:
            prefix = self._prefix(prompts, batch, device)
            slots_mask = prefix.mask
        slots = slots_mask.shape[1]
        pads_first = _pads_first(attention_mask, slots)  # (B, P + T)
        placed_at = pads_first.argsort(-1)[:, :slots].repeat_interleave(expand, 0)  # (B * expand, P)
        stand_ins = self._stand_in_ids(batch, slots, device)
        with contextlib.ExitStack() as placed:
            if prompts.tokens is not None:
                tokens = prompts.tokens.repeat_interleave(expand, 0)
                placed.enter_context(_embeddings_written(self.base_model, tokens, placed_at))
            elif slots:
                states = [
                    (k.repeat_interleave(expand, 0), v.repeat_interleave(expand, 0)) for k, v in prefix.layers
                ]
                placed.enter_context(self._positions.entered(states, placed_at))
            kwargs.pop("use_cache", None)  # it has none
            _count_stand_ins(kwargs, slots)
            output = self.base_model.generate(
                input_ids=torch.cat([stand_ins, input_ids], dim=-1).gather(-1, pads_first),
                attention_mask=with_prefix_columns(attention_mask, slots_mask).gather(-1, pads_first),
                **kwargs,
            )
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        return _without_stand_ins(sequences, pads_first, slots, length)

    def prefilled_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: BatchPrefix
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer the keys/values of each row's prompt and its left-padded tokens but the last, laid
        out ``[pads][prompt][tokens]``: each (B, H, P + T - 1, D).

        What ``generate`` prefills, public so that a server's decoding batch
        (:mod:`softprompt.serve.batch`) starts from exactly the same state.
        """
        if input_ids.shape[1] == 1:
            return prefix.layers
        # Grows by the tokens; no window drops a column yet (plain layers, not the model's sliding ones).
        cache = generation_cache(None, prefix.layers, self.shape.layer_indices)
        _, align = self._run(
            compat.backbone(self.base_model),
            input_ids[:, :-1],
            attention_mask[:, :-1],
            row_prompts=RowPrompts(sites={"self": prefix}),
            cache=cache,
        )
        # The run's columns were [prompt][tokens][pads]; move every row's pads in front.
        order = _pads_first(align.apply(attention_mask[:, :-1]), prefix.mask.shape[1])
        layers = [cache.layers[i] for i in self.shape.layer_indices]
        return [(_gather_slots(layer.keys, order), _gather_slots(layer.values, order)) for layer in layers]


def _reads_a_cache_one_token_at_a_time(model: nn.Module, shape: ModelShape) -> bool:
    """Whether ``model`` refuses two tokens after a one-slot prefix (ProphetNet's decoder asserts that
    a cache is only read by one-token inputs)."""
    if not shape.layers:
        return False
    options = dict(dtype=model.dtype, device=model.device)
    states = [
        (
            torch.zeros(1, s.num_kv_heads, 1, s.head_dim, **options),
            torch.zeros(1, s.num_kv_heads, 1, s.value_head_dim, **options),
        )
        for s in shape.layers
    ]
    cache = prefix_cache(states, model.config, shape.layer_indices)
    backbone = compat.backbone(model)
    ids = torch.full((1, 2), 3, device=model.device)
    mask = torch.ones(1, 3, dtype=torch.long, device=model.device)
    try:
        with torch.no_grad(), _evaluating(model):
            backbone(input_ids=ids, attention_mask=mask, use_cache=True, **cache_kwargs(backbone, cache))
    except AssertionError:  # ProphetNet's own check
        return True
    except Exception:  # noqa: BLE001 — another failure is not this probe's to judge: the model's run will say
        return False
    return False


def _per_layer_embedder(backbone: nn.Module) -> nn.Module | None:
    """The module of ``backbone`` that looks up per-layer inputs by token id (Gemma 4's
    ``get_per_layer_inputs``), where the backbone takes ``per_layer_inputs``; else None."""
    if not compat.takes_argument(backbone, "per_layer_inputs"):
        return None
    embedder = next((m for m in backbone.modules() if hasattr(m, "get_per_layer_inputs")), None)
    # Gemma 3n computes them from embeddings alone (zeros for virtual tokens): a key/value prefix works there.
    if embedder is None or "inputs_embeds" not in inspect.signature(embedder.get_per_layer_inputs).parameters:
        return None
    return embedder


def _left_pads_change_the_output(model: nn.Module, takes_position_ids: bool = True) -> bool:
    """Whether two pads before a two-token input change ``model``'s last logits by more than rounding
    (1 % of their scale); the tokens are given positions 0 and 1 where the model takes ``position_ids``."""
    pad = model.generation_config.pad_token_id or 0
    ids = torch.tensor([[pad, pad, 3, 4]], device=model.device)
    mask = torch.tensor([[0, 0, 1, 1]], device=model.device)
    positions = torch.tensor([[0, 0, 0, 1]], device=model.device)

    def last_logits(columns: slice) -> torch.Tensor:
        given = {"position_ids": positions[:, columns]} if takes_position_ids else {}
        return (
            model(input_ids=ids[:, columns], attention_mask=mask[:, columns], **given).logits[0, -1].float()
        )

    with torch.no_grad(), _evaluating(model):
        padded, alone = last_logits(slice(None)), last_logits(slice(2, None))
    # Relative to the logits' scale: moved positions change them by tens of percent (BART, Whisper,
    # Marian: 0.5-1.1), kernels that differ with a mask by rounding only (SmolLM2 fp32: 8e-6).
    return bool((padded - alone).abs().max() > 1e-2 * alone.abs().max())


@contextmanager
def _embeddings_written(model: nn.Module, embeddings: torch.Tensor, index: torch.Tensor) -> Iterator[None]:
    """Within the block, ``model``'s input embeddings of each row hold ``embeddings`` (N, P, E) at
    sequence positions ``index`` (N, P)."""

    def write(module, args, output):
        where = index.to(output.device)[..., None].expand(-1, -1, output.shape[-1])
        return output.scatter(1, where, embeddings.to(output.device, output.dtype))

    handle = model.get_input_embeddings().register_forward_hook(write)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode within the block: a probe draws no dropout (no random numbers, the same
    numbers in every run) and skips training-only paths such as gradient checkpointing."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def _prompt_lengths(prompts: RowPrompts, batch: int, device: torch.device) -> torch.Tensor:
    """Each row's number of real prompt slots, virtual tokens or ``self`` prefix: (B,)."""
    if prompts.tokens is not None:
        return prompts.tokens_mask.sum(-1)
    if "self" in prompts.sites:
        return prompts.sites["self"].lengths
    return torch.zeros(batch, dtype=torch.long, device=device)


def _has_padding(attention_mask: torch.Tensor, prompts: RowPrompts) -> bool:
    """Whether a pad column sits in any row: in the caller's mask or among the prompt slots."""
    masks = [attention_mask, prompts.tokens_mask, *(p.mask for p in prompts.sites.values())]
    return any(not bool(m.all()) for m in masks if m is not None)


def _pads_first(attention_mask: torch.Tensor, virtual: int) -> torch.Tensor:
    """(B, P + T) column order that moves each row's pads in front of its ``virtual`` prompt slots."""
    slots = torch.ones(attention_mask.shape[0], virtual, dtype=torch.long, device=attention_mask.device)
    content = with_prefix_columns(attention_mask, slots)
    return torch.argsort(content, dim=-1, stable=True)


def _count_stand_ins(kwargs: dict, slots: int) -> None:
    """``generate`` options for rows with ``slots`` stand-in ids in front: ``max_length`` counts them
    and a streamer skips them (they are no text)."""
    if "max_length" in kwargs:
        kwargs["max_length"] += slots
    if "streamer" in kwargs:
        kwargs["streamer"] = real_text_streamer(kwargs["streamer"], slots)


def _without_stand_ins(
    sequences: torch.Tensor, pads_first: torch.Tensor, virtual: int, length: int
) -> torch.Tensor:
    """``generate``'s rows ``[pads][stand-ins][tokens][new]`` (each input row repeated for beams and
    samples) as the caller's left-padded rows followed by the new tokens."""
    undo = pads_first.argsort(-1).repeat_interleave(sequences.shape[0] // pads_first.shape[0], 0)
    given = sequences[:, : virtual + length].gather(-1, undo)  # [stand-ins][left-padded input]
    return torch.cat([given[:, virtual:], sequences[:, virtual + length :]], dim=-1)


def _gather_slots(states: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """(B, H, S, D) with each row's slots in ``order`` (B, S)."""
    return states.gather(2, order[:, None, :, None].expand_as(states))
