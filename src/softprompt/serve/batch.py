"""The key/value state of the sequences being decoded together, and the two forward passes over it.

A causal decoder's sequence is its cache: per layer, the keys/values of its task's prefix (what a
compiled prompt is, :class:`~softprompt.injection.CompiledPrompt`) followed by those of its tokens.
A :class:`DecodingBatch` holds the running sequences' caches side by side, left-padded to one length,
with a mask of the real slots — so sequences of different tasks, prompt lengths and ages decode in
one forward pass, and sequences can join (after their prefill) and leave between any two steps.

Layout: every row is ``[pads][prompt][tokens]``, its real slots one run at the right end, as
:meth:`~softprompt.models.SoftPromptModel.generate` lays rows out — the prefill *is* that method's
(``prefilled_states``), so the engine computes what ``generate`` computes. Sliding windows and
MPT's ALiBi count key columns: a pad between a prompt and its tokens would move the prompt out of
the window. The cache keeps every column (no layer drops what falls out of a window), so rows can be
cut and joined column for column; the attention mask applies the window.

Positions: a sequence's next token sits at the number of real slots it holds (prompt slots count, as
in :func:`~softprompt.injection.positions.positions_after_prefix`), whatever padding the batch adds.
So every sequence computes what it would compute alone, in a batch of one.

Example:
    >>> from softprompt.bank import TaskBank
    >>> decoder = Decoder(TaskBank(base_model).runner)
    >>> task = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=3))
    >>> compiled = task.compile_prompt(task.prompt)
    >>> batch, logits = decoder.prefill([[5, 6, 7], [8, 9]], [compiled, None])
    >>> batch.mask.tolist()                                   # 3 prompt slots for row 0, none for row 1
    [[1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]]
    >>> logits = batch.step(decoder, logits.argmax(-1))       # one more token in every row: (B, V)
    >>> batch.select([1]).mask.tolist()                       # row 0 left; the columns only it used go
    [[1, 1, 1]]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from softprompt.compat import cache_kwargs, takes_argument
from softprompt.families import UnsupportedModelError
from softprompt.injection import BatchPrefix, CompiledPrompt
from softprompt.injection.attention import use_grouped_attention
from softprompt.injection.caches import generation_cache
from softprompt.injection.prompts import no_prefix
from softprompt.models import SoftPromptModel

LayerStates = list[tuple[torch.Tensor, torch.Tensor]]  # per attention layer (keys, values), each (B, H, L, D)


class DecodingBatch:
    """Running sequences' caches, left-padded to one length ``L``: per layer (B, H, L, D), mask (B, L).

    ``layer_indices`` are the model's cache index of each layer of ``layers``
    (:attr:`~softprompt.families.ModelShape.layer_indices`): KV-shared layers (Gemma 3n) hold none.
    """

    def __init__(self, layer_indices: Sequence[int], layers: LayerStates, mask: torch.Tensor) -> None:
        self.layer_indices = tuple(layer_indices)
        # Plain growing layers (config None): a sliding-window layer would drop columns the mask still counts.
        self.cache = generation_cache(None, layers, self.layer_indices)
        self.mask = mask

    @property
    def size(self) -> int:
        return self.mask.shape[0]

    def layers(self) -> LayerStates:
        return [(self.cache.layers[i].keys, self.cache.layers[i].values) for i in self.layer_indices]

    def step(self, decoder: Decoder, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token to every sequence, ``tokens`` (B,); returns the next-token logits (B, V).

        A step that raises leaves the batch as it was — the layers it reached had appended the token
        already — so its rows can be stepped again (alone, to find the one that fails).
        """
        positions = self.mask.sum(-1, keepdim=True)  # (B, 1): the real slots before the new token
        mask = torch.cat([self.mask, torch.ones_like(positions)], dim=-1)
        before = self.layers()  # a layer's update makes new tensors: these stay as they are
        try:
            logits = decoder.forward(tokens[:, None], mask, positions, self.cache)
        except BaseException:
            for index, (keys, values) in zip(self.layer_indices, before, strict=True):
                self.cache.layers[index].keys, self.cache.layers[index].values = keys, values
            raise
        self.mask = mask
        return logits

    def select(self, rows: Sequence[int]) -> DecodingBatch:
        """The sequences at ``rows`` (any order, repeats allowed), without columns no row uses."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask[index]
        used = mask.any(0).nonzero()
        start = int(used[0]) if len(used) else mask.shape[1]
        layers = [(k[index, :, start:], v[index, :, start:]) for k, v in self.layers()]
        return DecodingBatch(self.layer_indices, layers, mask[:, start:])

    @staticmethod
    def join(batches: Sequence[DecodingBatch]) -> DecodingBatch:
        """One batch of all the sequences of ``batches``, in order (shorter caches left-padded)."""
        if len(batches) == 1:
            return batches[0]
        length = max(b.mask.shape[1] for b in batches)
        pads = [length - b.mask.shape[1] for b in batches]
        mask = torch.cat([nn.functional.pad(b.mask, (pad, 0)) for b, pad in zip(batches, pads, strict=True)])
        layers = []
        for per_batch in zip(*(b.layers() for b in batches), strict=True):
            keys = [_left_pad(k, pad) for (k, _), pad in zip(per_batch, pads, strict=True)]
            values = [_left_pad(v, pad) for (_, v), pad in zip(per_batch, pads, strict=True)]
            layers.append((torch.cat(keys), torch.cat(values)))
        return DecodingBatch(batches[0].layer_indices, layers, mask)


class Decoder:
    """The frozen causal LM a batch runs on: the task bank's runner, called with a growing cache."""

    def __init__(self, runner: SoftPromptModel) -> None:
        shape = runner.shape
        if shape.self_prefix_route == "positions":
            raise UnsupportedModelError(
                f"softprompt's local engine decodes sequences as key/value caches it cuts and joins between "
                f"steps; {shape.family} keeps no key/value cache. Generate with the library "
                "(softprompt.load(...).generate, TaskBank.generate) on this model"
            )
        other_state = (
            f"a recurrent state in its layers {list(shape.recurrent_layers)}"
            if shape.recurrent_layers
            else f"sparse-attention indexer keys in its layers {list(shape.indexed_layers)}"
        )
        if shape.recurrent_layers or shape.indexed_layers:
            raise UnsupportedModelError(
                f"softprompt's local engine decodes sequences as key/value caches it cuts and joins between "
                f"steps; {shape.family} also carries {other_state}, which is not cut or joined that way. "
                "Generate with the library (softprompt.load(...).generate, TaskBank.generate) on this model"
            )
        if runner.left_pads_matter:
            raise UnsupportedModelError(
                f"softprompt's local engine left-pads the sequences it decodes together; {runner.shape.family} "
                "numbers positions by cache column (a left pad changes every token after it), so a "
                "sequence would not compute what it computes alone. Generate with the library "
                "(softprompt.load(...).generate, TaskBank.generate) on this model"
            )
        self.runner = runner
        self.device = runner.base_model.device
        # Whether calls ask the attention to keep grouped key/value heads (softprompt.injection.attention).
        self.grouped = use_grouped_attention(runner.base_model, runner.shape)

    @torch.no_grad()
    def prefill(
        self, prompts: Sequence[Sequence[int]], compiled: Sequence[CompiledPrompt | None]
    ) -> tuple[DecodingBatch, torch.Tensor]:
        """Run new sequences' tokens after their tasks' prompts: their batch, and next-token logits (B, V).

        ``compiled[i]`` is row ``i``'s task prompt (``None``: the bare model); each task's prefix is
        gathered per row by the model's own :meth:`~softprompt.models.PromptedModel.row_prompts`. As in
        ``generate``, the model runs all but each row's last token, and the last one is the first step.
        """
        width = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        prefix = self._prefix(compiled)
        # Per layer (B, H, P + T - 1, D), each row [pads][prompt][tokens] but its last token.
        states = self.runner.prefilled_states(ids, mask, prefix)
        real = prefix.lengths + mask.sum(-1) - 1  # (B,): real slots before the last token
        columns = prefix.mask.shape[1] + width - 1
        slots = torch.arange(columns, device=self.device).expand(len(prompts), -1)  # (B, P + T - 1)
        batch = DecodingBatch(
            self.runner.shape.layer_indices, states, (slots >= columns - real[:, None]).long()
        )
        return batch, batch.step(self, ids[:, -1])

    def _prefix(self, compiled: Sequence[CompiledPrompt | None]) -> BatchPrefix:
        """Each row's ``self`` prefix (B, P), shorter ones left-padded; P = 0 when no row has a prompt."""
        used = list({id(c): c for c in compiled if c is not None}.values())
        rows = torch.tensor([-1 if c is None else [id(u) for u in used].index(id(c)) for c in compiled])
        sites = self.runner.row_prompts(used, rows, self.device).sites if used else {}
        if "self" in sites:
            return sites["self"]
        return no_prefix(self.runner.shape, len(compiled), self.runner.base_model.dtype, self.device)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, full_mask, positions, cache) -> torch.Tensor:
        """The model over ``ids`` (B, T), ``cache`` growing by T; its own logits of each row's last token (B, V).

        The frozen causal LM runs whole, so its head's own transforms (scaling, soft-capping) apply;
        ``logits_to_keep=1`` computes them for the last position only where the model takes it.
        """
        model = self.runner.base_model
        kwargs = {"position_ids": positions} if self.runner.shape.takes_position_ids else {}
        if self.grouped:
            kwargs["softprompt_grouped"] = True
        if takes_argument(model, "logits_to_keep"):
            kwargs["logits_to_keep"] = 1
        logits = model(
            input_ids=ids, attention_mask=full_mask, use_cache=True, **cache_kwargs(model, cache), **kwargs
        ).logits
        return logits[:, -1]


def _left_pad(states: torch.Tensor, columns: int) -> torch.Tensor:
    """(B, H, L, D) -> (B, H, columns + L, D), zeros first."""
    return nn.functional.pad(states, (0, 0, columns, 0)) if columns else states
