"""How a batch and its prompts enter an encoder: rows right-aligned, virtual tokens first, prefixes named.

In an encoder, virtual tokens attend to the input and the input to them, so (unlike in a causal
decoder) they cannot be compiled into a prefix once: they are prepended to every row's input
embeddings. The attention mask grows by ``P``, token types are 0 for them, and the caller's tokens
take the positions after them. An ``encoder`` prefix enters each layer's attention module through
:class:`~softprompt.injection.attention.AttentionPrefix`; the caller's tokens take the positions
after it (prefix slots carry no position of their own). Where the model's attention is computed
inline (``ModelShape.encoder_prefix_route == "positions"``) the prefix takes ``P`` placeholder
positions right after the first position the encoder sees — zero embeddings, token type 0,
positions ``0 .. P - 1``, the row's prefix mask — whose keys and values
:class:`~softprompt.injection.positional_prefix.PositionalPrefix` overwrites; the caller's tokens
keep the positions they have with the attention route, and the first position (``[CLS]``, which
sequence heads read) stays first.

Rows are right-aligned first (pads after the tokens), so each row's prompt, tokens and positions
are what they would be if it ran alone, whatever the padding side. :class:`EncoderBatch` maps the
encoder's outputs and token labels back to the caller's layout.

Examples:
    >>> embed = torch.nn.Embedding(10, 4)
    >>> prompts = RowPrompts(torch.zeros(1, 2, 4), torch.ones(1, 2, dtype=torch.long))   # 2 virtual tokens
    >>> from softprompt.families import model_shape
    >>> batch = arrange(embed, model_shape(encoder_model), prompts, None, torch.tensor([[5, 6, 7]]))
    >>> batch.kwargs["inputs_embeds"].shape, batch.kwargs["attention_mask"].tolist()
    (torch.Size([1, 5, 4]), [[1, 1, 1, 1, 1]])
    >>> import dataclasses                                    # a 2-slot prefix through positions
    >>> prefix = BatchPrefix([(torch.zeros(1, 4, 2, 8), torch.zeros(1, 4, 2, 8))], torch.tensor([[0, 1]]))
    >>> shape = dataclasses.replace(model_shape(encoder_model), encoder_prefix_route="positions")
    >>> batch = arrange(embed, shape, RowPrompts(sites={"encoder": prefix}), None, torch.tensor([[5, 6, 7]]))
    >>> batch.kwargs["attention_mask"].tolist(), batch.kwargs["position_ids"].tolist()
    ([[1, 1, 1, 1, 0]], [[1, 0, 2, 3, 0]])
    >>> batch.prefix_index.tolist(), batch.token_index.tolist()    # the masked slot goes last
    ([[4, 1]], [[0, 2, 3]])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from softprompt.compat import token_embeddings
from softprompt.families import ModelShape
from softprompt.injection.attention import AttentionPrefix
from softprompt.injection.positional_prefix import positional_prefix, with_placeholders
from softprompt.injection.positions import IGNORE_INDEX
from softprompt.injection.prompts import BatchPrefix, RowPrompts


@dataclass
class EncoderBatch:
    """The caller's batch as the encoder sees it: rows right-aligned, virtual tokens first.

    ``kwargs`` go to the encoder; ``token_index`` (B, T): where each caller token (in the caller's
    layout) stands in the encoder's sequence; ``virtual``: the virtual tokens' count. On the positional
    route ``prefix`` is the encoder prefix and ``prefix_index`` (B, P) where each of its slots stands.
    """

    kwargs: dict
    token_index: torch.Tensor
    virtual: int
    prefix: BatchPrefix | None = None
    prefix_index: torch.Tensor | None = None
    # For a model that takes no inputs_embeds (ESM-C): (its embedding module, the embeddings (B, L, E)
    # it gives in place of the placeholder ids the model is handed).
    embedded: tuple[nn.Module, torch.Tensor] | None = None

    @contextmanager
    def entering(self, model: nn.Module, stack: nn.Module) -> Iterator[None]:
        """The block the encoder runs in: ``model``'s encoder ``stack`` writes a positional prefix into its
        key/value projections (:meth:`PositionalPrefix.entered`), and a model that takes no
        ``inputs_embeds`` gets the arranged embeddings from its own embedding module. Nothing otherwise."""
        with ExitStack() as stack_of_hooks:
            if self.embedded is not None:
                embed, embeddings = self.embedded
                stack_of_hooks.callback(embed.register_forward_hook(_giving(embeddings)).remove)
            if self.prefix is not None:
                positions = positional_prefix(model, stack)
                stack_of_hooks.enter_context(positions.entered(self.prefix.layers, self.prefix_index))
            yield

    def memory_mask(self) -> torch.Tensor:
        """What a decoder's cross-attention may read of the encoder's output (B, L): its attention mask
        without the placeholders, whose outputs stand in for nothing (the prefix is the encoder's own)."""
        mask = self.kwargs["attention_mask"]
        if self.prefix is None:
            return mask
        return mask.scatter(1, self.prefix_index, torch.zeros_like(self.prefix_index, dtype=mask.dtype))

    def tokens(self, states: torch.Tensor) -> torch.Tensor:
        """Encoder outputs (B, L, ...) -> the caller's tokens (B, T, ...), in the caller's layout."""
        return _gather_positions(states, self.token_index.to(states.device))

    def token_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """A per-token 0/1 mask (B, T) of the caller's (Longformer's ``global_attention_mask``) -> (B, L),
        0 at virtual tokens; without one, where virtual tokens lead, the model's own default for its first
        position ([CLS], global) goes to the first position it sees: the first virtual token. Prefix
        placeholders are global (1) where the row has a prefix slot, so every token reads them, however
        far its attention window reaches.
        """
        if mask is None and not self.virtual and self.prefix is None:
            return None  # the model's default, on its own first token
        sequence = torch.zeros_like(self.kwargs["attention_mask"])
        if mask is None:
            sequence[:, 0] = 1
        else:
            sequence = sequence.scatter(1, self.token_index, mask.to(sequence))
        if self.prefix is not None:
            sequence = sequence.scatter(1, self.prefix_index, self.prefix.mask.to(sequence))
        return sequence

    def labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Token labels (B, T) in the caller's layout -> (B, L), ignored at virtual tokens, placeholders."""
        ignored = torch.full_like(self.kwargs["attention_mask"], IGNORE_INDEX, dtype=labels.dtype)
        return ignored.to(labels.device).scatter(1, self.token_index.to(labels.device), labels)


def _giving(embeddings: torch.Tensor):
    """A forward hook making an embedding module's output for the placeholder ids (B, L) ``embeddings``."""

    def hook(module, args, output):
        return embeddings.to(output.dtype) if output.shape[:2] == embeddings.shape[:2] else output

    return hook


def _gather_positions(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor`` (B, L, ...) at sequence positions ``index`` (B, N): (B, N, ...)."""
    index = index.view(*index.shape, *([1] * (tensor.dim() - 2))).expand(-1, -1, *tensor.shape[2:])
    return tensor.gather(1, index)


def _with_placeholders(
    columns: dict[str, torch.Tensor], slots: torch.Tensor, virtual: int, offset: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The per-position ``columns`` (B, V + T, ...) — embeddings, mask, token types, position ids — with
    a prefix's placeholders inserted after the first position the encoder sees; ``slots`` (B, P): the
    prefix's mask. Returns the columns (B, V + P + T, ...), where each prefix slot stands (B, P) and
    where each aligned token stands (B, T).

    A shorter prefix's masked slots move after the row's last token, with its pads: its real positions
    then stand as they would alone (relative positions and convolutions see no gap).
    """
    start, count = virtual + 1, slots.shape[1]
    embeds = columns["inputs_embeds"]
    blocks = {
        "inputs_embeds": embeds.new_zeros(embeds.shape[0], count, embeds.shape[-1]),
        "attention_mask": slots,
        "token_type_ids": torch.zeros_like(slots),
        "position_ids": _positions(slots, 0, offset),
    }
    columns = {name: with_placeholders(tensor, blocks[name], start) for name, tensor in columns.items()}
    mask = columns["attention_mask"]
    last = (mask == 0) & (torch.arange(mask.shape[1], device=mask.device) >= virtual)
    sequence = torch.argsort(last.long(), dim=-1, stable=True)  # (B, L): the column each position takes
    where = torch.argsort(sequence, dim=-1)  # (B, L): the position each column goes to
    columns = {name: _gather_positions(tensor, sequence) for name, tensor in columns.items()}
    tokens = torch.cat([where[:, virtual:start], where[:, start + count :]], dim=-1)
    return columns, where[:, start : start + count], tokens


def _positions(mask: torch.Tensor, first: torch.Tensor | int, offset: int) -> torch.Tensor:
    """Position ids (B, L) of ``mask``'s real slots, counting from ``first`` (B,) (RoBERTa counts from
    its offset); masked slots take the position before the first (the padding one), or 0."""
    positions = mask.cumsum(-1) - 1 + (first[:, None] if torch.is_tensor(first) else first) + offset
    return positions.masked_fill(mask == 0, max(offset - 1, 0))


def arrange(
    embed: nn.Module,
    shape: ModelShape,
    prompt: RowPrompts,
    modules: list[nn.Module] | None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    takes_embeddings: bool = True,
) -> EncoderBatch:
    """Arrange a batch and its prompt for an encoder (see the module docstring).

    ``embed`` is the model's input embedding; ``modules`` the encoder's attention modules, one per
    layer, which an ``encoder`` prefix enters on the attention route (see
    :func:`softprompt.injection.capture.attention_modules`); unused on the positional route. A model
    that takes no ``inputs_embeds`` (``takes_embeddings=False``: ESM-C) is handed placeholder ids, and
    its embedding module gives the arranged embeddings for them (:meth:`EncoderBatch.entering`).
    """
    tokens = input_ids if input_ids is not None else inputs_embeds
    batch, length = tokens.shape[:2]
    device = tokens.device
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=device)
    mask = attention_mask.long()
    order = torch.argsort(1 - mask, dim=-1, stable=True)  # tokens first, pads last, tokens keep order
    mask = mask.gather(1, order)
    prefix = prompt.sites.get("encoder")
    positional = prefix if prefix is not None and shape.encoder_prefix_route == "positions" else None
    kwargs: dict = {}
    if inputs_embeds is not None:
        inputs_embeds = inputs_embeds.gather(1, order[..., None].expand(-1, -1, inputs_embeds.shape[-1]))
    elif prompt.tokens is None and positional is None:
        # No virtual tokens: the model embeds the ids itself, as it does alone (ESM-C takes no embeddings).
        kwargs["input_ids"] = input_ids.gather(1, order)
    else:
        inputs_embeds = token_embeddings(embed, input_ids.gather(1, order))
    if token_type_ids is not None:
        token_type_ids = token_type_ids.gather(1, order)
    virtual = 0
    if prompt.tokens is not None:
        virtual = prompt.tokens.shape[1]
        inputs_embeds = torch.cat([prompt.tokens.to(inputs_embeds.dtype), inputs_embeds], dim=1)
        mask = torch.cat([prompt.tokens_mask, mask], dim=-1)
        if token_type_ids is not None:
            token_type_ids = torch.cat([torch.zeros_like(prompt.tokens_mask), token_type_ids], dim=-1)
    prefix_lengths = torch.zeros(batch, dtype=torch.long, device=device)
    if prefix is not None:
        prefix_lengths = prefix.lengths
        if positional is None:
            kwargs["softprompt_prefix"] = AttentionPrefix(
                dict(zip(modules, prefix.layers, strict=True)), prefix.mask
            )
    positions = None
    if shape.takes_position_ids:
        # Real slots count from the end of the row's prompt, skipping pads.
        positions = _positions(mask, prefix_lengths, shape.position_offset)
    # where the caller's tokens (right-aligned) stand in the sequence
    token_index = virtual + torch.arange(length, device=device).expand(batch, -1)
    prefix_index = None
    if positional is not None:
        columns = dict(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            token_type_ids=token_type_ids,
            position_ids=positions,
        )
        columns, prefix_index, token_index = _with_placeholders(
            {name: t for name, t in columns.items() if t is not None},
            positional.mask.long(),
            virtual,
            shape.position_offset,
        )
        inputs_embeds, mask = columns["inputs_embeds"], columns["attention_mask"]
        token_type_ids, positions = columns.get("token_type_ids"), columns.get("position_ids")
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids
    if positions is not None:
        kwargs["position_ids"] = positions
    embedded = None
    if inputs_embeds is not None and not takes_embeddings:
        kwargs["input_ids"] = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=device)
        embedded = (embed, inputs_embeds)
    elif inputs_embeds is not None:
        # (input_ids named too: FSMT's encoder cannot do without the argument, even as None)
        kwargs |= {"input_ids": None, "inputs_embeds": inputs_embeds}
    kwargs["attention_mask"] = mask
    back = torch.argsort(order, dim=-1)  # each caller token's right-aligned column
    return EncoderBatch(kwargs, token_index.gather(1, back), virtual, positional, prefix_index, embedded)
