"""Tiny random models of every supported family, built from configs with a fixed seed (no downloads)."""

from __future__ import annotations

import dataclasses
import inspect
import re

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


# ------------------------------------------------------------------------------------------- hybrids
# Recurrent layers beside attention, with no softprompt.FAMILIES entry: the layer each family's
# attention sits in is in the comment (the shape probe's tests check it).
_HYBRID = {**_COMMON, "num_key_value_heads": 2}
HYBRID_CONFIGS = {
    # linear attention in layers 0-2, attention in 3
    "qwen3_next": lambda: T.Qwen3NextConfig(
        **{**_HYBRID, "num_hidden_layers": 4},
        head_dim=8,
        layer_types=["linear_attention"] * 3 + ["full_attention"],
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
    ),
    # Mamba in layers 0, 2 and 3, attention in 1
    "jamba": lambda: T.JambaConfig(
        **{**_HYBRID, "num_hidden_layers": 4},
        attn_layer_period=4,
        attn_layer_offset=1,
        expert_layer_period=4,
        expert_layer_offset=3,
        num_experts=2,
        mamba_d_state=8,
        mamba_dt_rank=4,
        use_mamba_kernels=False,
    ),
    # attention and a Mamba mixer side by side in every layer
    "falcon_h1": lambda: T.FalconH1Config(
        **_HYBRID,
        head_dim=8,
        mamba_d_state=8,
        mamba_n_heads=8,
        mamba_d_head=8,
        mamba_n_groups=1,
        mamba_d_ssm=64,
        mamba_chunk_size=8,
    ),
    # a Mamba layer, then a Mamba layer with a shared attention block
    "zamba2": lambda: T.Zamba2Config(
        **_HYBRID,
        layers_block_type=["mamba", "hybrid"],
        mamba_d_state=8,
        mamba_headdim=8,
        n_mamba_heads=8,
        attention_head_dim=8,
        hybrid_layer_ids=[1],
    ),
}
HYBRID_FAMILIES = sorted(HYBRID_CONFIGS)


def tiny_hybrid_lm(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny randomly initialised hybrid causal LM of ``family`` in eval mode (fp32).

    Norm weights are drawn around 1: the random init zeroes some norms and gates, which would let
    a layer add nothing and a prompt that never reaches it pass unnoticed.
    """
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(HYBRID_CONFIGS[family]())
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.dim() == 1 and name in ("weight", "scale"):
                torch.nn.init.normal_(param, 1.0, 0.1)
    model.config._name_or_path = f"tiny-{family}"
    return model.eval()


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


# ----------------------------------------------------------------------------- any model type, generic
# Small generic sizes, set by a config field's *name* only (no per-model knowledge), so any model type
# transformers ships builds tiny: see ``tiny_model``. Eight layers keep the layer patterns configs
# derive from the depth (sliding every few layers, hybrid attention/recurrent interleaving); a window
# of 4 is shorter than the test inputs, so sliding-window code paths really run.
GENERIC_HIDDEN, GENERIC_LAYERS, GENERIC_HEADS, GENERIC_KV_HEADS, GENERIC_HEAD_DIM = 32, 8, 4, 2, 8
GENERIC_INTERMEDIATE, GENERIC_MAX_POSITIONS, GENERIC_WINDOW, GENERIC_NUM_LABELS = 64, 128, 4, 3
# A random model with more parameters than this did not shrink (a size field with an unknown name).
GENERIC_MAX_PARAMETERS = 20_000_000

_GENERIC_SIZES: dict[str, int] = {
    **dict.fromkeys(
        ["hidden_size", "n_embd", "d_model", "dim", "emb_dim", "embed_dim", "model_dim"], GENERIC_HIDDEN
    ),
    **dict.fromkeys(["word_embed_proj_dim", "embedding_size"], GENERIC_HIDDEN),
    **dict.fromkeys(
        ["num_hidden_layers", "n_layer", "n_layers", "num_layers", "decoder_layers", "encoder_layers"],
        GENERIC_LAYERS,
    ),
    "num_decoder_layers": GENERIC_LAYERS,
    **dict.fromkeys(
        ["num_attention_heads", "n_head", "n_heads", "num_heads", "decoder_attention_heads"], GENERIC_HEADS
    ),
    "encoder_attention_heads": GENERIC_HEADS,
    **dict.fromkeys(
        ["num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num"], GENERIC_KV_HEADS
    ),
    **dict.fromkeys(["head_dim", "d_kv", "kv_channels", "dim_head", "attention_head_size"], GENERIC_HEAD_DIM),
    "rotary_dim": GENERIC_HEAD_DIM // 2,  # a partial rotary part must fit the head
    "vocab_size": VOCAB,
    **dict.fromkeys(
        ["max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "context_length"],
        GENERIC_MAX_POSITIONS,
    ),
    **dict.fromkeys(["max_target_positions", "max_source_positions"], GENERIC_MAX_POSITIONS),
    # mixture of experts: few, small
    **dict.fromkeys(["n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts"], 4),
    **dict.fromkeys(["num_experts_per_tok", "moe_topk", "moe_k"], 2),
    **dict.fromkeys(["n_group", "topk_group"], 1),
    # multi-head latent attention (DeepSeek-style ranks and split head sizes)
    **dict.fromkeys(["kv_lora_rank", "q_lora_rank", "o_lora_rank"], 16),
    "qk_rope_head_dim": 4,
    "qk_nope_head_dim": 8,
    "v_head_dim": 8,
    # state-space and linear-attention layers
    **dict.fromkeys(["mamba_d_state", "state_size", "ssm_state_size", "d_state"], 8),
    **dict.fromkeys(["linear_key_head_dim", "linear_value_head_dim", "linear_head_dim"], GENERIC_HEAD_DIM),
}
# None means "off" (a low-rank query) or "derive it": leave those alone.
_OFF_WHEN_NONE = {"q_lora_rank", "o_lora_rank"}
_WINDOW_FIELDS = {
    "sliding_window",
    "sliding_window_size",
    "attention_window_size",
    "window_size",
    "local_attention_window_len",
    "attention_chunk_size",
    "local_attention",
}
_INTERMEDIATE_MARKERS = (
    "intermediate_size",
    "ffn_dim",
    "ffn_hidden_size",
    "dim_ff",
    "d_ff",
    "feed_forward_size",
)
_INTERMEDIATE_NAMES = {"dff", "d_inner", "n_inner"}
# Special ids as in the configs above; other token ids that fall outside the vocabulary go to its top.
_SPECIAL_IDS = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, "decoder_start_token_id": 2}


_AUDIO_INPUT = re.compile(r"audio|speech|input_features|input_values")


class BuildError(Exception):
    """A model type that cannot be built tiny from its config: ``reason`` says why."""

    def __init__(self, model_type: str, head: str, reason: str):
        super().__init__(f"{model_type} ({head}): {reason}")
        self.model_type, self.head, self.reason = model_type, head, reason


class NotATextModel(BuildError):
    """A model type whose input is not text (no text vocabulary, or audio/image features first)."""


def _fields(config_class) -> dict:
    try:
        return {f.name: f for f in dataclasses.fields(config_class)}
    except TypeError:  # not a dataclass config
        return {}


def _default(field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        try:
            return field.default_factory()
        except Exception:
            return None
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def small_config_kwargs(config_class, multi_head: bool = False) -> dict:
    """Keyword arguments that shrink ``config_class``'s size fields, found by field name only.

    ``multi_head`` gives every query head its own key/value head (models whose attention needs it,
    such as latent attention, refuse grouped heads). Sub-configs (``text_config``, ...) shrink the same way.
    """
    fields = _fields(config_class)
    kwargs: dict = {}
    for name, field in fields.items():
        default = _default(field)
        if isinstance(default, (bool, list, tuple)) or (default is None and name in _OFF_WHEN_NONE):
            continue
        if name in _GENERIC_SIZES:
            kwargs[name] = _GENERIC_SIZES[name]
        elif name in _WINDOW_FIELDS and _is_int(default):  # only a window that is on by default
            kwargs[name] = GENERIC_WINDOW
        elif _is_int(default) and (
            any(m in name for m in _INTERMEDIATE_MARKERS) or name in _INTERMEDIATE_NAMES
        ):
            kwargs[name] = GENERIC_INTERMEDIATE
        elif _is_int(default) and "vocab_size" in name and default > VOCAB:
            kwargs[name] = VOCAB
        elif name == "num_kv_shared_layers" and _is_int(default) and default > 0:
            kwargs[name] = GENERIC_LAYERS // 2  # layers sharing keys/values must be fewer than all
    if multi_head:
        for name in ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num"):
            if name in kwargs:
                kwargs[name] = GENERIC_HEADS
    if "pad_token_id" in fields and _default(fields["pad_token_id"]) is None:
        kwargs["pad_token_id"] = _SPECIAL_IDS[
            "pad_token_id"
        ]  # a classifier finds each row's last token by it
    top_ids = iter(range(VOCAB - 1, VOCAB // 2, -1))
    for name, field in fields.items():
        if name.endswith(("_token_id", "_token_index")):
            default = _default(field)
            if _is_int(default) and default >= VOCAB // 2:
                kwargs[name] = _SPECIAL_IDS.get(name, next(top_ids))
            elif isinstance(default, (list, tuple)) and any(_is_int(i) and i >= VOCAB // 2 for i in default):
                kwargs[name] = [_SPECIAL_IDS.get(name, 1)]
    for key, spec in (getattr(config_class, "sub_configs_defaults", None) or {}).items():
        if key == "backbone_config":
            continue
        sub_class = spec.config_class
        if sub_class.__name__ == "AutoConfig":
            sub_class = T.CONFIG_MAPPING[spec.model_type]
        sub = {**spec.init_kwargs, **small_config_kwargs(sub_class, multi_head)}
        if spec.config_class.__name__ == "AutoConfig":
            sub["model_type"] = spec.model_type
        kwargs[key] = sub
    return kwargs


def _text_vocabulary(config) -> int | None:
    try:
        text = config.get_text_config(decoder=True)
    except Exception:
        text = config
    size = getattr(text, "vocab_size", None)
    return size if _is_int(size) and size > 0 else None


def _model_class(model_type: str, head: str):
    from softprompt.kinds import HEADS

    names = HEADS[head].class_names(model_type)
    if not names:
        raise BuildError(model_type, head, f"transformers has no {head} class for it")
    name = sorted(names)[0]
    if not hasattr(T, name):
        raise BuildError(model_type, head, f"{name} cannot be imported (a missing optional dependency)")
    return getattr(T, name)


def ending_with_eos(ids: torch.Tensor, config) -> torch.Tensor:
    """1-D ``ids`` ending with the model's end-of-sequence token, as tokenised text does.

    Classifiers over encoder-decoders (T5, BART) read the end-of-sequence position.
    """
    eos = getattr(config.get_text_config(decoder=True), "eos_token_id", None)
    eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    return torch.cat([ids[:-1], torch.tensor([eos])]) if _is_int(eos) and 0 <= eos < VOCAB else ids


def _smoke_inputs(config, head: str) -> dict:
    ids = ending_with_eos(torch.tensor([3, 4, 5, 6, 7]), config)[None]
    if head == "seq2seq-lm":  # classifiers over encoder-decoders make decoder inputs from input_ids
        return dict(input_ids=ids, decoder_input_ids=ids[:, :3])
    return dict(input_ids=ids)


def _configs(model_type: str, head: str, multi_head: bool) -> list:
    """The config to build: the model type's own, then — for a composite one — its text config."""
    config_class = T.CONFIG_MAPPING[model_type]
    try:
        config = config_class(**small_config_kwargs(config_class, multi_head))
    except Exception as err:
        raise BuildError(model_type, head, f"config: {one_line(err)}") from None
    if _text_vocabulary(config) is None:
        raise NotATextModel(model_type, head, "its config has no text vocabulary")
    if head == "causal-lm":  # as their causal-LM classes ask (BERT-style ones attend both ways without it)
        config.is_decoder = True
    text = config.get_text_config(decoder=True)
    # a class registered under a composite type may take the text part only
    return [config] if text is config else [config, text]


def _build_once(model_type: str, head: str, cls, config, seed: int):
    if head in ("sequence-classification", "token-classification"):
        config.num_labels = GENERIC_NUM_LABELS
    if config.is_encoder_decoder and getattr(config, "decoder_start_token_id", None) is None:
        config.decoder_start_token_id = _SPECIAL_IDS["decoder_start_token_id"]  # checkpoints set it
    try:
        with torch.device("meta"):
            size = sum(p.numel() for p in cls(config).parameters())
    except Exception as err:
        raise BuildError(model_type, head, f"build: {one_line(err)}") from None
    if size > GENERIC_MAX_PARAMETERS:
        raise BuildError(
            model_type, head, f"build: {size:,} parameters from a small config (a size left large)"
        )
    torch.manual_seed(seed)
    try:
        model = cls(config).eval()
        with torch.no_grad():
            model(**_smoke_inputs(config, head))
    except Exception as err:
        raise BuildError(model_type, head, f"forward: {one_line(err)}") from None
    model.config._name_or_path = f"tiny-{model_type}"
    return model


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one line: its type and message, whitespace folded, cut at ``limit``."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tiny_model(model_type: str, head: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random ``model_type`` with ``head``, built from its config class by generic sizes, in eval mode.

    ``head`` is ``causal-lm``, ``seq2seq-lm``, ``sequence-classification`` or ``token-classification``.
    Grouped key/value heads are tried first, then one key/value head per query head (latent attention
    refuses grouped heads); a composite config (text and vision) is tried whole, then its text part.
    Raises :class:`BuildError` with the reason when no such config builds and runs a forward pass on
    text, :class:`NotATextModel` when the model does not take text.
    """
    if model_type not in T.CONFIG_MAPPING:
        raise BuildError(model_type, head, "transformers has no such model type")
    cls = _model_class(model_type, head)
    if getattr(cls, "main_input_name", "input_ids") != "input_ids":
        raise NotATextModel(model_type, head, f"its main input is {cls.main_input_name}, not text")
    inputs = set(inspect.signature(cls.forward).parameters)
    audio = sorted(name for name in inputs if _AUDIO_INPUT.search(name))
    if audio and not any("pixel" in name for name in inputs):  # speech-to-text, not an any-to-text LM
        raise NotATextModel(model_type, head, f"an audio model: it reads {audio[0]}")
    errors: list[BuildError] = []
    for multi_head in (False, True):
        try:
            configs = _configs(model_type, head, multi_head)
        except NotATextModel:
            raise
        except BuildError as err:
            errors.append(err)
            continue
        for config in configs:
            try:
                return _build_once(model_type, head, cls, config, seed)
            except BuildError as err:
                errors.append(err)
    raise errors[0]  # the reason of the plainest try
