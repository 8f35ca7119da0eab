"""Model facts, read from the model itself once and kept in an immutable ``ModelShape``.

A model is supported because of what it is, not because it is listed: :func:`model_shape` reads
the standard config fields (vocabulary, hidden width, query heads), the input-embedding width from
the embedding module, and the attention shapes from what the model actually computes — a one-token
forward through a recording cache (:mod:`softprompt.injection.capture`) gives every decoder
layer's key and value shapes and shows which layers keep keys/values of their own, which carry a
recurrent state instead, and which read another layer's keys/values; an encoder's attention calls
give its layers' shapes. Per-layer head sizes (Gemma 4), keys and values of different widths
(latent attention: DeepSeek-V3), grouped and multi-query heads (Falcon), embedding projections
(OPT, ELECTRA, ALBERT) and hybrid stacks (Jamba, Qwen3-Next) come out right with no table entry.

What the probe finds decides what a prefix fills: a layer that reads another layer's keys/values
(Gemma 3n / Gemma 4 KV sharing) gets no prefix slots of its own — it reads the prefix of the layer
it shares; a recurrent layer (linear attention, Mamba) gets none either, and prefix tuning on a
stack with no attention layer is refused with the reason; a sparse-attention layer (DSA) has its
indexer keep the prefix out of the keys it ranks and in every query's selection. Every slot a layout holds is proven
read: one more tiny forward puts a random prefix in every layer through the real injection path
(the prefix caches, softprompt's attention function), and the output's gradient must reach each
layer's prefix. A causal layer it does not reach refuses the model; an encoder module or decoder
site it does not reach refuses prefixes there, naming the layers. Models the probe cannot read
(their own cache classes, layers run twice per token) are refused
naming what failed. :data:`FAMILIES` holds only what the probe cannot see, each entry saying why (none today).

A :class:`PrefixLayout` lists the attention sites (see :data:`softprompt.kinds.Site`) and layers
one prefix fills, in the order its flat ``(P, F)`` table stores them.

Examples:
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    ...                                      num_key_value_heads=2, intermediate_size=64, vocab_size=128))
    >>> shape = model_shape(model)
    >>> shape.family, shape.kind, shape.num_layers, shape.layers[0]
    ('llama', 'causal', 2, LayerShape(num_kv_heads=2, head_dim=8, value_head_dim=8))
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers.models.auto import modeling_auto

from softprompt import compat
from softprompt.kinds import KINDS, ModelHead, ModelKind, Site, head_of

EncoderPrefixRoute = Literal["attention", "positions"]
SelfPrefixRoute = Literal["cache", "positions"]


@dataclass(frozen=True)
class LayerShape:
    """Key/value shape of one attention layer: a prefix is keys ``(num_kv_heads, P, head_dim)`` and
    values ``(num_kv_heads, P, value_head_dim)`` in it.

    Values are as wide as keys unless ``value_head_dim`` says otherwise (latent attention caches a
    compressed latent as its "keys" and a rotary key part as its "values").
    """

    num_kv_heads: int
    head_dim: int
    value_head_dim: int | None = None

    def __post_init__(self) -> None:
        if self.value_head_dim is None:
            object.__setattr__(self, "value_head_dim", self.head_dim)

    @property
    def key_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def value_size(self) -> int:
        return self.num_kv_heads * self.value_head_dim

    @property
    def kv_size(self) -> int:
        """Numbers one virtual token needs in this layer: a key and a value."""
        return self.key_size + self.value_size

    def fingerprint(self) -> list[int]:
        # [heads, width] as files have always recorded it; a third number only where values differ.
        if self.value_head_dim == self.head_dim:
            return [self.num_kv_heads, self.head_dim]
        return [self.num_kv_heads, self.head_dim, self.value_head_dim]


class UnsupportedModelError(ValueError):
    """Raised for a model softprompt cannot read, or a combination of model and method it cannot run."""


@dataclass(frozen=True)
class Quirk:
    """What a family does that its shape and modules do not show. Defaults: nothing unusual."""

    # Whether encoder self-attention can take a key/value prefix even though the probe saw it call
    # softprompt's attention function.
    encoder_prefix: bool = True


# What the probe cannot see, per model type. Everything else is read from the model (model_shape).
FAMILIES: dict[str, Quirk] = {}


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
    """Facts about a base model, read once from its config and a probe; never what the user chose."""

    family: str
    kind: ModelKind
    name_or_path: str
    hidden_size: int
    embed_dim: int
    vocab_size: int
    num_attention_heads: int
    # Self-attention layers of the stack that reads the input (the causal decoder, or the encoder)
    # that a prefix fills: those with keys/values of their own. A decoder layer that reads another
    # layer's keys/values (Gemma 3n / Gemma 4 KV sharing) has none: it sees the prefix of the layer
    # it reads. A recurrent layer has none either (see recurrent_layers).
    layers: tuple[LayerShape, ...]
    # Whether the model's forward takes position_ids (Bloom derives ALiBi positions from the mask instead).
    takes_position_ids: bool
    # Encoder-decoders: the decoder's layers (its self- and cross-attention share these shapes).
    decoder_layers: tuple[LayerShape, ...] = ()
    # What the model's class does (its ``AutoModelFor...``), see :func:`softprompt.kinds.head_of`.
    head: ModelHead | None = None
    encoder_prefix: bool = True
    # Why encoder self-attention cannot take a prefix, where it cannot (what the probe found).
    encoder_prefix_refusal: str = ""
    # How an encoder prefix enters: "attention" — softprompt's attention function prepends it
    # (injection/attention.py); "positions" — placeholder positions whose key/value projections the
    # prefix overwrites (injection/positional_prefix.py), for attention computed inline. The layout
    # (H, P, D) per layer is the same either way.
    encoder_prefix_route: EncoderPrefixRoute = "attention"
    # Encoder-decoders: (site, why) for the decoder sites ("decoder", "cross") that cannot take one.
    decoder_refusals: tuple[tuple[Site, str], ...] = ()
    position_offset: int = 0
    index_positions: bool = False
    # Indices of decoder layers whose state is not keys/values (linear attention, Mamba): a prefix
    # skips them, and virtual tokens that must reach their recurrent state enter as embeddings.
    recurrent_layers: tuple[int, ...] = ()
    # Decoder cache index of each of ``layers`` (empty: 0, 1, 2...); the caches place prefixes there.
    attention_layers: tuple[int, ...] = ()
    # How a causal decoder's prefix enters: "cache" — its key/value cache; "positions" — a decoder
    # that keeps no cache (GPT-1) takes it at placeholder positions before the input, whose keys and
    # values its key/value projections write from the prefix (injection/positional_prefix.py).
    self_prefix_route: SelfPrefixRoute = "cache"
    # Indices of decoder layers whose attention is sparse, over the keys an indexer ranks (DSA): a
    # prefix there is attended by every token and kept out of the ranking (injection/sparse_indexer.py).
    indexed_layers: tuple[int, ...] = ()

    @property
    def layer_indices(self) -> tuple[int, ...]:
        """The decoder cache index of each of :attr:`layers`, in order."""
        return self.attention_layers or tuple(range(len(self.layers)))

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
            reason = self.encoder_prefix_refusal or (
                "their attention has no cache path and calls no replaceable attention function"
            )
            raise UnsupportedModelError(
                f"{self.family} encoders cannot take a key/value prefix: {reason}, so prefix tuning / deep "
                f"prompts are not supported on {self.family}. Prompt tuning and P-tuning are "
                "(PromptTuningConfig, PTuningConfig)."
            )
        refused = [why for site, why in self.decoder_refusals if site in sites]
        if refused:
            raise UnsupportedModelError(
                f"{self.family} decoders cannot take a key/value prefix at {sites}: {'; '.join(refused)}, so "
                f"prefix tuning is not supported there on {self.family}. Prompt tuning and P-tuning are "
                "(PromptTuningConfig, PTuningConfig)."
            )
        if "self" in sites and not self.layers:
            raise UnsupportedModelError(
                f"{self.family} has no attention layer with keys/values of its own (its layers "
                f"{list(self.recurrent_layers)} carry a recurrent state), so a key/value prefix has nowhere "
                "to go: prefix tuning is not supported on it. Prompt tuning and P-tuning are."
            )
        site_layers = {"self": self.layers, "encoder": self.layers}
        site_layers["decoder"] = site_layers["cross"] = self.decoder_layers
        return PrefixLayout(tuple((site, site_layers[site]) for site in sites))

    @property
    def prefix_width(self) -> int:
        """Numbers per virtual token of a full prefix: ``sum_l kv_heads_l * (key_l + value_l widths)``."""
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
            "layers": [layer.fingerprint() for layer in self.layers],
        }
        if self.decoder_layers:
            facts["decoder_layers"] = [layer.fingerprint() for layer in self.decoder_layers]
        # Facts files made before the probe did not record: only where they say something.
        if self.layer_indices != tuple(range(len(self.layers))):
            facts["attention_layers"] = list(self.layer_indices)
        if self.recurrent_layers:
            facts["recurrent_layers"] = list(self.recurrent_layers)
        return facts


# transformers' auto mappings of models that write text token by token.
_GENERATING_MAPPINGS = ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES")


def kind_of(config: Any, head: ModelHead | None = None) -> ModelKind:
    """Causal decoder, encoder-decoder or encoder, from a config (and the model's head, when known)
    and ``transformers``' own auto mappings — no table.

    Examples:
        >>> from transformers import AlbertConfig, LlamaConfig
        >>> kind_of(LlamaConfig()), kind_of(AlbertConfig())
        ('causal', 'encoder')
    """
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    if head == "causal-lm":
        return "causal"
    # A classifier, bare backbone or config: a decoder when its type has a causal LM (Llama, Qwen...)
    # or generates text from images (Mistral 4) and has no masked LM; an encoder otherwise (BERT
    # has both, ALBERT only a masked LM).
    model_type = config.model_type
    generates = any(model_type in getattr(modeling_auto, table) for table in _GENERATING_MAPPINGS)
    masked = model_type in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return "causal" if generates and not masked else "encoder"


@dataclass(frozen=True)
class Family:
    """What a model type's config alone tells softprompt: its kind and its quirks."""

    kind: ModelKind
    quirk: Quirk


def family_of(config: Any) -> tuple[str, Family]:
    """``(model_type, Family)`` for a config, without building the model (no type is refused here)."""
    return config.model_type, Family(kind_of(config), FAMILIES.get(config.model_type, Quirk()))


def _config_value(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise UnsupportedModelError(
        f"cannot read the shape of this {config.model_type} model: its config has none of {list(names)}"
    )


@dataclass(frozen=True)
class _Probed:
    """What a probe read from one model (cached per model: the probe runs once)."""

    layers: tuple[LayerShape, ...]
    attention_layers: tuple[int, ...] = ()
    recurrent_layers: tuple[int, ...] = ()
    indexed_layers: tuple[int, ...] = ()
    self_prefix_route: SelfPrefixRoute = "cache"
    decoder_layers: tuple[LayerShape, ...] = ()
    encoder_prefix: bool = True
    encoder_prefix_refusal: str = ""
    encoder_prefix_route: EncoderPrefixRoute = "attention"
    decoder_refusals: tuple[tuple[Site, str], ...] = ()


_PROBED: weakref.WeakKeyDictionary[nn.Module, _Probed] = weakref.WeakKeyDictionary()


def _layer_shape(model_type: str, index: int, keys: torch.Size, values: torch.Size) -> LayerShape:
    # keys (B, H, T, D_k), values (B, H, T, D_v)
    if keys[1] != values[1]:
        raise UnsupportedModelError(
            f"{model_type} layer {index} caches keys with {keys[1]} heads and values with {values[1]}; "
            "softprompt's prefixes need one head count per layer"
        )
    return LayerShape(num_kv_heads=keys[1], head_dim=keys[-1], value_head_dim=values[-1])


def _decoder_probe(model: nn.Module) -> _Probed:
    """A causal decoder's layers (:func:`_decoder_layers`), proven causal: its first token's output
    must not change with the token after it."""
    from softprompt.injection.capture import attends_to_later_tokens  # (above families in the import order)

    probed = _decoder_layers(model)
    # (a backbone that takes no attention mask is refused for that when it is wrapped)
    if compat.reads_argument(compat.backbone(model), "attention_mask") and attends_to_later_tokens(model):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not causal: its first token's output changes with the token after "
            "it, so a prompt before the input, a next-token loss and generation are not what it computes. "
            "Build it as a decoder (transformers' BERT-style LMs need config.is_decoder=True)"
        )
    return probed


def _decoder_layers(model: nn.Module) -> _Probed:
    """A causal decoder's layers from one token through a recording cache (see
    :func:`softprompt.injection.capture.read_decoder_cache`), or, where it keeps no cache, from its
    key/value projections."""
    from softprompt.injection.capture import read_decoder_cache, read_indexers, unread_decoder_layers
    from softprompt.injection.sparse_indexer import rank_real_keys

    model_type = model.config.model_type
    backbone = compat.backbone(model)
    if not any(compat.reads_argument(backbone, name) for name in ("past_key_values", "cache")):
        return _cacheless_decoder_probe(model, backbone)
    reading = read_decoder_cache(model)
    if reading.indexed:  # before the proof below: it runs a prefix through the indexers
        rank_real_keys(read_indexers(model))
    attention = tuple(sorted(reading.keys))
    layers = tuple(_layer_shape(model_type, i, reading.keys[i], reading.values[i]) for i in attention)
    # Prompt tuning enters a causal decoder through these prefixes too: one a layer ignores is wrong
    # for every method, so the model is refused rather than given slots nothing reads.
    unread = unread_decoder_layers(model, attention, reading) if attention else []
    if unread:
        raise UnsupportedModelError(
            f"{model_type}'s layers {unread} write keys/values to the cache but do not read a prefix placed "
            "there (a random one left the output as it was, or no gradient flows back through them), so "
            "softprompt cannot prompt this model. A 4-bit bitsandbytes model run on the CPU before wrapping "
            "has weights repacked for inference, with no backward: wrap it before its first forward pass"
        )
    return _Probed(
        layers=layers,
        attention_layers=attention,
        recurrent_layers=reading.recurrent,
        indexed_layers=reading.indexed,
    )


def _cacheless_decoder_probe(model: nn.Module, backbone: nn.Module) -> _Probed:
    """A causal decoder that keeps no key/value cache (GPT-1): its layers from its key/value
    projections, which take the prefix at placeholder positions before the input."""
    from softprompt.injection.capture import read_projection_layers

    model_type = model.config.model_type
    shapes, refusal = read_projection_layers(model, backbone, causal=True)
    if refusal:
        raise UnsupportedModelError(
            f"{model_type}'s backbone ({type(backbone).__name__}) keeps no key/value cache, and a prefix "
            f"cannot enter at placeholder positions either: {refusal}"
        )
    layers = tuple(_layer_shape(model_type, i, keys, values) for i, (keys, values) in enumerate(shapes))
    return _Probed(layers=layers, self_prefix_route="positions")


def _encoder_layers(
    model: nn.Module, stack: nn.Module, config: Any
) -> tuple[tuple[LayerShape, ...], str, EncoderPrefixRoute]:
    """An encoder stack's self-attention layers, one per distinct attention module, why a prefix
    cannot enter them ("" where it can) and the route it enters by: softprompt's attention function
    where the attention calls one, else the key/value projections at placeholder positions where a
    probe proves that route."""
    from softprompt.injection.capture import read_attention_calls, read_projection_layers

    calls, refusal = read_attention_calls(model, stack)
    route: EncoderPrefixRoute = "attention"
    if refusal:
        projected, positional_refusal = read_projection_layers(model, stack)
        if positional_refusal:
            refusal = (
                f"{refusal}, and its key/value projections take no prefix at placeholder positions: "
                f"{positional_refusal}"
            )
        else:
            calls, refusal, route = projected, "", "positions"
    if refusal:
        # Not readable, so no prefix: the layers are the config's, for the adapter fingerprint only.
        # (the stack's own config where it has one: T5Gemma nests its encoder's sizes)
        config = getattr(stack, "config", config)
        heads = _config_value(config, "num_attention_heads")
        layer = LayerShape(num_kv_heads=heads, head_dim=_config_value(config, "hidden_size") // heads)
        return tuple(layer for _ in range(_config_value(config, "num_hidden_layers"))), refusal, route
    # A module called for several layers (ALBERT's shared layer group) reads one prefix in every
    # call: it gets one layer of prefix, never slots that no call reads.
    return tuple(_layer_shape(config.model_type, i, k, v) for i, (k, v) in enumerate(calls)), "", route


def _seq2seq_probe(model: nn.Module) -> _Probed:
    from softprompt.injection.capture import read_encoder_decoder_cache

    model_type = model.config.model_type
    decoder, cross = read_encoder_decoder_cache(model)
    if sorted(decoder.keys) != list(range(len(decoder.keys))) or sorted(cross.keys) != sorted(decoder.keys):
        raise UnsupportedModelError(
            f"{model_type}'s decoder layers {sorted(decoder.keys)} wrote self-attention keys/values and "
            f"{sorted(cross.keys)} cross-attention ones; softprompt needs both in every decoder layer"
        )
    decoder_layers = tuple(
        _layer_shape(model_type, i, decoder.keys[i], decoder.values[i]) for i in sorted(decoder.keys)
    )
    for i, layer in enumerate(decoder_layers):
        if _layer_shape(model_type, i, cross.keys[i], cross.values[i]) != layer:
            raise UnsupportedModelError(
                f"{model_type}'s decoder layer {i} has cross-attention keys/values of another shape than "
                "its self-attention ones; softprompt needs them alike"
            )
    layers, refusal, route = _encoder_layers(model, model.get_encoder(), model.config)
    return _Probed(
        layers=layers,
        decoder_layers=decoder_layers,
        encoder_prefix=not refusal,
        encoder_prefix_refusal=refusal,
        encoder_prefix_route=route,
        decoder_refusals=_decoder_refusals(model, decoder, cross),
    )


def _decoder_refusals(model: nn.Module, decoder, cross) -> tuple[tuple[Site, str], ...]:
    """Why a prefix cannot enter the decoder's self-attention (``"decoder"``) or cross-attention
    (``"cross"``), for each site where a random one does not reach the logits from every layer."""
    from softprompt.injection.capture import unread_decoder_sites

    try:
        unread = unread_decoder_sites(model, decoder, cross)
    except UnsupportedModelError as error:
        return (("decoder", str(error)), ("cross", str(error)))
    return tuple(
        (
            site,
            f"its decoder layers {layers} do not read a {site} prefix (a random one left the logits as they were)",
        )
        for site, layers in unread.items()
        if layers
    )


def _probe(model: nn.Module, kind: ModelKind) -> _Probed:
    if model in _PROBED:
        return _PROBED[model]
    if kind == "causal":
        probed = _decoder_probe(model)
    elif kind == "seq2seq":
        probed = _seq2seq_probe(model)
    else:
        layers, refusal, route = _encoder_layers(model, model.base_model, model.config)
        probed = _Probed(
            layers=layers,
            encoder_prefix=not refusal,
            encoder_prefix_refusal=refusal,
            encoder_prefix_route=route,
        )
    _PROBED[model] = probed
    return probed


def _position_offset(model: nn.Module, kind: ModelKind) -> int:
    """First position id of a real token: RoBERTa-style embeddings (RoBERTa, XLM-R, MPNet..., and
    their causal LMs) number positions from ``padding_idx + 1``, which their position table reserves."""
    if kind == "seq2seq":
        return 0
    positions = getattr(getattr(model.base_model, "embeddings", None), "position_embeddings", None)
    padding = getattr(positions, "padding_idx", None)
    return 0 if padding is None else padding + 1


def _index_positions(model: nn.Module, kind: ModelKind) -> bool:
    """Whether the decoder numbers positions by index (BART-style learned or sinusoidal positions,
    ``embed_positions``) with no ``position_ids`` to override them; T5's relative positions do not."""
    if kind != "seq2seq":
        return False
    decoder = model.get_decoder()
    return (
        hasattr(decoder, "embed_positions")
        and "position_ids" not in inspect.signature(decoder.forward).parameters
    )


def model_shape(model: nn.Module) -> ModelShape:
    """Derive the :class:`ModelShape` of a ``transformers`` model from its config and a probe.

    The probe (a one-token forward in eval mode, no gradients) runs once per model; later calls
    reuse what it read. Raises :class:`UnsupportedModelError` naming what could not be read.
    """
    config = model.config
    head = head_of(model)
    kind = kind_of(config, head)
    # Before the probe's first forward: bitsandbytes would repack 4-bit weights for inference on the
    # CPU, a kernel with no backward (the prompt would never train).
    compat.keep_differentiable(model)
    probed = _probe(model, kind)
    quirk = family_of(config)[1].quirk
    # Multimodal models (Gemma 3, Fuyu...) keep the language model's sizes in their text config.
    text = config.get_text_config(decoder=True)
    embeddings = model.get_input_embeddings()
    return ModelShape(
        family=config.model_type,
        kind=kind,
        name_or_path=str(getattr(config, "_name_or_path", "") or ""),
        hidden_size=_config_value(text, "hidden_size", "d_model", "n_embd"),
        # The width virtual tokens must have: OPT, ELECTRA and ALBERT embed narrower and project up.
        # (the module's attribute: ZeRO-3 shards the weight itself to shape [0])
        embed_dim=getattr(embeddings, "embedding_dim", None) or embeddings.weight.shape[-1],
        vocab_size=getattr(text, "vocab_size", None) or getattr(embeddings, "num_embeddings", None),
        # (none in a stack of state-space layers only: Mamba)
        num_attention_heads=_config_value(text, "num_attention_heads", "n_head", "num_heads")
        if probed.layers
        else getattr(text, "num_attention_heads", 0),
        layers=probed.layers,
        takes_position_ids="position_ids" in inspect.signature(model.forward).parameters,
        decoder_layers=probed.decoder_layers,
        head=head,
        encoder_prefix=probed.encoder_prefix and quirk.encoder_prefix,
        encoder_prefix_refusal=probed.encoder_prefix_refusal,
        encoder_prefix_route=probed.encoder_prefix_route,
        decoder_refusals=probed.decoder_refusals,
        position_offset=_position_offset(model, kind),
        index_positions=_index_positions(model, kind),
        recurrent_layers=probed.recurrent_layers,
        attention_layers=probed.attention_layers,
        indexed_layers=probed.indexed_layers,
        self_prefix_route=probed.self_prefix_route,
    )
