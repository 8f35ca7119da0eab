"""How the next token of a sequence is chosen: greedy, or sampled with temperature and nucleus (top-p).

Every sequence draws from its own ``torch.Generator``, seeded from the request's ``seed`` (and the
choice's index), so a seeded request samples the same tokens whatever batch it runs in.

Example:
    >>> params = SamplingParams(max_tokens=4, temperature=0.0)
    >>> next_token(torch.tensor([0.1, 2.0, -1.0]), params, generator=None)
    1
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """What a request asks of decoding (OpenAI's names and meanings).

    ``temperature`` 0 is greedy; ``top_p`` keeps the smallest set of tokens whose probabilities
    reach it; ``n`` sequences per prompt; ``stop`` strings end a sequence (not included in its text);
    ``seed`` makes sampling repeatable; ``ignore_eos`` (vLLM's extension) decodes past the
    end-of-sequence token, so every sequence gets ``max_tokens`` (benchmarks).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def generator(self, choice: int) -> torch.Generator | None:
        """The random source of choice ``choice``: seeded from ``seed`` if given, else fresh."""
        if self.greedy:
            return None
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed + choice)
        return generator


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """The next token id from one row's logits (V,)."""
    if params.greedy:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep each token whose preceding mass is below top_p (the most likely one always stays).
        keep = sorted_probs.cumsum(-1) - sorted_probs < params.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))
