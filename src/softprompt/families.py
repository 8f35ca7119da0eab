"""The one place that knows model families: model facts, derived once into an immutable ``ModelShape``.

A family is a row of ``FAMILIES``: its kind (causal decoder, encoder-decoder or encoder, see
:mod:`softprompt.kinds`) and how to read its attention shapes from a ``transformers`` config.
Everything else in softprompt works from the :class:`ModelShape` derived here once, so a new
family is a table entry, never a branch elsewhere.

A :class:`PrefixLayout` lists the attention sites (see :data:`softprompt.kinds.Site`) and layers
one prefix fills, in the order its flat ``(P, F)`` table stores them.

Examples:
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    ...                                      num_key_value_heads=2, intermediate_size=64, vocab_size=128))
    >>> shape = model_shape(model)
    >>> shape.family, shape.num_layers, shape.layers[0]
    ('llama', 2, LayerShape(num_kv_heads=2, head_dim=8))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from softprompt.kinds import KINDS, ModelHead, ModelKind, Site, head_of


@dataclass(frozen=True)
class LayerShape:
    """Key/value shape of one attention layer: prefixes are ``(num_kv_heads, P, head_dim)`` per layer."""

    num_kv_heads: int
    head_dim: int

    @property
    def kv_size(self) -> int:
        """Numbers one virtual token needs in this layer: a key and a value."""
        return 2 * self.num_kv_heads * self.head_dim


def _heads(config: Any) -> int:
    return config.num_attention_heads


def _kv_heads(config: Any) -> int:
    # Grouped-query attention (Llama 3, Qwen2, Mistral...): prefixes live in key/value-head space.
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def _head_dim(config: Any) -> int:
    # Qwen3 and Gemma set head_dim explicitly, and it need not be hidden_size / heads.
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _falcon_kv_heads(config: Any) -> int:
    # Falcon: multi-query (one shared key/value head) unless the "new decoder architecture" uses GQA.
    if config.new_decoder_architecture:
        return config.num_kv_heads
    return 1 if config.multi_query else config.num_attention_heads


def _hidden(config: Any) -> int:
    return config.hidden_size


def _no_offset(config: Any) -> int:
    return 0


def _t5_decoder(config: Any) -> tuple[int, LayerShape]:
    return config.num_decoder_layers, LayerShape(num_kv_heads=config.num_heads, head_dim=config.d_kv)


def _bart_decoder(config: Any) -> tuple[int, LayerShape]:
    heads = config.decoder_attention_heads
    return config.decoder_layers, LayerShape(num_kv_heads=heads, head_dim=config.d_model // heads)


@dataclass(frozen=True)
class Family:
    """How to read one family's shapes from its config. Defaults fit the Llama-style configs."""

    kind: ModelKind
    kv_heads: Callable[[Any], int] = _kv_heads
    head_dim: Callable[[Any], int] = _head_dim
    # Width of the input embeddings; OPT embeds into word_embed_proj_dim and projects up afterwards.
    embed_dim: Callable[[Any], int] = _hidden
    # Config attribute holding a tanh soft-cap applied to the final logits (Gemma 2).
    logit_softcap_attr: str | None = None
    # Config attribute holding a factor the final logits are multiplied by (Cohere).
    logit_scale_attr: str | None = None
    # Encoder-decoders: (number of decoder layers, their self-/cross-attention shape).
    decoder: Callable[[Any], tuple[int, LayerShape]] | None = None
    # Whether encoder self-attention can take a key/value prefix. DeBERTa's disentangled attention
    # computes position scores against every key itself and calls no replaceable attention function.
    encoder_prefix: bool = True
    # First position id of a real token (RoBERTa numbers positions from padding_idx + 1).
    position_offset: Callable[[Any], int] = _no_offset
    # Positions counted by index in the sequence and not overridable (BART's learned positions):
    # rows whose prompts differ in length cannot share a batch without shifting each other.
    index_positions: bool = False


FAMILIES: dict[str, Family] = {
    "gpt2": Family("causal", kv_heads=_heads),
    "llama": Family("causal"),
    "mistral": Family("causal"),
    "qwen2": Family("causal"),
    "qwen3": Family("causal"),
    "gemma": Family("causal"),
    "gemma2": Family("causal", logit_softcap_attr="final_logit_softcapping"),
    "phi3": Family("causal"),
    "gpt_neox": Family("causal", kv_heads=_heads),
    "opt": Family("causal", kv_heads=_heads, embed_dim=lambda c: c.word_embed_proj_dim),
    "falcon": Family("causal", kv_heads=_falcon_kv_heads),
    "bloom": Family("causal", kv_heads=_heads),
    # Further causal decoders: each one entry, checked by the same tests as the families above.
    "gemma3_text": Family("causal", logit_softcap_attr="final_logit_softcapping"),
    "mixtral": Family("causal"),
    "qwen2_moe": Family("causal"),
    "starcoder2": Family("causal"),
    "olmo2": Family("causal"),
    "stablelm": Family("causal"),
    "phi": Family("causal"),
    "gptj": Family("causal", kv_heads=_heads),
    "gpt_bigcode": Family("causal", kv_heads=lambda c: 1 if c.multi_query else c.num_attention_heads),
    "cohere": Family("causal", logit_scale_attr="logit_scale"),
    # Encoder-decoders. T5's head size is its own (d_kv); mT5 and T5 v1.1 share T5's entry.
    "t5": Family("seq2seq", kv_heads=_heads, decoder=_t5_decoder),
    "mt5": Family("seq2seq", kv_heads=_heads, decoder=_t5_decoder),
    "bart": Family("seq2seq", kv_heads=_heads, decoder=_bart_decoder, index_positions=True),
    "mbart": Family("seq2seq", kv_heads=_heads, decoder=_bart_decoder, index_positions=True),
    # Encoders.
    "bert": Family("encoder", kv_heads=_heads),
    "roberta": Family("encoder", kv_heads=_heads, position_offset=lambda c: c.pad_token_id + 1),
    "deberta-v2": Family("encoder", kv_heads=_heads, encoder_prefix=False),
    "distilbert": Family("encoder", kv_heads=_heads),
}


class UnsupportedModelError(ValueError):
    """Raised for a model family softprompt has no table entry for, or a combination it cannot run."""


@dataclass(frozen=True)
class PrefixLayout:
    """The attention layers one prefix fills, site by site, in storage order.

    Like :class:`ModelShape` it has ``layers`` and ``prefix_width``, so
    :func:`softprompt.methods.base.split_prefix` cuts a flat prefix by either.
    """

    sites: tuple[tuple[Site, tuple[LayerShape, ...]], ...]

    @property
    def layers(self) -> tuple[LayerShape, ...]:
        return tuple(layer for _, layers in self.sites for layer in layers)

    @property
    def prefix_width(self) -> int:
        return sum(layer.kv_size for layer in self.layers)

    @property
    def site_names(self) -> tuple[Site, ...]:
        return tuple(name for name, _ in self.sites)

    def by_site(self, per_layer: Sequence) -> dict[Site, list]:
        """Cut a per-layer sequence in storage order (e.g. ``PrefixStates.layers``) into its sites."""
        if len(per_layer) != len(self.layers):
            raise ValueError(
                f"expected {len(self.layers)} layers for sites {self.site_names}, got {len(per_layer)}"
            )
        out, start = {}, 0
        for name, layers in self.sites:
            out[name] = list(per_layer[start : start + len(layers)])
            start += len(layers)
        return out


@dataclass(frozen=True)
class ModelShape:
    """Facts about a base model, derived once from its config; never what the user chose."""

    family: str
    kind: ModelKind
    name_or_path: str
    hidden_size: int
    embed_dim: int
    vocab_size: int
    num_attention_heads: int
    # Self-attention layers of the stack that reads the input: the causal decoder, or the encoder.
    layers: tuple[LayerShape, ...]
    # Whether the model's forward takes position_ids (Bloom derives ALiBi positions from the mask instead).
    takes_position_ids: bool
    logit_softcap: float | None = None
    logit_scale: float | None = None
    # Encoder-decoders: the decoder's layers (its self- and cross-attention share these shapes).
    decoder_layers: tuple[LayerShape, ...] = ()
    # What the model's class does (its ``AutoModelFor...``), see :func:`softprompt.kinds.head_of`.
    head: ModelHead | None = None
    encoder_prefix: bool = True
    position_offset: int = 0
    index_positions: bool = False
    # Indices of decoder layers whose state is not keys/values (linear attention, Mamba): a prefix
    # skips them, and virtual tokens that must reach their recurrent state enter as embeddings.
    recurrent_layers: tuple[int, ...] = ()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def sites(self) -> tuple[Site, ...]:
        """Every attention site of this kind of model, in the order a full prefix stores them."""
        return KINDS[self.kind].sites

    def layout(self, sites: Sequence[Site] | None = None) -> PrefixLayout:
        """The layers a prefix fills at ``sites`` (default: every site of the model), in storage order."""
        sites = self.sites if sites is None else tuple(sites)
        unknown = [site for site in sites if site not in self.sites]
        if unknown:
            raise UnsupportedModelError(
                f"{self.family} ({KINDS[self.kind].label}) has no attention site {unknown}; its sites: {self.sites}"
            )
        if "encoder" in sites and not self.encoder_prefix:
            raise UnsupportedModelError(
                f"{self.family} encoders cannot take a key/value prefix: their attention has no cache path "
                "and calls no replaceable attention function, so prefix tuning / deep prompts are not "
                f"supported on {self.family}. Prompt tuning and P-tuning are (PromptTuningConfig, PTuningConfig)."
            )
        site_layers = {"self": self.layers, "encoder": self.layers}
        site_layers["decoder"] = site_layers["cross"] = self.decoder_layers
        return PrefixLayout(tuple((site, site_layers[site]) for site in sites))

    @property
    def prefix_width(self) -> int:
        """Numbers per virtual token of a full prefix: ``sum_l 2 * kv_heads_l * head_dim_l`` over all sites."""
        return self.layout().prefix_width

    def fingerprint(self) -> dict[str, Any]:
        """The facts an adapter file records, to refuse loading onto a model of another shape."""
        facts = {
            "family": self.family,
            "hidden_size": self.hidden_size,
            "embed_dim": self.embed_dim,
            "vocab_size": self.vocab_size,
            "num_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "layers": [[layer.num_kv_heads, layer.head_dim] for layer in self.layers],
        }
        if self.decoder_layers:
            facts["decoder_layers"] = [[layer.num_kv_heads, layer.head_dim] for layer in self.decoder_layers]
        return facts


def family_of(config: Any) -> tuple[str, Family]:
    """Return ``(model_type, Family)`` for a config, or raise naming the supported families."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        supported = "; ".join(
            ", ".join(sorted(name for name, family in FAMILIES.items() if family.kind == kind))
            + f" ({entry.label})"
            for kind, entry in KINDS.items()
        )
        raise UnsupportedModelError(
            f"softprompt does not support model family {model_type!r} yet. Supported families: {supported}. "
            "A family is one entry in softprompt.families.FAMILIES."
        )
    return model_type, FAMILIES[model_type]


def model_shape(model: nn.Module) -> ModelShape:
    """Derive the :class:`ModelShape` of a ``transformers`` model from its config."""
    config = model.config
    name, family = family_of(config)
    layer = LayerShape(num_kv_heads=family.kv_heads(config), head_dim=family.head_dim(config))
    softcap = getattr(config, family.logit_softcap_attr) if family.logit_softcap_attr else None
    decoder_layers: tuple[LayerShape, ...] = ()
    if family.decoder is not None:
        count, decoder_layer = family.decoder(config)
        decoder_layers = tuple(decoder_layer for _ in range(count))
    return ModelShape(
        family=name,
        kind=family.kind,
        name_or_path=str(getattr(config, "_name_or_path", "") or ""),
        hidden_size=config.hidden_size,
        embed_dim=family.embed_dim(config),
        vocab_size=config.vocab_size,
        num_attention_heads=config.num_attention_heads,
        layers=tuple(layer for _ in range(config.num_hidden_layers)),
        takes_position_ids="position_ids" in inspect.signature(model.forward).parameters,
        logit_softcap=softcap,
        logit_scale=getattr(config, family.logit_scale_attr) if family.logit_scale_attr else None,
        decoder_layers=decoder_layers,
        head=head_of(model),
        encoder_prefix=family.encoder_prefix,
        position_offset=family.position_offset(config),
        index_positions=family.index_positions,
    )
