"""Tiny random models of every supported family, built from configs with a fixed seed (no downloads)."""

from __future__ import annotations

import torch
import transformers as T

VOCAB = 96
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=128,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
)

CONFIGS = {
    "gpt2": lambda: T.GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    ),
    "llama": lambda: T.LlamaConfig(**_COMMON, num_key_value_heads=2),
    "mistral": lambda: T.MistralConfig(**_COMMON, num_key_value_heads=2, sliding_window=64),
    "qwen2": lambda: T.Qwen2Config(**_COMMON, num_key_value_heads=2),
    # explicit head_dim that is not hidden / heads (peft #2881)
    "qwen3": lambda: T.Qwen3Config(**_COMMON, num_key_value_heads=2, head_dim=16),
    # multi-query, explicit head_dim, scaled embeddings
    "gemma": lambda: T.GemmaConfig(**_COMMON, num_key_value_heads=1, head_dim=16),
    "gemma2": lambda: T.Gemma2Config(**_COMMON, num_key_value_heads=2, head_dim=16, sliding_window=64),
    "phi3": lambda: T.Phi3Config(**_COMMON, num_key_value_heads=2),
    "gpt_neox": lambda: T.GPTNeoXConfig(**_COMMON),
    # projected embeddings (word_embed_proj_dim != hidden_size), absolute positions
    "opt": lambda: T.OPTConfig(**{**_COMMON, "intermediate_size": None}, ffn_dim=48, word_embed_proj_dim=16),
    "falcon": lambda: T.FalconConfig(
        **{k: v for k, v in _COMMON.items() if k != "intermediate_size"},
        multi_query=True,
        new_decoder_architecture=False,
    ),
    "bloom": lambda: T.BloomConfig(
        vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, pad_token_id=0, eos_token_id=1, bos_token_id=2
    ),
}
FAMILIES = sorted(CONFIGS)


def tiny_causal_lm(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny randomly initialised causal LM of ``family`` in eval mode (fp32)."""
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(CONFIGS[family]())
    model.config._name_or_path = f"tiny-{family}"
    return model.eval()


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Token ids that avoid the special ids 0-2."""
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
