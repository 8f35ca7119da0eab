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
# Families beyond the list: one table entry each, run through the shape and logits checks.
MORE_CONFIGS = {
    "gemma3_text": lambda: T.Gemma3TextConfig(
        **_COMMON, num_key_value_heads=2, head_dim=16, sliding_window=64, final_logit_softcapping=30.0
    ),
    "mixtral": lambda: T.MixtralConfig(
        **_COMMON, num_key_value_heads=2, num_local_experts=2, num_experts_per_tok=1
    ),
    "qwen2_moe": lambda: T.Qwen2MoeConfig(
        **_COMMON,
        num_key_value_heads=2,
        num_experts=2,
        num_experts_per_tok=1,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
    ),
    "starcoder2": lambda: T.Starcoder2Config(**_COMMON, num_key_value_heads=2),
    "olmo2": lambda: T.Olmo2Config(**_COMMON, num_key_value_heads=2),
    "stablelm": lambda: T.StableLmConfig(**_COMMON, num_key_value_heads=2),
    "phi": lambda: T.PhiConfig(**_COMMON, num_key_value_heads=2),
    "gptj": lambda: T.GPTJConfig(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        rotary_dim=4,
        n_positions=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    ),
    "gpt_bigcode": lambda: T.GPTBigCodeConfig(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        multi_query=True,
        n_positions=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    ),
    "cohere": lambda: T.CohereConfig(**_COMMON, num_key_value_heads=2, logit_scale=0.5),
}
MORE_FAMILIES = sorted(MORE_CONFIGS)


def tiny_causal_lm(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny randomly initialised causal LM of ``family`` in eval mode (fp32)."""
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config({**CONFIGS, **MORE_CONFIGS}[family]())
    model.config._name_or_path = f"tiny-{family}"
    return model.eval()


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Token ids that avoid the special ids 0-2."""
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def padded_batch(rows, side):
    """Pad 1-D id tensors with id 0 on ``side``: (B, T_max) ids and mask."""
    longest = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        span = slice(longest - len(r), longest) if side == "left" else slice(0, len(r))
        ids[i, span], mask[i, span] = r, 1
    return ids, mask


# ---------------------------------------------------------------------------------- encoder-decoder
_SEQ2SEQ_IDS = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2, decoder_start_token_id=2)
_T5 = dict(
    vocab_size=VOCAB, d_model=32, d_ff=48, num_heads=4, relative_attention_num_buckets=8, **_SEQ2SEQ_IDS
)
_BART = dict(
    vocab_size=VOCAB,
    d_model=32,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=48,
    decoder_ffn_dim=48,
    max_position_embeddings=128,
    **_SEQ2SEQ_IDS,
)

SEQ2SEQ_CONFIGS = {
    "t5": lambda: T.T5Config(**_T5, d_kv=8, num_layers=2),
    # explicit head size (d_kv 16 != 32 / 4), as real mT5 checkpoints have
    "mt5": lambda: T.MT5Config(**_T5, d_kv=16, num_layers=2),
    # T5 v1.1: gated-GELU, untied head, and a decoder deeper than the encoder
    "t5v1.1": lambda: T.T5Config(
        **_T5,
        d_kv=8,
        num_layers=2,
        num_decoder_layers=3,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    ),
    "bart": lambda: T.BartConfig(**_BART, encoder_layers=2, decoder_layers=2),
    # mBART: pre-norm, embedding layer norm, scaled embeddings; an odd layer count (see peft's layout)
    "mbart": lambda: T.MBartConfig(**_BART, encoder_layers=3, decoder_layers=3, scale_embedding=True),
}
SEQ2SEQ_FAMILIES = sorted(SEQ2SEQ_CONFIGS)


def tiny_seq2seq_lm(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny randomly initialised encoder-decoder LM of ``family`` in eval mode (fp32)."""
    torch.manual_seed(seed)
    model = T.AutoModelForSeq2SeqLM.from_config(SEQ2SEQ_CONFIGS[family]())
    model.config._name_or_path = f"tiny-{family}"
    return model.eval()


# ------------------------------------------------------------------------------------------ encoders
_ENCODER = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=128,
    pad_token_id=0,
)

ENCODER_CONFIGS = {
    "bert": lambda: T.BertConfig(**_ENCODER, type_vocab_size=2),
    # positions start after the padding id (RoBERTa's quirk); pad id 1 as in the real checkpoints
    "roberta": lambda: T.RobertaConfig(**{**_ENCODER, "pad_token_id": 1}, type_vocab_size=1),
    # DeBERTa v3 style: relative attention only, no absolute positions, no token types
    "deberta-v2": lambda: T.DebertaV2Config(
        **_ENCODER,
        type_vocab_size=0,
        relative_attention=True,
        position_buckets=16,
        max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
    ),
    "distilbert": lambda: T.DistilBertConfig(
        vocab_size=VOCAB,
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=48,
        max_position_embeddings=128,
        pad_token_id=0,
    ),
}
ENCODER_FAMILIES = sorted(ENCODER_CONFIGS)
ENCODER_TASKS = {
    "sequence-classification": T.AutoModelForSequenceClassification,
    "token-classification": T.AutoModelForTokenClassification,
    "features": T.AutoModel,
}


def tiny_encoder(family: str, task: str = "sequence-classification", num_labels: int = 3, seed: int = 0):
    """A tiny randomly initialised encoder of ``family`` with the head for ``task``, in eval mode (fp32)."""
    torch.manual_seed(seed)
    config = ENCODER_CONFIGS[family]()
    config.num_labels = num_labels
    model = ENCODER_TASKS[task].from_config(config)
    model.config._name_or_path = f"tiny-{family}"
    return model.eval()
