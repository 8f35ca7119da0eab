"""Encoder prefixes through positions: deep prompts for encoders whose attention is computed inline.

Encoders that call no replaceable attention function (DeBERTa-v2, MPNet, TAPAS, XLM, Longformer...)
cannot take :class:`~softprompt.injection.attention.AttentionPrefix`. Their prefix takes positions
instead: ``P`` placeholder positions enter the encoder's input right after the first position it sees
(the ``[CLS]`` a sequence head reads stays first), and in every layer a forward hook on the attention's
key and value projections overwrites the projection's output at those positions with the layer's
prefix keys and values. Every other position then attends to the prefix in every layer (P-tuning v2's
deep prompts); the model builds its own mask, the placeholders' slots carrying the row's prefix mask
(a shorter prefix's masked slots stand after the row's last token, with its pads), and the
placeholders' own outputs are dropped (:mod:`softprompt.injection.encoder_input`). A prefix layer
(H, P, D) is written as (P, H * D) in ``transformers``' head order (the ``view(B, L, H, D)`` every
attention splits its projection by), at per-row positions. Where one fused projection gives queries,
keys and values together (DeBERTa's ``in_proj``) the prefix is written in its key and value channels
only; which channels those are is read from what the model computes (:func:`_split_fused`).

Hooks are registered for one forward (:meth:`PositionalPrefix.entered`) and removed after it: a model
used without a prefix runs as it did, bit for bit. Where a model mixes positions outside attention
(ConvBERT's span convolution, Nystromformer's landmarks, YOSO's hashing) the prefix is that model's
own computation over ``P`` extra positions whose keys and values are the prefix's. Where the
projections do not reach the output (MRA on a CPU: without its CUDA kernel its attention gives
zeros) the probe finds it and prefix tuning is refused with the reason.

:func:`find_positional_prefix` finds the projections by ``transformers``' naming conventions and
reads their output layout from a probe of known batch and length;
:func:`softprompt.injection.capture.read_projection_layers` proves the route: a random prefix
through the hooks must reach the output from every layer.

Examples:
    >>> import transformers as T
    >>> config = T.DebertaV2Config(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
    ...                            intermediate_size=16, vocab_size=32)
    >>> model = T.DebertaV2Model(config).eval()
    >>> [(layer.layout, layer.heads, layer.key_width) for layer in positional_prefix(model, model).layers]
    [('blc', 2, 8), ('blc', 2, 8)]
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from softprompt.families import UnsupportedModelError

# Key / value projection names in transformers' attention modules, as sibling pairs.
KEY_VALUE_NAMES = (
    ("key", "value"),
    ("k", "v"),
    ("k_proj", "v_proj"),
    ("key_proj", "value_proj"),
    ("k_lin", "v_lin"),
)
# One projection giving queries, keys and values together (DeBERTa v1's in_proj), split by a probe.
FUSED_NAMES = ("in_proj", "qkv", "qkv_proj", "query_key_value", "Wqkv", "c_attn")
# Longformer's global attention projects every position again for its global tokens.
GLOBAL_SUFFIX = "_global"

# Probe sizes, distinct from each other and from any projection width, to tell the dimensions apart.
_PROBE_BATCH, _PROBE_LENGTH = 3, 5


@dataclass(frozen=True)
class ProjectionLayer:
    """One encoder layer's key and value projections and the layout of their outputs.

    ``name`` / ``attention``: the module holding them (each of its calls is one layer's attention); ``keys`` /
    ``values``: the projection modules (Longformer: the local one and the global one); ``layout``:
    the order of the output's dimensions, ``"b"`` batch, ``"l"`` sequence, ``"c"`` channels (H * D):
    ``"blc"`` mostly, ``"lbc"`` sequence-first (Longformer, FSMT), ``"bcl"`` for SqueezeBERT's
    convolutions; ``heads``: H; ``key_width`` / ``value_width``: H * D of each. ``key_channels`` /
    ``value_channels``: where a fused projection gives queries, keys and values together (DeBERTa's
    ``in_proj``), the channels of its output (H * D each, heads outer) that are the keys / values;
    ``None`` where the projection gives only them.
    """

    name: str
    attention: nn.Module
    keys: tuple[nn.Module, ...]
    values: tuple[nn.Module, ...]
    layout: str
    heads: int
    key_width: int
    value_width: int
    key_channels: torch.Tensor | None = None
    value_channels: torch.Tensor | None = None

    def shapes(self) -> tuple[torch.Size, torch.Size]:
        """The (keys, values) shapes (1, H, 1, D) of one token, as the attention route's probe reads them."""
        return (
            torch.Size((1, self.heads, 1, self.key_width // self.heads)),
            torch.Size((1, self.heads, 1, self.value_width // self.heads)),
        )


class PositionalPrefix:
    """The key/value projections of encoder ``stack``, one :class:`ProjectionLayer` per layer, in call
    order; :meth:`entered` writes a prefix into them for one forward."""

    def __init__(self, stack: nn.Module, layers: Sequence[ProjectionLayer]) -> None:
        self.stack = stack
        self.layers = tuple(layers)

    @contextmanager
    def entered(
        self, states: Sequence[tuple[torch.Tensor, torch.Tensor]], index: torch.Tensor
    ) -> Iterator[None]:
        """Within the block, layer ``l``'s projections write ``states[l]`` — (keys, values), each
        (B, H, P, D) — at each row's sequence positions ``index`` (B, P).

        A projection writes where it projects the tensor its attention module was called with (see
        :class:`_AttentionInputs`). Gradient checkpointing is held off meanwhile: its replay in backward
        would run outside the block, without the prefix, and differentiate other keys than the forward used.
        """
        inputs = _AttentionInputs()
        with ExitStack() as stack:
            for layer, (keys, values) in zip(self.layers, states, strict=True):
                for handle in inputs.watch(layer.name, layer.attention, layer.keys, layer.values):
                    stack.callback(handle.remove)
                for modules, prefix, channels in (
                    (layer.keys, keys, layer.key_channels),
                    (layer.values, values, layer.value_channels),
                ):
                    hook = _overwrite(prefix, index, layer.layout, inputs, channels)
                    for module in modules:
                        stack.callback(module.register_forward_hook(hook).remove)
            for module in self.stack.modules():
                if getattr(module, "gradient_checkpointing", False) is True:
                    module.gradient_checkpointing = False
                    stack.callback(setattr, module, "gradient_checkpointing", True)
            yield

    @contextmanager
    def recorded(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Within the block, the stack's keys and values per layer, each (B, H, L, D), are collected
        (first call of each layer) into the list it yields, filled when the block ends."""
        found: dict[tuple[int, str], torch.Tensor] = {}
        inputs = _AttentionInputs()

        def record(index: int, kind: str, layer: ProjectionLayer, channels: torch.Tensor | None):
            def hook(module, args, output):
                if inputs.projects_sequence(module, args):
                    found.setdefault((index, kind), _heads(_tensor(output), layer, channels))

            return hook

        states: list[tuple[torch.Tensor, torch.Tensor]] = []
        with ExitStack() as stack:
            for index, layer in enumerate(self.layers):
                for handle in inputs.watch(layer.name, layer.attention, layer.keys, layer.values):
                    stack.callback(handle.remove)
                for kind, module, channels in (
                    ("keys", layer.keys[0], layer.key_channels),
                    ("values", layer.values[0], layer.value_channels),
                ):
                    stack.callback(module.register_forward_hook(record(index, kind, layer, channels)).remove)
            yield states
        states.extend((found[i, "keys"], found[i, "values"]) for i in range(len(self.layers)))


def with_placeholders(tensor: torch.Tensor, block: torch.Tensor, start: int) -> torch.Tensor:
    """``tensor`` (B, T, ...) with ``block`` (B, P, ...) inserted at sequence position ``start``."""
    return torch.cat([tensor[:, :start], block.to(tensor.dtype), tensor[:, start:]], dim=1)


def _tensor(output) -> torch.Tensor:
    # I-BERT's QuantLinear returns (tensor, scaling factor)
    return output[0] if isinstance(output, tuple) else output


def _heads(
    projected: torch.Tensor, layer: ProjectionLayer, channels: torch.Tensor | None = None
) -> torch.Tensor:
    """A projection's output in ``layer.layout`` (only ``channels`` of it, where given) -> (B, H, L, D)."""
    batch_first = projected.permute(*(layer.layout.index(dim) for dim in "blc"))  # (B, L, C)
    if channels is not None:
        batch_first = batch_first.index_select(-1, channels.to(projected.device))  # (B, L, H * D)
    batch, length, channels = batch_first.shape
    return batch_first.reshape(batch, length, layer.heads, channels // layer.heads).transpose(1, 2)


def _storage(tensor) -> int | None:
    return tensor.untyped_storage().data_ptr() if torch.is_tensor(tensor) else None


class _AttentionInputs:
    """Which calls of a layer's projections project the sequence: those on the tensor its attention
    module runs on (its first tensor argument, or a view of it: Longformer's transpose). Other calls
    (DeBERTa-v3's key projection of the relative position embeddings, Pegasus-X's of its global tokens)
    are not the sequence's. An attention call whose projections never project its input (LUKE's, given
    entities: it projects words and entities concatenated) is an error, never a prefix silently lost.
    """

    def __init__(self) -> None:
        self.running: dict[nn.Module, int | None] = {}  # projection -> its attention's input storage
        self.seen: set[nn.Module] = set()  # projections that projected it in this attention call

    def watch(
        self, name: str, attention: nn.Module, keys: tuple[nn.Module, ...], values: tuple[nn.Module, ...]
    ) -> list[torch.utils.hooks.RemovableHandle]:
        """Hooks on ``attention`` (named ``name``) marking its calls; remove them after the forward."""
        projections = (*keys, *values)

        def enter(module, args, kwargs):
            tensor = next((a for a in (*args, *kwargs.values()) if torch.is_tensor(a)), None)
            self.running |= dict.fromkeys(projections, _storage(tensor))
            self.seen.difference_update(projections)

        def leave(module, args, kwargs, output):
            missing = [p for p in (keys[0], values[0]) if p not in self.seen]
            for projection in projections:
                self.running.pop(projection, None)
            if missing:
                raise UnsupportedModelError(
                    f"the key/value projections of {name} did not project the tensor it was called "
                    "with (its sequence), so a prefix has no place in their output: call it without the "
                    "inputs that join other states to the sequence (LUKE's entity inputs)"
                )

        return [
            attention.register_forward_pre_hook(enter, with_kwargs=True),
            attention.register_forward_hook(leave, with_kwargs=True),
        ]

    def projects_sequence(self, module: nn.Module, args: tuple) -> bool:
        """Whether this call of projection ``module`` (with ``args``) projects its attention's sequence."""
        sequence = module in self.running and bool(args) and _storage(args[0]) == self.running[module]
        if sequence:
            self.seen.add(module)
        return sequence


def _overwrite(
    prefix: torch.Tensor,
    index: torch.Tensor,
    layout: str,
    inputs: _AttentionInputs,
    channels: torch.Tensor | None = None,
):
    """A forward hook writing ``prefix`` (B, H, P, D) over its module's output at positions ``index``
    (B, P) — in ``channels`` of it where given (a fused projection), else in all — where the module
    projects its attention's sequence."""
    batch, heads, length, dim = prefix.shape
    placed = prefix.transpose(1, 2).reshape(batch, length, heads * dim)  # (B, P, H * D), heads outer
    to_blc = [layout.index(d) for d in "blc"]
    from_blc = ["blc".index(d) for d in layout]

    def hook(module, args, output):
        if not inputs.projects_sequence(module, args):
            return None
        projected = _tensor(output)
        batch_first = projected.permute(*to_blc)  # (B, L, C)
        where = index.to(projected.device)[..., None].expand(-1, -1, batch_first.shape[-1])  # (B, P, C)
        rows = placed.to(projected.device, projected.dtype)
        if channels is not None:  # the other channels of the placeholders' rows stay the model's
            rows = batch_first.gather(1, where).index_copy(-1, channels.to(projected.device), rows)
        written = batch_first.scatter(1, where, rows).permute(*from_blc)
        return (written, *output[1:]) if isinstance(output, tuple) else written

    return hook


# ------------------------------------------------------------------------------------------ probe
_FOUND: weakref.WeakKeyDictionary[nn.Module, PositionalPrefix] = weakref.WeakKeyDictionary()


_Pair = tuple[nn.Module, tuple[nn.Module, ...], tuple[nn.Module, ...]]


def _projection_pairs(stack: nn.Module) -> tuple[list[_Pair], list[_Pair]]:
    """Sibling key/value projections under ``stack`` — (their module, keys, values), with Longformer's
    global ones — and, in modules without separate ones, fused query-key-value projections as
    (their module, (fused,), (fused,))."""
    pairs: list[_Pair] = []
    fused: list[_Pair] = []
    for module in stack.modules():
        children = dict(module.named_children())
        found = next(((k, v) for k, v in KEY_VALUE_NAMES if k in children and v in children), None)
        if found is not None:
            pairs.append((module, *((children[n], *_global(children, n)) for n in found)))
        elif one := next((children[n] for n in FUSED_NAMES if n in children), None):
            fused.append((module, (one,), (one,)))
    return pairs, fused


def _global(children: dict[str, nn.Module], name: str) -> tuple[nn.Module, ...]:
    """Longformer's global projection beside ``name``, if there is one."""
    return (children[name + GLOBAL_SUFFIX],) if name + GLOBAL_SUFFIX in children else ()


def _heads_of(stack: nn.Module, model: nn.Module) -> int:
    config = getattr(stack, "config", model.config)
    for name in ("num_attention_heads", "encoder_attention_heads", "n_heads"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise UnsupportedModelError("its config names no number of attention heads")


def _layout(module: nn.Module, shape: torch.Size, name: str) -> str:
    """Which dimension of a projection's output is which: batch (the probe's), channels (the module's
    output width, or else what is neither batch nor the probe's length), sequence (the rest: Longformer
    pads the probe's length to its attention window)."""
    width = getattr(module, "out_features", None) or getattr(module, "out_channels", None)
    dims = ["b" if size == _PROBE_BATCH else "c" if size == width else "" for size in shape]
    if width is None:
        dims = [dim or ("l" if size == _PROBE_LENGTH else "c") for dim, size in zip(dims, shape, strict=True)]
    layout = "".join(dim or "l" for dim in dims)
    if len(shape) != 3 or sorted(layout) != ["b", "c", "l"]:
        raise UnsupportedModelError(
            f"its projection {name} gives an output of shape {tuple(shape)} for a batch of {_PROBE_BATCH} "
            f"rows of {_PROBE_LENGTH} tokens, not (batch, length, channels) in any order"
        )
    return layout


def find_positional_prefix(model: nn.Module, stack: nn.Module) -> PositionalPrefix:
    """The key/value projections encoder ``stack`` calls, in call order, with their output layouts
    (one probe forward of ``_PROBE_BATCH`` rows of ``_PROBE_LENGTH`` tokens); cached per stack.

    Raises :class:`~softprompt.families.UnsupportedModelError` saying why where there are none, or
    only fused ones, or their outputs are not laid out as (batch, length, channels) in some order.
    """
    if stack in _FOUND:
        return _FOUND[stack]
    pairs, fused = _projection_pairs(stack)
    is_fused = not pairs and bool(fused)
    pairs = pairs or fused
    if not pairs:
        raise UnsupportedModelError(
            f"it has no key/value projections named as transformers names them {KEY_VALUE_NAMES} "
            f"(or fused ones: {FUSED_NAMES})"
        )
    names = {module: name for name, module in stack.named_modules()}
    calls: dict[nn.Module, torch.Size] = {}
    inputs = _AttentionInputs()

    def record(module, args, output):
        if inputs.projects_sequence(module, args):
            calls.setdefault(module, _tensor(output).shape)

    with ExitStack() as hooks:
        for attention, keys, values in pairs:
            for handle in inputs.watch(names[attention], attention, keys, values):
                hooks.callback(handle.remove)
            for module in (keys[0], values[0]):
                hooks.callback(module.register_forward_hook(record).remove)
        ids = torch.zeros(_PROBE_BATCH, _PROBE_LENGTH, dtype=torch.long, device=_device(stack))
        stack(input_ids=ids, attention_mask=torch.ones_like(ids))
    order = list(calls)
    called = sorted(
        (pair for pair in pairs if pair[1][0] in calls and pair[2][0] in calls),
        key=lambda pair: order.index(pair[1][0]),
    )
    if not called:
        raise UnsupportedModelError("a forward called none of its key/value projections")
    heads = _heads_of(stack, model)
    layers = []
    for attention, keys, values in called:
        layout = _layout(keys[0], calls[keys[0]], names[keys[0]])
        if _layout(values[0], calls[values[0]], names[values[0]]) != layout:
            raise UnsupportedModelError(
                f"its projections {names[keys[0]]} and {names[values[0]]} lay out their outputs apart"
            )
        widths = [
            calls[module][layout.index("c")] // (3 if is_fused else 1) for module in (keys[0], values[0])
        ]
        if any(width % heads for width in widths):
            raise UnsupportedModelError(
                f"its projections {names[keys[0]]} give {widths} channels for {heads} heads"
            )
        layers.append(ProjectionLayer(names[attention], attention, keys, values, layout, heads, *widths))
    if is_fused:
        layers = _split_fused(stack, layers, names[layers[-1].keys[0]])
    _FOUND[stack] = found = PositionalPrefix(stack, layers)
    return found


def _fused_splits(heads: int, width: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The (queries, keys, values) channels of a fused projection's 3 * ``width`` outputs, as the two
    layouts ``transformers`` models use lay them out: split in three, then by heads (GPT-2's
    ``c_attn``), or by heads, then in three (DeBERTa's ``in_proj``)."""
    dim = width // heads
    per_head = torch.arange(3 * width).view(heads, 3, dim)
    thirds = torch.arange(3 * width).view(3, width)
    return {
        "thirds, then heads": (thirds[0], thirds[1], thirds[2]),
        "heads, then thirds": (per_head[:, 0].flatten(), per_head[:, 1].flatten(), per_head[:, 2].flatten()),
    }


def _split_fused(stack: nn.Module, layers: list[ProjectionLayer], name: str) -> list[ProjectionLayer]:
    """``layers`` with the key and value channels of their fused projection, told apart by what the
    model computes: a change to one position's queries in the last layer reaches no other position's
    output, and a change to its keys or values does. Raises where no layout, or more than one, fits.
    """
    last = layers[-1]
    ids = torch.zeros(_PROBE_BATCH, _PROBE_LENGTH, dtype=torch.long, device=_device(stack))
    inputs = _AttentionInputs()

    def output_with(channels: torch.Tensor | None) -> torch.Tensor:
        """The stack's output (B, L, H) with ``channels`` of position 0 moved in the last fused projection."""

        def move(module, args, output):
            if not inputs.projects_sequence(module, args) or channels is None:
                return None
            batch_first = _tensor(output).permute(*(last.layout.index(d) for d in "blc")).clone()
            batch_first[:, 0, channels] += 1.0
            return batch_first.permute(*("blc".index(d) for d in last.layout))

        with ExitStack() as hooks:
            for handle in inputs.watch(last.name, last.attention, last.keys, last.values):
                hooks.callback(handle.remove)
            hooks.callback(last.keys[0].register_forward_hook(move).remove)
            return stack(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state

    unmoved = output_with(None)[:, 1:]

    def reaches_others(channels: torch.Tensor) -> bool:
        return not torch.allclose(output_with(channels)[:, 1:], unmoved, atol=1e-6, rtol=0)

    fits = {
        layout: (keys, values)
        for layout, (queries, keys, values) in _fused_splits(last.heads, last.key_width).items()
        if not reaches_others(queries) and reaches_others(keys) and reaches_others(values)
    }
    splits = {tuple(k.tolist()) + tuple(v.tolist()) for k, v in fits.values()}
    if len(splits) != 1:
        raise UnsupportedModelError(
            f"its attention projects queries, keys and values in one fused projection ({name}), and "
            f"{'none' if not fits else 'more than one'} of the layouts softprompt knows "
            f"({', '.join(_fused_splits(1, 1))}) fits what the model computes, so its keys and values "
            "cannot be told apart"
        )
    keys, values = next(iter(fits.values()))
    return [dataclasses.replace(layer, key_channels=keys, value_channels=values) for layer in layers]


def positional_prefix(model: nn.Module, stack: nn.Module) -> PositionalPrefix:
    """:func:`find_positional_prefix` as a model in training uses it: its probe forward (once per
    stack) runs without gradients on a forked random state, so it draws none of the run's dropout."""
    with torch.no_grad(), torch.random.fork_rng():
        return find_positional_prefix(model, stack)


def _device(stack: nn.Module) -> torch.device:
    # (a parameter's: FSMT's encoder has no get_input_embeddings)
    return next(stack.parameters()).device
