"""A prompt placed for a model (:class:`CompiledPrompt`) and a batch's prompts row by row (:class:`RowPrompts`).

A prompt enters a model in at most two ways, and these types name both:

* **virtual tokens** (P, E) before the input — an encoder's input, where the input attends to
  them and they to it;
* **key/value prefixes** at attention sites (``self``, ``encoder``, ``decoder``, ``cross``), each a
  :class:`PrefixStates`: per layer (kv_heads, P, head_dim) keys and values.

A causal decoder turns virtual tokens into a ``self`` prefix once (they never attend to the
input), so its compiled prompts are prefixes only (:func:`softprompt.injection.capture.virtual_tokens_prefix`).

Rows of a batch may carry different prompts of different lengths, or none: :func:`gather` left-pads
each to the longest with masked slots, so each row sees its own prompt only and its real slots sit
right before its input.

Examples:
    >>> states = PrefixStates([(torch.ones(2, 3, 4), torch.ones(2, 3, 4))])      # 1 layer, 2 heads, P=3
    >>> compiled = [CompiledPrompt(sites={"self": states})]
    >>> rows = gather(compiled, torch.tensor([0, -1]), torch.float32, torch.device("cpu"))
    >>> rows.sites["self"].mask.tolist()                                         # row 1: no prompt
    [[1, 1, 1], [0, 0, 0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from softprompt.families import ModelShape, PrefixLayout
from softprompt.kinds import Site
from softprompt.methods.base import PrefixStates, PromptOutput, VirtualTokens


@dataclass
class CompiledPrompt:
    """One task's prompt, placed where it enters a model of some kind (no batch dimension).

    ``tokens``: virtual tokens (P, E) before the input, or None; ``sites``: per-site prefixes.
    """

    tokens: torch.Tensor | None = None
    sites: dict[Site, PrefixStates] = field(default_factory=dict)


def place(output: PromptOutput, layout: PrefixLayout | None) -> CompiledPrompt:
    """A prompt module's output where it enters: virtual tokens stay tokens; a prefix is cut by site."""
    if isinstance(output, VirtualTokens):
        return CompiledPrompt(tokens=output.embeddings)
    return CompiledPrompt(
        sites={site: PrefixStates(layers) for site, layers in layout.by_site(output.layers).items()}
    )


@dataclass
class BatchPrefix:
    """One site's prefixes for a batch. ``layers[l]``: (keys, values), each (B, H_l, P_max, D_l); ``mask``: (B, P_max)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """Real prefix length of each row: (B,)."""
        return self.mask.sum(-1)

    def repeat_interleave(self, repeats: int) -> BatchPrefix:
        """Each row ``repeats`` times in a row, as ``generate`` expands rows for beams and samples."""
        if repeats == 1:
            return self
        layers = [(k.repeat_interleave(repeats, 0), v.repeat_interleave(repeats, 0)) for k, v in self.layers]
        return BatchPrefix(layers, self.mask.repeat_interleave(repeats, 0))

    def select(self, rows: torch.Tensor) -> BatchPrefix:
        """The prefixes of ``rows`` (N,), without the slots that are padding in every one of them."""
        mask = self.mask[rows]
        first = _first_real_column(mask)
        layers = [(k[rows, :, first:], v[rows, :, first:]) for k, v in self.layers]
        return BatchPrefix(layers, mask[:, first:])


@dataclass
class RowPrompts:
    """Each row's prompt in a batch: what a model's ``forward`` / ``generate`` take as ``row_prompts``.

    ``tokens``: virtual tokens before each row's input, (B, P, E), with ``tokens_mask`` (B, P);
    ``sites``: key/value prefixes per attention site. Empty: every row runs the bare model.
    """

    tokens: torch.Tensor | None = None
    tokens_mask: torch.Tensor | None = None
    sites: dict[Site, BatchPrefix] = field(default_factory=dict)

    def repeat_interleave(self, repeats: int) -> RowPrompts:
        """Each row ``repeats`` times in a row, as ``generate`` expands rows for beams and samples."""
        if self.tokens is None:
            tokens = mask = None
        else:
            tokens = self.tokens.repeat_interleave(repeats, 0)
            mask = self.tokens_mask.repeat_interleave(repeats, 0)
        return RowPrompts(tokens, mask, {s: p.repeat_interleave(repeats) for s, p in self.sites.items()})

    def select(self, rows: torch.Tensor) -> RowPrompts:
        """The prompts of ``rows`` (N,), without the slots that are padding in every one of them."""
        tokens = mask = None
        if self.tokens is not None:
            mask = self.tokens_mask[rows]
            first = _first_real_column(mask)
            tokens, mask = self.tokens[rows, first:], mask[:, first:]
        return RowPrompts(tokens, mask, {s: p.select(rows) for s, p in self.sites.items()})

    def states(self, site: Site) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The per-layer keys/values at ``site``, or None where no row has a prefix there."""
        return self.sites[site].layers if site in self.sites else None


def gather_prefixes(
    prefixes: Sequence[PrefixStates], rows: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> BatchPrefix:
    """Gather each row's prefix. ``rows``: (B,) index into ``prefixes``, or -1 for a row without prompt.

    Shorter prefixes are left-padded with zeros that the mask hides.
    """
    batch = rows.shape[0]
    if len(prefixes) == 1 and bool((rows == 0).all()):
        # One shared prompt: broadcast without copying.
        (prefix,) = prefixes
        layers = [
            (
                k.to(device, dtype)[None].expand(batch, -1, -1, -1),
                v.to(device, dtype)[None].expand(batch, -1, -1, -1),
            )
            for k, v in prefix.layers
        ]
        return BatchPrefix(layers, torch.ones(batch, prefix.length, dtype=torch.long, device=device))

    longest = max(p.length for p in prefixes)
    # Row `len(prefixes)` of each stack is the empty prompt used by rows == -1.
    index = torch.where(rows < 0, len(prefixes), rows).to(device)
    lengths = torch.tensor([p.length for p in prefixes] + [0], device=device)
    mask = (torch.arange(longest, device=device) >= longest - lengths[:, None]).long()  # (N + 1, P_max)
    layers = []
    for layer_idx in range(len(prefixes[0].layers)):
        stacked = []
        for part in (0, 1):  # keys, values
            padded = [_left_pad(p.layers[layer_idx][part].to(device, dtype), longest) for p in prefixes]
            padded.append(torch.zeros_like(padded[0]))
            stacked.append(torch.stack(padded)[index])  # (B, H, P_max, D)
        layers.append((stacked[0], stacked[1]))
    return BatchPrefix(layers, mask[index])


def gather(
    compiled: Sequence[CompiledPrompt], rows: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> RowPrompts:
    """Each row's prompt: ``rows`` (B,) indexes ``compiled``, -1 for none.

    Shorter virtual-token blocks and prefixes are left-padded with masked slots, so each row's real
    virtual tokens sit right before its input and no row sees another row's prompt.
    """
    batch = rows.shape[0]
    tokens = mask = None
    with_tokens = [i for i, part in enumerate(compiled) if part.tokens is not None]
    if with_tokens and len(compiled) == 1 and bool((rows == 0).all()):
        # One shared prompt: broadcast without copying.
        tokens = compiled[0].tokens.to(device, dtype)[None].expand(batch, -1, -1)
        mask = torch.ones(batch, tokens.shape[1], dtype=torch.long, device=device)
    elif with_tokens:
        longest = max(compiled[i].tokens.shape[0] for i in with_tokens)
        width = compiled[with_tokens[0]].tokens.shape[-1]
        tokens = torch.zeros(batch, longest, width, dtype=dtype, device=device)
        mask = torch.zeros(batch, longest, dtype=torch.long, device=device)
        for row, index in enumerate(rows.tolist()):
            if index >= 0 and compiled[index].tokens is not None:
                own = compiled[index].tokens
                tokens[row, longest - own.shape[0] :] = own.to(device, dtype)
                mask[row, longest - own.shape[0] :] = 1
    sites = {}
    for site in dict.fromkeys(site for part in compiled for site in part.sites):
        holders = [i for i, part in enumerate(compiled) if site in part.sites]
        site_rows = torch.tensor([holders.index(i) if i in holders else -1 for i in rows.tolist()])
        if bool((site_rows >= 0).any()):
            sites[site] = gather_prefixes(
                [compiled[i].sites[site] for i in holders], site_rows, dtype, device
            )
    return RowPrompts(tokens, mask, sites)


def no_prefix(shape: ModelShape, batch: int, dtype: torch.dtype, device: torch.device) -> BatchPrefix:
    """An empty prefix (P = 0) for ``batch`` rows of a causal decoder: the bare model."""
    # Keys and values may differ in width (latent attention): (B, kv_heads, 0, D_k) and (..., D_v).
    layers = [
        (
            torch.zeros(batch, s.num_kv_heads, 0, s.head_dim, dtype=dtype, device=device),
            torch.zeros(batch, s.num_kv_heads, 0, s.value_head_dim, dtype=dtype, device=device),
        )
        for s in shape.layers
    ]
    return BatchPrefix(layers, torch.zeros(batch, 0, dtype=torch.long, device=device))


def _first_real_column(mask: torch.Tensor) -> int:
    """The first column of ``mask`` (N, P) that is real in some row (P when none is)."""
    real = mask.bool().any(0)
    return int(real.int().argmax()) if bool(real.any()) else mask.shape[1]


def _left_pad(states: torch.Tensor, length: int) -> torch.Tensor:
    """(H, P, D) -> (H, length, D) with zeros before the real positions."""
    return nn.functional.pad(states, (0, 0, length - states.shape[-2], 0))
