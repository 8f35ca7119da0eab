"""Prefix tuning (Li & Liang 2021, arXiv 2101.00190): trainable keys/values in every attention layer.

The prefix is a flat (P, F) table, ``F = sum_l 2 * kv_heads_l * head_dim_l`` (see
:func:`~softprompt.methods.base.split_prefix`). With ``projection_hidden_size`` set it is
reparameterised during training as ``anchor + MLP(embedding)`` (Linear-Tanh-Linear) and folded
back into the plain table for saving and inference.

Inits: ``vocab`` and ``text`` start from the keys/values the frozen model itself computes for real
tokens; ``zero`` from zeros (peft's benchmark found this far better than random); ``random`` from
uniform noise, which with a large learning rate can wreck the model (shared/PITFALLS.md).
With the MLP and a non-random init the MLP's last layer starts at zero and the init is the
``anchor``, so training starts exactly at the init.

Sites: on an encoder-decoder the prefix fills encoder self-attention, decoder self-attention and
cross-attention, each with its own numbers (Li & Liang's BART setting); ``prefix_sites="decoder"``
fills the decoder's self-attention only, the sites ``peft`` uses. On an encoder it fills every
encoder layer: with the default plain table (no reparameterisation) this is P-tuning v2's *deep
prompt* (Liu et al. 2022, arXiv 2110.07602), so deep prompts need no config of their own.

Examples:
    >>> config = PrefixTuningConfig(num_virtual_tokens=10, projection_hidden_size=512)
    >>> deep_prompt = PrefixTuningConfig(num_virtual_tokens=20, init="zero")  # P-tuning v2 on BERT
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from softprompt import initializers
from softprompt.families import ModelShape, PrefixLayout, UnsupportedModelError
from softprompt.methods.base import (
    Method,
    PrefixStates,
    SoftPrompt,
    SoftPromptConfig,
    flatten_prefix,
    split_prefix,
)

PrefixInit = Literal["random", "zero", "vocab", "text", "file"]
# Which attention sites each ``prefix_sites`` choice fills, per model kind (None: all of them).
PREFIX_SITES: dict[str, dict[str, tuple[str, ...] | None]] = {
    "all": {"causal": None, "seq2seq": None, "encoder": None},
    # peft's encoder-decoder layout: the decoder's self-attention only (peft issue #2989).
    "decoder": {"seq2seq": ("decoder",)},
}


@dataclass(frozen=True)
class PrefixTuningConfig(SoftPromptConfig):
    """Prefix tuning choices.

    Attributes:
        num_virtual_tokens: prefix length ``P`` (Li & Liang: 10 for table-to-text, 200 for summaries).
        init: ``vocab`` (keys/values of sampled frequent tokens), ``text`` (of ``init_text``), ``zero``,
            ``random`` (uniform in ±``random_scale``), or ``file`` (a saved prefix).
        init_text: the text for ``init="text"``.
        init_file: an adapter file or folder for ``init="file"``.
        projection_hidden_size: hidden width of the MLP reparameterisation; ``None`` trains the table directly.
        vocab_top_k: sample ``vocab`` init from this many most frequent ids; ``None`` for all.
        random_scale: half-width of the ``random`` init.
        seed: seed of the random and ``vocab`` inits.
        prefix_sites: which attention sites the prefix fills: ``all`` (every site of the model) or, on
            encoder-decoders, ``decoder`` (decoder self-attention only: ``peft``'s layout).
    """

    method: ClassVar[str] = "prefix_tuning"
    num_virtual_tokens: int = 10
    init: PrefixInit = "vocab"
    init_text: str | None = None
    init_file: str | None = None
    projection_hidden_size: int | None = None
    vocab_top_k: int | None = 5000
    random_scale: float = 0.5
    seed: int = 0
    prefix_sites: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init not in PrefixInit.__args__:
            raise ValueError(f"init must be one of {PrefixInit.__args__}, got {self.init!r}")
        if self.prefix_sites not in PREFIX_SITES:
            raise ValueError(f"prefix_sites must be one of {sorted(PREFIX_SITES)}, got {self.prefix_sites!r}")
        if self.init == "text" and not self.init_text:
            raise ValueError("init='text' needs init_text")
        if self.init == "file" and not self.init_file:
            raise ValueError("init='file' needs init_file, the path of a saved softprompt adapter")


def prefix_layout(config: PrefixTuningConfig, shape: ModelShape) -> PrefixLayout:
    """The layers a prefix fills for ``config.prefix_sites`` on a model of ``shape``."""
    choices = PREFIX_SITES[config.prefix_sites]
    if shape.kind not in choices:
        valid = sorted(choice for choice, kinds in PREFIX_SITES.items() if shape.kind in kinds)
        raise UnsupportedModelError(
            f"prefix_sites={config.prefix_sites!r} does not apply to {shape.family} ({shape.kind} model); "
            f"choose one of {valid}"
        )
    return shape.layout(choices[shape.kind])


class PrefixTable(SoftPrompt):
    """A plain trainable prefix. Parameter ``prefix``: (P, F); ``shape`` says which layers it fills."""

    def __init__(
        self, config: SoftPromptConfig, prefix: torch.Tensor, shape: ModelShape | PrefixLayout
    ) -> None:
        super().__init__(config)
        self.shape = shape
        self.prefix = nn.Parameter(prefix)

    def forward(self) -> PrefixStates:
        return split_prefix(self.prefix, self.shape)


class ReparameterizedPrefix(SoftPrompt):
    """``anchor + MLP(embedding)``: (P, E) -> (P, F), with Linear(E, h) - Tanh - Linear(h, F)."""

    def __init__(
        self,
        config: PrefixTuningConfig,
        embedding: torch.Tensor,
        anchor: torch.Tensor | None,
        shape: ModelShape | PrefixLayout,
    ) -> None:
        super().__init__(config)
        self.shape = shape
        self.embedding = nn.Parameter(embedding)
        hidden = config.projection_hidden_size
        self.mlp = nn.Sequential(
            nn.Linear(embedding.shape[-1], hidden), nn.Tanh(), nn.Linear(hidden, shape.prefix_width)
        )
        # The anchor is the init; the MLP learns the change from it, starting at none.
        self.register_buffer("anchor", anchor, persistent=False)
        if anchor is not None:
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self) -> PrefixStates:
        prefix = self.mlp(self.embedding)
        if self.anchor is not None:
            prefix = prefix + self.anchor
        return split_prefix(prefix, self.shape)


def initial_prefix(
    config: PrefixTuningConfig, model: nn.Module, shape: ModelShape, tokenizer
) -> torch.Tensor:
    """The (P, F) starting prefix that ``config.init`` asks for."""
    length = config.num_virtual_tokens
    layout = prefix_layout(config, shape)
    width = layout.prefix_width
    generator = torch.Generator().manual_seed(config.seed)
    if config.init == "random":
        return initializers.uniform(length, width, config.random_scale, generator)
    if config.init == "zero":
        return torch.zeros(length, width)
    if config.init == "file":
        return initializers.rows_from_file(config.init_file, "prefix", length, width, shape)
    # The keys/values the frozen model computes for real tokens, at every site the prefix fills.
    states = initializers.states_of(model, shape, _init_ids(config, shape, tokenizer, generator))
    return flatten_prefix(PrefixStates([kv for site in layout.site_names for kv in states[site]])).clone()


def _init_ids(
    config: PrefixTuningConfig, shape: ModelShape, tokenizer, generator: torch.Generator
) -> torch.Tensor:
    if config.init == "text":
        return initializers.text_token_ids(tokenizer, config.init_text, config.num_virtual_tokens)
    return initializers.sampled_vocab_ids(
        config.num_virtual_tokens, shape.vocab_size, config.vocab_top_k, generator
    )


class PrefixTuning(Method):
    """Prefix tuning: saved as the flat (P, F) table of the sites it fills, reparameterisation folded."""

    config = PrefixTuningConfig
    saves = "prefix"
    reload_init = "zero"
    peft_type = "PREFIX_TUNING"

    def build(self, config, model, shape, tokenizer=None) -> SoftPrompt:
        prefix = initial_prefix(config, model, shape, tokenizer)
        layout = prefix_layout(config, shape)
        if config.projection_hidden_size is None:
            return PrefixTable(config, prefix, layout)
        generator = torch.Generator().manual_seed(config.seed + 1)
        if config.init in ("vocab", "text"):
            embedding = initializers.embeddings_of(model, _init_ids(config, shape, tokenizer, generator))
        else:
            embedding = initializers.uniform(
                config.num_virtual_tokens, shape.embed_dim, config.random_scale, generator
            )
        anchor = None if config.init == "random" else prefix
        return ReparameterizedPrefix(config, embedding, anchor, layout)

    def rebuild(self, config, table, shape) -> SoftPrompt:
        return PrefixTable(config, table.float(), prefix_layout(config, shape))

    def layout(self, config, shape) -> PrefixLayout:
        return prefix_layout(config, shape)

    def from_peft(self, length, fields, shape) -> PrefixTuningConfig:
        # peft's encoder-decoder prefix (two transformer stacks) fills the decoder's self-attention only.
        sites = "decoder" if fields.get("num_transformer_submodules", 1) == 2 else "all"
        return PrefixTuningConfig(num_virtual_tokens=length, init=self.reload_init, prefix_sites=sites)


METHOD = PrefixTuning()
