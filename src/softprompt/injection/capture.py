"""Recording what a frozen model computes: keys/values per layer, and which attention modules it calls.

* :class:`RecordingCache` records the keys/values each decoder layer hands its cache in one forward
  pass and stores nothing; its layers are the model's own cache layers (recurrent, sliding, shared
  layers typed as the model expects them), so hybrid models run through it too;
* :func:`read_decoder_cache`, :func:`read_encoder_decoder_cache`, :func:`read_attention_calls` and
  :func:`read_projection_layers` (encoder prefixes through positions) are the probes
  :func:`softprompt.families.model_shape` reads a model's shape with;
  :func:`unread_decoder_layers` and :func:`unread_encoder_modules` prove what they found: a random
  prefix through the real injection path must reach the output from every layer it is laid out in;
* :func:`virtual_tokens_prefix` turns a causal decoder's virtual tokens into the prefix they amount
  to: in a causal decoder the prompt never attends to the input, so running it once, alone, gives
  the keys/values it would leave in every row;
* :func:`site_states` captures what real tokens leave at every attention site (prefix init);
* :func:`attention_modules` lists the attention modules an encoder calls, in order (encoder prefixes
  name the modules they enter).

Examples:
    >>> import transformers as T
    >>> from softprompt.families import model_shape
    >>> model = T.GPT2LMHeadModel(T.GPT2Config(n_embd=8, n_layer=2, n_head=2, vocab_size=16)).eval()
    >>> states = site_states(model, model_shape(model), torch.tensor([3, 4, 5]))
    >>> [tuple(k.shape) for k, v in states["self"]]   # per layer (kv_heads, P, head_dim)
    [(2, 3, 4), (2, 3, 4)]
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache
from transformers.cache_utils import DynamicIndexedLayer, LinearAttentionCacheLayerMixin

from softprompt import compat
from softprompt.compat import cache_kwargs
from softprompt.families import ModelShape, UnsupportedModelError, model_shape
from softprompt.injection.attention import (
    PREFIX_ATTENTIONS,
    AttentionCapture,
    AttentionPrefix,
    use_prefix_attention,
)
from softprompt.injection.caches import encoder_decoder_prefix_cache, prefix_cache
from softprompt.injection.positional_prefix import PositionalPrefix, positional_prefix
from softprompt.kinds import Site
from softprompt.methods.base import PrefixStates, PromptOutput
from softprompt.sharding import whole_while_running


class RecordingCache(DynamicCache):
    """A cache that records the keys/values each layer hands it and returns them unchanged.

    It stores nothing (a pure function of its input, so gradient checkpointing may replay a layer).
    With a ``config`` its layers are the ones ``DynamicCache(config=...)`` builds: linear-attention
    and state-space layers keep their conv/recurrent state as the model expects, and layers that read
    another layer's keys/values are the model's own placeholders; without one, layers grow on demand.
    """

    def __init__(self, config=None) -> None:
        super().__init__(config=config)
        self.recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.writes: Counter[int] = Counter()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        while self.layer_class_to_replicate is not None and len(self.layers) <= layer_idx:
            self.layers.append(self.layer_class_to_replicate())
        self.recorded[layer_idx] = (key_states, value_states)
        self.writes[layer_idx] += 1
        return key_states, value_states

    def update_indexer(self, indexer_key_states: torch.Tensor, layer_idx: int) -> torch.Tensor:
        # A sparse-attention indexer's keys (B, T, D), returned as they came, stored nowhere.
        return indexer_key_states


def recorded_states(cache: RecordingCache, layers: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``(keys, values)`` (B, H, T, D) a :class:`RecordingCache` recorded for cache ``layers``."""
    missing = [i for i in layers if i not in cache.recorded]
    if missing:
        raise RuntimeError(
            f"layers {missing} wrote nothing to the cache, though the model's probe saw them write keys/values"
        )
    return [cache.recorded[i] for i in layers]


# ------------------------------------------------------------------------------------------ probes
@dataclass(frozen=True)
class CacheReading:
    """What one forward through a :class:`RecordingCache` showed, per cache layer index.

    ``keys`` / ``values``: the shapes (B, H, T, D) each layer that wrote keys/values wrote (a layer
    reading another layer's keys/values writes none); ``recurrent``: layers holding a conv or
    recurrent state (linear attention, Mamba).
    """

    keys: dict[int, torch.Size]
    values: dict[int, torch.Size]
    recurrent: tuple[int, ...] = ()
    indexed: tuple[int, ...] = ()


def _reading(cache: RecordingCache) -> CacheReading:
    return CacheReading(
        keys={i: k.shape for i, (k, _) in cache.recorded.items()},
        values={i: v.shape for i, (_, v) in cache.recorded.items()},
        recurrent=tuple(
            i for i, layer in enumerate(cache.layers) if isinstance(layer, LinearAttentionCacheLayerMixin)
        ),
        indexed=tuple(i for i, layer in enumerate(cache.layers) if isinstance(layer, DynamicIndexedLayer)),
    )


def _probe_ids(model: nn.Module, length: int = 1) -> torch.Tensor:
    return torch.zeros(1, length, dtype=torch.long, device=model.get_input_embeddings().weight.device)


def _run_probe(model: nn.Module, what: str, forward) -> None:
    """Run ``forward()`` in eval mode without gradients; a failure names the model and the probe.

    A base partitioned by ZeRO-3 before its engine exists is gathered module by module meanwhile.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), whole_while_running(model):
            forward()
    except Exception as error:
        raise UnsupportedModelError(
            f"cannot read the shape of this {model.config.model_type} model: {what} failed with "
            f"{type(error).__name__}: {error}"
        ) from error
    finally:
        model.train(was_training)


def read_decoder_cache(model: nn.Module) -> CacheReading:
    """One token through a causal LM's backbone with a :class:`RecordingCache`: what each layer caches."""
    backbone = compat.backbone(model)
    try:
        cache = RecordingCache(model.config)
    except Exception as error:  # DynamicCache(config=...) reads per-layer fields the config may lack
        raise UnsupportedModelError(
            f"cannot read the shape of this {model.config.model_type} model: transformers builds no cache "
            f"from its config ({type(error).__name__}: {error})"
        ) from error
    before = len(cache.layers)

    def forward():
        backbone(input_ids=_probe_ids(model), use_cache=True, **cache_kwargs(backbone, cache))

    _run_probe(model, "a one-token forward through a recording cache", forward)
    model_type = model.config.model_type
    repeated = sorted(i for i, count in cache.writes.items() if count > 1)
    if repeated or len(cache.layers) != before:
        raise UnsupportedModelError(
            f"{model_type} runs some layers more than once per token (its cache grew from {before} to "
            f"{len(cache.layers)} layers during a forward; layers written twice: {repeated}): a prefix per "
            "layer has no single place there"
        )
    if not cache.recorded and not any(
        isinstance(layer, LinearAttentionCacheLayerMixin) for layer in cache.layers
    ):
        raise UnsupportedModelError(
            f"cannot read the shape of this {model_type} model: a one-token forward wrote no "
            "keys/values to a transformers cache (it keeps a state of its own, or no cache at all)"
        )
    return _reading(cache)


def attends_to_later_tokens(model: nn.Module) -> bool:
    """Whether the first position's output of a causal LM's backbone moves when the second token
    changes (a bidirectional encoder in a causal-LM class: BERT-style LMs built without ``is_decoder``).
    One row at a time, so no batch effect enters the answer."""
    backbone = compat.backbone(model)
    device = next(backbone.parameters()).device  # (ProphetNet's decoder wrapper has no get_input_embeddings)
    firsts: list[torch.Tensor] = []

    def forward():
        for second in (4, 5):
            ids = torch.tensor([[3, second]], device=device)
            output = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            firsts.append(output[0, 0].float())

    _run_probe(model, "a two-token forward", forward)
    return not torch.allclose(*firsts, atol=1e-6, rtol=1e-5)


def read_indexers(model: nn.Module) -> dict[nn.Module, int]:
    """The sparse-attention indexers of a causal LM's backbone — the modules that call their cache's
    ``update_indexer`` — each with the cache layer index it updates (one token's forward)."""
    backbone = compat.backbone(model)
    running: list[nn.Module] = []
    indexers: dict[nn.Module, int] = {}

    class NotingCache(RecordingCache):
        def update_indexer(self, indexer_key_states: torch.Tensor, layer_idx: int) -> torch.Tensor:
            indexers.setdefault(running[-1], layer_idx)
            return indexer_key_states

    def enter(module, args):
        running.append(module)

    def leave(module, args, output):
        running.pop()

    def forward():
        cache = NotingCache(model.config)
        with ExitStack() as hooks:
            for module in backbone.modules():
                hooks.callback(module.register_forward_pre_hook(enter).remove)
                hooks.callback(module.register_forward_hook(leave).remove)
            backbone(input_ids=_probe_ids(model), use_cache=True, **cache_kwargs(backbone, cache))

    _run_probe(model, "a one-token forward finding its sparse-attention indexers", forward)
    return indexers


def read_encoder_decoder_cache(model: nn.Module) -> tuple[CacheReading, CacheReading]:
    """One token through an encoder-decoder: what each decoder layer caches for self- and cross-attention."""
    cache = EncoderDecoderCache(RecordingCache(), RecordingCache())
    ids = _probe_ids(model)

    def forward():  # the two stacks, not the head (a classifier head wants whole sentences)
        _run_decoder(model, ids, model.get_encoder()(input_ids=ids).last_hidden_state, cache)

    _run_probe(model, "a one-token forward through a recording cache", forward)
    return _reading(cache.self_attention_cache), _reading(cache.cross_attention_cache)


def _run_decoder(
    model: nn.Module, ids: torch.Tensor, encoded: torch.Tensor, cache: EncoderDecoderCache
) -> None:
    """An encoder-decoder's decoder over ``ids`` (1, T), reading ``encoded`` — the encoding of ``ids`` —
    with ``cache``. A decoder that wants masks its model builds (FSMT's) runs within the whole model,
    which builds them (and encodes ``ids`` again)."""
    decoder = model.get_decoder()
    if _required_arguments(decoder) - {"input_ids", "encoder_hidden_states"}:
        model(input_ids=ids, decoder_input_ids=ids, use_cache=True, **cache_kwargs(model, cache))
    else:
        decoder(input_ids=ids, encoder_hidden_states=encoded, use_cache=True, **cache_kwargs(decoder, cache))


def _required_arguments(module: nn.Module) -> set[str]:
    """The arguments ``module.forward`` cannot do without (no default)."""
    parameters = inspect.signature(module.forward).parameters.values()
    return {
        p.name
        for p in parameters
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _attention_calls(stack: nn.Module) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    capture = AttentionCapture()
    with torch.no_grad():
        stack(input_ids=_probe_ids(stack), softprompt_capture=capture)
    return capture.calls


def read_attention_calls(
    model: nn.Module, stack: nn.Module
) -> tuple[list[tuple[torch.Size, torch.Size]], str]:
    """The (keys, values) shapes (B, H, T, D) of each distinct attention module encoder ``stack`` calls,
    in call order, and "" — or no shapes and why its self-attention cannot take a prefix.

    The probe routes ``model``'s attention through softprompt's function for one token and switches
    it back to what it was.
    """
    if not compat.can_switch_attention(model):
        return [], "its attention calls no replaceable attention function (transformers cannot switch it)"
    original = compat.attention_implementation(model)
    try:
        use_prefix_attention(model)
        if compat.attention_implementation(model) not in PREFIX_ATTENTIONS:
            return [], f"its attention stays {original!r} when asked to switch to softprompt's"
        was_training = model.training
        model.eval()
        try:
            with whole_while_running(model):
                first = _first_calls(_attention_calls(stack))
                unread = unread_encoder_modules(stack, first) if first else []
        finally:
            model.train(was_training)
    except Exception as error:
        return (
            [],
            f"a one-token forward through softprompt's attention failed ({type(error).__name__}: {error})",
        )
    finally:
        if original not in PREFIX_ATTENTIONS and compat.attention_implementation(model) != original:
            model.set_attn_implementation(original)
    if not first:
        return [], "its attention never calls the attention function it is switched to"
    if unread:
        names = {module: name for name, module in stack.named_modules()}
        return [], (
            f"its attention modules {[names.get(first[i][0], '?') for i in unread]} ignore the keys/values "
            "handed to them (a random prefix there left the encoder's output as it was)"
        )
    return [(keys, values) for _, keys, values in first], ""


def read_projection_layers(
    model: nn.Module, stack: nn.Module, causal: bool = False
) -> tuple[list[tuple[torch.Size, torch.Size]], str]:
    """The (keys, values) shapes (1, H, 1, D) of each layer of ``stack`` whose key/value projections
    take a positional prefix, and "" — or no shapes and why they cannot.

    The route is proven: a random prefix of 2 slots per layer, written through the real hooks, must
    reach the stack's output from every layer (its gradient, as :func:`unread_encoder_modules` proves
    the attention route). An encoder's placeholders stand after one token; a ``causal`` stack's
    before it, and only the token's output counts (its placeholders' own outputs are dropped).
    """
    was_training = model.training
    model.eval()
    try:
        with whole_while_running(model):
            found = positional_prefix(model, stack)
        shapes = [layer.shapes() for layer in found.layers]
        with torch.random.fork_rng(), whole_while_running(model):
            like = model.get_input_embeddings().weight
            unread = _unread(lambda states: _proof_forward(model, found, states, causal), shapes, like)
    except UnsupportedModelError as refusal:
        return [], str(refusal)
    except Exception as error:
        return [], f"a forward through its key/value projections failed ({type(error).__name__}: {error})"
    finally:
        model.train(was_training)
    if unread:
        names = {module: name for name, module in stack.named_modules()}
        return [], (
            f"its projections {[names[found.layers[i].keys[0]] for i in unread]} do not reach the output "
            "(a random prefix written there left it as it was)"
        )
    return shapes, ""


def _proof_forward(
    model: nn.Module, found: PositionalPrefix, states: list[tuple[torch.Tensor, torch.Tensor]], causal: bool
) -> torch.Tensor:
    """The stack's output for one token and P placeholder tokens — after it (an encoder: (1, 1 + P, H)),
    or before it (a causal stack: the token's output (1, 1, H)) — with the model's own token ids and
    positions: what a placeholder holds is overwritten where it is read."""
    slots = states[0][0].shape[-2]
    ids = _probe_ids(model, 1 + slots)
    first = 0 if causal else 1
    with found.entered(states, torch.arange(first, first + slots, device=ids.device)[None]):
        output = found.stack(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    return output[:, slots:] if causal else output


def _first_calls(calls) -> list[tuple[nn.Module, torch.Size, torch.Size]]:
    """Each distinct module of attention ``calls`` once, in call order, with its key/value shapes."""
    first: dict[nn.Module, tuple[nn.Module, torch.Size, torch.Size]] = {}
    for module, keys, values in calls:
        first.setdefault(module, (module, keys.shape, values.shape))
    return list(first.values())


# ------------------------------------------------------------------------------------------ proofs
_PROOF_LENGTH = 2  # prefix slots per layer in a proof forward


def _unread(forward, shapes: Sequence[tuple[torch.Size, torch.Size]], like: torch.Tensor) -> list[int]:
    """Positions in ``shapes`` whose prefix the output of ``forward(states)`` does not depend on.

    ``shapes``: per layer the (keys, values) shapes (B, H, T, D) a probe read; ``forward`` runs the
    model with ``states`` — per layer random (keys, values) (1, H, P, D) — as its prefix and returns an
    output (1, T, H). A slot is read when the output's gradient reaches it: a layer that ignores its
    prefix leaves no gradient at all (or exactly zero), however small the model's attention is.
    """
    generator = torch.Generator().manual_seed(0)

    def random(size: torch.Size) -> torch.Tensor:
        tensor = torch.randn(1, size[1], _PROOF_LENGTH, size[-1], generator=generator)
        return tensor.to(like.device, like.dtype).requires_grad_(True)

    states = [(random(keys), random(values)) for keys, values in shapes]
    with torch.enable_grad():
        output = forward(states)
        # A random projection: a normalised output sums to a constant, so its plain sum has no gradient.
        weights = torch.randn(output.shape, generator=generator).to(output.device, output.dtype)
        flat = [tensor for layer in states for tensor in layer]
        grads = torch.autograd.grad((output * weights).sum(), flat, allow_unused=True)
    reached = [grad is not None and bool(grad.any()) for grad in grads]
    return [i for i in range(len(states)) if not (reached[2 * i] or reached[2 * i + 1])]


def unread_decoder_layers(model: nn.Module, layer_indices: Sequence[int], reading: CacheReading) -> list[int]:
    """The cache layers among ``layer_indices`` whose prefix a causal LM's output does not read.

    One token runs through the model's backbone after a random prefix in every one of those layers,
    placed by :func:`softprompt.injection.caches.prefix_cache` as prefix tuning and prompt tuning place
    theirs (the real injection path).
    """
    backbone = compat.backbone(model)
    ids = _probe_ids(model)
    mask = torch.ones(1, _PROOF_LENGTH + 1, dtype=torch.long, device=ids.device)

    def forward(states):
        cache = prefix_cache(states, model.config, layer_indices)
        outputs = backbone(
            input_ids=ids, attention_mask=mask, use_cache=True, **cache_kwargs(backbone, cache)
        )
        return outputs.last_hidden_state

    shapes = [(reading.keys[i], reading.values[i]) for i in layer_indices]
    unread = _unread_in_probe(model, "a one-token forward after a random prefix", forward, shapes)
    return [layer_indices[i] for i in unread]


def _unread_in_probe(model: nn.Module, what: str, forward, shapes) -> list[int]:
    """:func:`_unread` run as a probe of ``model`` (eval mode, a failure names the model and ``what``)."""
    unread: list[int] = []
    like = model.get_input_embeddings().weight
    _run_probe(model, what, lambda: unread.extend(_unread(forward, shapes, like)))
    return unread


def unread_encoder_modules(
    stack: nn.Module, calls: Sequence[tuple[nn.Module, torch.Size, torch.Size]]
) -> list[int]:
    """Positions in ``calls`` (distinct attention modules with their key/value shapes) whose prefix the
    output of encoder ``stack`` does not read; ``stack``'s model is switched to softprompt's attention.

    One token runs through ``stack`` with a random :class:`~softprompt.injection.attention.AttentionPrefix`
    in every module, as deep prompts enter them.
    """
    ids = _probe_ids(stack)
    modules = [module for module, _, _ in calls]

    def forward(states):
        prefix = AttentionPrefix(dict(zip(modules, states, strict=True)), torch.ones(1, _PROOF_LENGTH))
        return stack(input_ids=ids, softprompt_prefix=prefix).last_hidden_state

    like = stack.get_input_embeddings().weight
    return _unread(forward, [(keys, values) for _, keys, values in calls], like)


def unread_decoder_sites(
    model: nn.Module, decoder: CacheReading, cross: CacheReading
) -> dict[Site, list[int]]:
    """An encoder-decoder's decoder layers whose self-attention (``"decoder"``) or cross-attention
    (``"cross"``) prefix its logits do not read, from one token through the encoder and two through
    the decoder (as training runs it: several at once) after a random prefix at both sites, placed by
    :func:`softprompt.injection.caches.encoder_decoder_prefix_cache` as prefix tuning places them (the
    encoder runs on its own, as the model runs it: no prefix there).
    """
    layers = sorted(decoder.keys)
    ids, decoder_ids = _probe_ids(model), _probe_ids(model, 2)

    def forward(states):
        cache = encoder_decoder_prefix_cache(states[: len(layers)], states[len(layers) :], len(layers))
        encoded = model.get_encoder()(input_ids=ids)
        outputs = model(
            encoder_outputs=encoded,
            attention_mask=torch.ones(1, _PROOF_LENGTH + 1, dtype=torch.long, device=ids.device),
            decoder_input_ids=decoder_ids,
            decoder_attention_mask=torch.ones(1, _PROOF_LENGTH + 2, dtype=torch.long, device=ids.device),
            use_cache=False,
            **cache_kwargs(model, cache),
        )
        return outputs.logits

    shapes = [(decoder.keys[i], decoder.values[i]) for i in layers]
    shapes += [(cross.keys[i], cross.values[i]) for i in layers]
    unread = _unread_in_probe(model, "a forward after a random decoder prefix", forward, shapes)
    return {
        "decoder": [layers[i] for i in unread if i < len(layers)],
        "cross": [layers[i - len(layers)] for i in unread if i >= len(layers)],
    }


# --------------------------------------------------------------------------------------- prompts
def virtual_tokens_prefix(model: nn.Module, prompt: PromptOutput) -> PrefixStates:
    """The per-layer prefix a prompt amounts to in a causal decoder (gradients flow through).

    ``model`` is a ``transformers`` causal LM; virtual tokens (P, E) are run through its backbone once.
    The prefix holds the layers with keys/values of their own (``ModelShape.layers``).
    """
    if isinstance(prompt, PrefixStates):
        return prompt
    # a copy: CTRL and GIT scale the inputs_embeds they are given in place (the prompt would drift)
    embeddings = prompt.embeddings.to(model.dtype, copy=True)
    cache = RecordingCache(model.config)
    backbone = compat.backbone(model)
    backbone(inputs_embeds=embeddings[None], use_cache=True, **cache_kwargs(backbone, cache))
    states = recorded_states(cache, model_shape(model).layer_indices)
    return PrefixStates([(keys[0], values[0]) for keys, values in states])


def attention_modules(stack: nn.Module) -> list[nn.Module]:
    """The distinct attention modules ``stack`` (an encoder) calls, in call order: one per layer.

    A module that serves several layers (ALBERT's shared layer group) is listed once: it reads one
    prefix in each of its calls.
    """
    return list(dict.fromkeys(module for module, _, _ in _attention_calls(stack)))


def prefix_attention_modules(model: nn.Module, stack: nn.Module) -> list[nn.Module]:
    """Switch ``model`` to softprompt's attention and list the modules encoder ``stack`` calls.

    The probe forward may run in training mode (at the first training step): it runs on a forked
    random state, so it draws no dropout randomness of the run's and a resumed run stays exact.
    """
    use_prefix_attention(model)
    with torch.random.fork_rng():
        return attention_modules(stack)


def _self_states(model: nn.Module, shape: ModelShape, ids: torch.Tensor) -> list:
    """A causal decoder's keys/values per prefix layer, captured through its cache (or, where it keeps
    none, from its key/value projections)."""
    backbone = compat.backbone(model)
    if shape.self_prefix_route == "positions":
        with positional_prefix(model, backbone).recorded() as states:
            backbone(input_ids=ids)
        return states
    cache = RecordingCache(model.config)
    backbone(input_ids=ids, use_cache=True, **cache_kwargs(backbone, cache))
    return recorded_states(cache, shape.layer_indices)


def _encoder_states(model: nn.Module, shape: ModelShape, stack: nn.Module, ids: torch.Tensor):
    """An encoder stack's output (1, P, H) and its keys/values per distinct attention module (or, on
    the positional route, per layer's key/value projections)."""
    if shape.encoder_prefix_route == "positions":
        with positional_prefix(model, stack).recorded() as states:
            encoded = stack(input_ids=ids).last_hidden_state
        # (B, H, L, D) of ids' own positions: Longformer pads its input to its attention window
        length = ids.shape[-1]
        return encoded[:, :length], [(k[:, :, :length], v[:, :, :length]) for k, v in states]
    use_prefix_attention(model)
    capture = AttentionCapture()
    encoded = stack(input_ids=ids, softprompt_capture=capture).last_hidden_state
    first: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, keys, values in capture.calls:
        first.setdefault(module, (keys, values))
    return encoded, list(first.values())


def _decoder_states(model: nn.Module, shape: ModelShape, ids: torch.Tensor, encoded: torch.Tensor) -> dict:
    """An encoder-decoder's decoder self- and cross-attention keys/values per layer, reading ``ids``."""
    layers = range(len(shape.decoder_layers))
    cache = EncoderDecoderCache(RecordingCache(), RecordingCache())
    _run_decoder(model, ids, encoded, cache)
    return {
        "decoder": recorded_states(cache.self_attention_cache, layers),
        "cross": recorded_states(cache.cross_attention_cache, layers),
    }


def site_states(model: nn.Module, shape: ModelShape, ids: torch.Tensor) -> dict[Site, list]:
    """The keys/values the frozen ``model`` computes for ``ids`` (P,) at every attention site it has.

    Returns ``{site: [(keys, values) per layer]}``, each (H, P, D) in fp32, computed in eval mode
    (the model's own numbers, not a dropout sample of them). An encoder-decoder's decoder reads
    ``ids`` too, attending to their encoding.
    """
    device = model.get_input_embeddings().weight.device
    ids = ids[None].to(device)
    was_training = model.training
    model.eval()
    states: dict[Site, list] = {}
    try:
        with torch.no_grad():
            if "self" in shape.sites:
                states["self"] = _self_states(model, shape, ids)
            if "encoder" in shape.sites:
                stack = model.get_encoder() if "decoder" in shape.sites else model.base_model
                encoded, states["encoder"] = _encoder_states(model, shape, stack, ids)
            if "decoder" in shape.sites:
                states |= _decoder_states(model, shape, ids, encoded)
    finally:
        model.train(was_training)
    return {site: [(k[0].float(), v[0].float()) for k, v in layers] for site, layers in states.items()}
