"""Prompt tuning (Lester et al. 2021, arXiv 2104.08691): ``P`` trainable input embeddings.

Examples:
    >>> config = PromptTuningConfig(num_virtual_tokens=20, init="text", init_text=" positive negative")
    >>> model = softprompt.wrap(base_model, config, tokenizer=tokenizer)
    >>> model.prompt.embeddings.shape  # (P, E)
    torch.Size([20, 32])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from softprompt import initializers
from softprompt.families import ModelShape
from softprompt.methods.base import Method, SoftPrompt, SoftPromptConfig, VirtualTokens

EmbeddingInit = Literal["random", "vocab", "text", "file"]


@dataclass(frozen=True)
class PromptTuningConfig(SoftPromptConfig):
    """Prompt tuning choices.

    Attributes:
        num_virtual_tokens: prompt length ``P`` (Lester et al.: 20-100).
        init: ``random`` (uniform in ±``random_scale``), ``vocab`` (embeddings of tokens sampled from the
            ``vocab_top_k`` most frequent), ``text`` (embeddings of ``init_text``, repeated or truncated to
            ``P``, e.g. the class labels), or ``file`` (a saved prompt, for transfer).
        init_text: the text for ``init="text"``.
        init_file: an adapter file or folder for ``init="file"``.
        vocab_top_k: sample ``vocab`` init from this many most frequent ids; ``None`` for the whole vocabulary.
        random_scale: half-width of the ``random`` init.
        seed: seed of the random and ``vocab`` inits.
    """

    method: ClassVar[str] = "prompt_tuning"
    init: EmbeddingInit = "vocab"
    init_text: str | None = None
    init_file: str | None = None
    vocab_top_k: int | None = 5000
    random_scale: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init not in EmbeddingInit.__args__:
            raise ValueError(f"init must be one of {EmbeddingInit.__args__}, got {self.init!r}")
        if self.init == "text" and not self.init_text:
            raise ValueError("init='text' needs init_text, e.g. the class labels 'positive negative'")
        if self.init == "file" and not self.init_file:
            raise ValueError("init='file' needs init_file, the path of a saved softprompt adapter")


def initial_embeddings(
    config: PromptTuningConfig, model: nn.Module, shape: ModelShape, tokenizer
) -> torch.Tensor:
    """The (P, E) starting embeddings that ``config.init`` asks for."""
    length = config.num_virtual_tokens
    generator = torch.Generator().manual_seed(config.seed)
    if config.init == "random":
        return initializers.uniform(length, shape.embed_dim, config.random_scale, generator)
    if config.init == "file":
        return initializers.rows_from_file(config.init_file, "embeddings", length, shape.embed_dim, shape)
    if config.init == "text":
        ids = initializers.text_token_ids(tokenizer, config.init_text, length)
    else:
        ids = initializers.sampled_vocab_ids(length, shape.vocab_size, config.vocab_top_k, generator)
    return initializers.embeddings_of(model, ids)


class PromptEmbedding(SoftPrompt):
    """``P`` trainable vectors in the input-embedding space. Parameter ``embeddings``: (P, E)."""

    def __init__(self, config: SoftPromptConfig, embeddings: torch.Tensor) -> None:
        super().__init__(config)
        self.embeddings = nn.Parameter(embeddings)

    def forward(self) -> VirtualTokens:
        return VirtualTokens(self.embeddings)


class PromptTuning(Method):
    """Prompt tuning: ``P`` embeddings, saved as they are (``embeddings`` (P, E))."""

    config = PromptTuningConfig
    saves = "embeddings"
    reload_init = "random"
    peft_type = "PROMPT_TUNING"

    def build(self, config, model, shape, tokenizer=None) -> SoftPrompt:
        return PromptEmbedding(config, initial_embeddings(config, model, shape, tokenizer))

    def rebuild(self, config, table, shape) -> SoftPrompt:
        return PromptEmbedding(config, table.float())


METHOD = PromptTuning()
