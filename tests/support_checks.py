"""The support matrix's checks: every model type transformers' auto mappings name, every method.

One place for the checks that ``tests/models/test_support_matrix.py`` asserts and
``scripts/support_table.py`` turns into ``docs/support.md``. A *case* is a model type with a head
(``causal-lm``, ``seq2seq-lm``, ``sequence-classification``, ``token-classification``); the model
types come from the head's ``transformers`` mapping, built tiny by :func:`tiny.tiny_model`. Each
method of ``softprompt.methods.METHODS`` on each case ends as one :class:`Outcome`:

* ``works`` — every check passed;
* ``refused`` — softprompt refused it with its own error (the reason is kept);
* ``fails`` — a check found a wrong answer, or something raised that is not softprompt's refusal.

The checks, in order: the prompt changes the logits; a row's logits are the same alone and padded
in a batch (left and right); a causal LM's logits are its own with the prompt in front (its virtual
tokens' embeddings, or the text whose keys/values a prefix holds); greedy generation gives the same
tokens alone and left-padded (LM heads); a saved prompt loads back to the same logits; the
bare model's logits are unchanged bit for bit; a prompt file saved for another model is refused
with softprompt's error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import transformers as T
from tiny import BuildError, NotATextModel, ending_with_eos, one_line, padded_batch, random_ids, tiny_model
from transformers.cache_utils import DynamicCache, LinearAttentionCacheLayerMixin

import softprompt
from softprompt.files.errors import AdapterFileError
from softprompt.injection.capture import site_states
from softprompt.kinds import HEADS
from softprompt.methods import METHODS, SoftPromptConfig
from softprompt.methods.base import PrefixStates, VirtualTokens, flatten_prefix

MATRIX_HEADS = ("causal-lm", "seq2seq-lm", "sequence-classification", "token-classification")
LM_HEADS = {"causal-lm", "seq2seq-lm"}
Status = Literal["works", "refused", "fails"]
# Logits of a tiny fp32 model agree to ~1e-6 when the computation is the same; a prompt that matters
# moves them by far more than this.
ATOL = 1e-4
# Below this, prompted logits are the bare model's up to float32 rounding: the prompt changed nothing.
# (A tiny random model's attention can reach its logits by less than ATOL; that every prefix slot is
# read is proven at wrap time by the shape probe.)
NOISE = 1e-6
ROW_LENGTHS = (7, 4, 5)  # longer than the generic sliding window (4): windows must keep the prompt
NEW_TOKENS = 3
# Method options that keep the prompt tiny, set where a method's config has the field.
_SMALL_OPTIONS = {"num_virtual_tokens": 3, "encoder_hidden_size": 8}
# Class names of recurrent blocks whose configs declare no recurrent layer type.
_RECURRENT_BLOCKS = re.compile(r"Mamba|Rwkv|LSTM|Recurrent")


@dataclass
class Outcome:
    """How one method did on one case: ``detail`` is the refusal's reason or the failure."""

    status: Status
    detail: str = ""
    check: str = ""  # the check that refused or failed


@dataclass
class CaseResult:
    """Everything the matrix knows about one model type with one head."""

    model_type: str
    head: str
    built: Literal["yes", "excluded", "no"]
    reason: str = ""  # why it was excluded or did not build
    attention_based: bool | None = None
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    seconds: float = 0.0

    def runs_every_method(self) -> bool:
        return self.built == "yes" and all(o.status == "works" for o in self.outcomes.values())

    @classmethod
    def from_dict(cls, data: dict) -> CaseResult:
        outcomes = {name: Outcome(**o) for name, o in data.pop("outcomes").items()}
        return cls(**data, outcomes=outcomes)


class CheckFailed(Exception):
    """A check found a wrong answer."""


def cases(heads: tuple[str, ...] = MATRIX_HEADS) -> list[tuple[str, str]]:
    """Every (model type, head) that transformers' auto mappings name, head by head, types sorted."""
    from transformers.models.auto import modeling_auto

    return [(t, head) for head in heads for t in sorted(getattr(modeling_auto, HEADS[head].mapping))]


def method_configs() -> dict[str, SoftPromptConfig]:
    """One small config per registered method (its defaults, with a tiny prompt)."""
    configs = {}
    for name, method in METHODS.items():
        fields = {f.name for f in dataclasses.fields(method.config)}
        configs[name] = method.config(**{k: v for k, v in _SMALL_OPTIONS.items() if k in fields})
    return configs


def attention_based(model: torch.nn.Module) -> bool:
    """Whether every layer is attention: attention modules, no linear-attention or state-space layer.

    The recurrent layers a config declares show as linear-attention layers of the cache transformers
    builds for it; models with recurrent blocks of their own (RWKV, xLSTM) show by their blocks.
    """
    names = {type(m).__name__ for m in model.modules()}
    if not any(n.endswith("Attention") for n in names) or any(_RECURRENT_BLOCKS.search(n) for n in names):
        return False
    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # no cache of transformers' own (encoders, models with caches of their own)
        return True
    return not any(isinstance(layer, LinearAttentionCacheLayerMixin) for layer in layers)


def run_case(model_type: str, head: str, methods: dict[str, SoftPromptConfig] | None = None) -> CaseResult:
    """Build ``model_type`` with ``head`` tiny and run every check for every method, in this process."""
    start = time.perf_counter()
    try:
        base = tiny_model(model_type, head)
        inputs = case_inputs(base, head)
    except NotATextModel as err:
        return CaseResult(model_type, head, "excluded", err.reason)
    except BuildError as err:
        return CaseResult(model_type, head, "no", err.reason)
    result = CaseResult(model_type, head, "yes", attention_based=attention_based(base))
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in (methods or method_configs()).items():
            result.outcomes[name] = check_method(base, head, config, Path(tmp) / name, inputs)
    result.seconds = round(time.perf_counter() - start, 2)
    return result


@dataclass
class CaseInputs:
    """The rows every check runs, the decoder input (seq2seq LMs), and the bare model's logits of each row."""

    rows: list[torch.Tensor]
    decoder_ids: torch.Tensor | None
    bare: list[torch.Tensor]


def case_inputs(base: torch.nn.Module, head: str) -> CaseInputs:
    """The checks' inputs for ``base``; a bare model that cannot run them does not build (:class:`BuildError`)."""
    rows = [ending_with_eos(random_ids(1, n, seed=n)[0], base.config) for n in ROW_LENGTHS]
    decoder_ids = _decoder_ids(base) if head == "seq2seq-lm" else None
    # wrap freezes the base (documented); a frozen model may take other kernels (ProphetNet's logits
    # move by 5e-8), so the bare logits compared bit for bit are the frozen model's.
    base.requires_grad_(False)
    try:
        with torch.no_grad():
            bare = [_logits(base, r[None], None, decoder_ids) for r in rows]
    except Exception as err:
        raise BuildError(
            base.config.model_type, head, f"forward on {ROW_LENGTHS} tokens: {one_line(err)}"
        ) from None
    return CaseInputs(rows, decoder_ids, bare)


def run_isolated(model_type: str, head: str, timeout: float = 300.0) -> CaseResult:
    """:func:`run_case` in a forked process, so a hang, a crash or a huge allocation stays in its case."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(model_type, head, send), daemon=True)
    start = time.perf_counter()
    process.start()
    send.close()
    answered = receive.poll(timeout)  # also true when the child died: its end of the pipe closed
    data = None
    if answered:
        with contextlib.suppress(EOFError):
            data = receive.recv()
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join()
    if data is not None:
        return CaseResult.from_dict(data)
    why = (
        f"the process died (exit code {process.exitcode})" if answered else f"timed out after {timeout:.0f} s"
    )
    failed = Outcome("fails", why, "run")
    result = CaseResult(model_type, head, "yes", outcomes={name: failed for name in METHODS})
    result.seconds = round(time.perf_counter() - start, 2)
    return result


def _child(model_type: str, head: str, send) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    T.logging.set_verbosity_error()
    try:
        result = run_case(model_type, head)
    except Exception as err:  # outside any check (e.g. the attention probe): still this case's failure
        failed = Outcome("fails", one_line(err), "run")
        result = CaseResult(model_type, head, "yes", outcomes=dict.fromkeys(METHODS, failed))
    send.send(dataclasses.asdict(result))
    send.close()


# ------------------------------------------------------------------------------------------ checks
def check_method(
    base: torch.nn.Module, head: str, config: SoftPromptConfig, folder: Path, inputs: CaseInputs | None = None
) -> Outcome:
    """Wrap ``base`` with ``config`` and run every check; the first refusal or failure ends it."""
    inputs = inputs or case_inputs(base, head)
    rows, decoder_ids, bare = inputs.rows, inputs.decoder_ids, inputs.bare
    check = "wrap"
    try:
        model = softprompt.wrap(base, config).eval()
        _move_prompt_from_its_init(model)
        with torch.no_grad():
            check = "prompt changes the logits"
            prompted = [_logits(model, r[None], None, decoder_ids) for r in rows]
            _prompt_matters(prompted[0], bare[0])
            check = "padding invariance"
            for side in ("left", "right"):
                _padding_invariant(model, base, rows, side, prompted, bare, decoder_ids)
            if head == "causal-lm":
                check = "the model's own logits with the prompt in front"
                _equals_the_prompt_in_front(model, base, rows[0], prompted[0])
            if head in LM_HEADS:
                check = "greedy generation alone = batched"
                _generation_invariant(model, rows)
            check = "save/load round trip"
            _round_trip(model, base, rows[0], prompted[0], decoder_ids, folder)
            check = "bare model unchanged"
            for row, before in zip(rows, bare, strict=True):
                after = _logits(base, row[None], None, decoder_ids)
                if not torch.equal(after, before):
                    raise CheckFailed(f"the bare model's logits moved by {_max_diff(after, before):.2e}")
            check = "a file for another model is refused"
            _foreign_file_refused(base, config, folder)
    except softprompt.UnsupportedModelError as err:
        return Outcome("refused", " ".join(str(err).split()), check)
    except CheckFailed as err:
        return Outcome("fails", str(err), check)
    except Exception as err:
        return Outcome("fails", one_line(err), check)
    return Outcome("works")


def _decoder_ids(base: torch.nn.Module) -> torch.Tensor:
    """Fixed decoder input for an encoder-decoder's forward: (1, 3), starting with its start token."""
    return torch.tensor([[base.config.decoder_start_token_id, 5, 6]])


def _logits(model, ids: torch.Tensor, mask: torch.Tensor | None, decoder_ids: torch.Tensor | None):
    inputs = dict(input_ids=ids, attention_mask=mask)
    if decoder_ids is not None:
        inputs["decoder_input_ids"] = decoder_ids.expand(ids.shape[0], -1)
    return model(**inputs).logits.float()


def _move_prompt_from_its_init(model) -> None:
    """Perturb every prompt tensor (not a task head: it is the bare model's too), so a prompt ignored anywhere shows."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.prompt.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.3)


def _prompt_matters(prompted: torch.Tensor, bare: torch.Tensor) -> None:
    if prompted.shape == bare.shape and _max_diff(prompted, bare) <= NOISE:
        raise CheckFailed("the prompt changes nothing: the logits are the bare model's")


def _equals_the_prompt_in_front(model, base, row: torch.Tensor, prompted: torch.Tensor) -> None:
    """The family-independent reference for a causal LM: virtual tokens give the bare model's logits
    with their embeddings in front of the row; a prefix of the keys/values a text leaves gives the
    bare model's logits with that text in front. (Hybrid models are exempt from the prefix's: their
    recurrent layers never see a key/value prefix.)"""
    output = model.prompt()
    if isinstance(output, VirtualTokens):
        embeddings = output.embeddings.to(base.dtype)[None]  # (1, P, E)
        inputs = torch.cat([embeddings, base.get_input_embeddings()(row[None])], dim=1)
        extra = {}
        if model._per_layer_embedder is not None:  # Gemma 4: virtual tokens look up the pad token's
            ids = torch.cat([torch.full((1, embeddings.shape[1]), model._pad_id), row[None]], dim=1)
            extra["per_layer_inputs"] = model._per_layer_embedder.get_per_layer_inputs(ids, None)
        expected = base(inputs_embeds=inputs, attention_mask=torch.ones(inputs.shape[:2]), **extra).logits
        got = prompted
    elif model.shape.recurrent_layers or not isinstance(
        getattr(model.prompt, "prefix", None), torch.nn.Parameter
    ):
        return  # (a prefix reparameterised by an MLP holds no table to set)
    else:
        text = random_ids(1, model.prompt.prefix.shape[0], seed=99)[0]  # the table (P, F)
        saved = model.prompt.prefix.detach().clone()
        states = site_states(base, model.shape, text)["self"]
        try:
            model.prompt.prefix.copy_(flatten_prefix(PrefixStates(states)))
            got = _logits(model, row[None], None, None)
        finally:
            model.prompt.prefix.copy_(saved)
        expected = base(torch.cat([text[None], row[None]], dim=1)).logits
    expected = expected[:, -row.shape[0] :].float()
    if not torch.allclose(got, expected, atol=ATOL, rtol=ATOL):
        raise CheckFailed(
            f"the logits differ from the bare model's with the prompt in front by {_max_diff(got, expected):.2e}"
        )


def _padding_drift(model, rows, side: str, alone, decoder_ids) -> float:
    """The most any row's logits move when ``rows`` run ``side``-padded in one batch instead of alone."""
    ids, mask = padded_batch(rows, side)
    batched = _logits(model, ids, mask, decoder_ids)
    drift = 0.0
    for i, row_alone in enumerate(alone):
        row = batched[i : i + 1]
        if decoder_ids is None and batched.dim() == 3:  # per-token logits (B, T, C): the row's own tokens
            row = row[:, mask[i].bool()]
        drift = max(drift, _max_diff(row, row_alone))
    return drift


def _padding_invariant(model, base, rows, side: str, alone, bare, decoder_ids) -> None:
    """Rows padded in a batch compute what they do alone — or drift no more than the bare model's own rows.

    Some models are not padding-invariant themselves (approximate attention such as Nystromformer's
    landmarks, ConvBERT's span convolution over pads): softprompt lays rows out the way the model
    drifts least, so the bound there is the bare model's drift in its better layout. A model that
    attends to its pads (YOSO) is held to each row alone with the same pads, to ``ATOL``.
    """
    drift = _padding_drift(model, rows, side, alone, decoder_ids)
    if drift <= ATOL:
        return
    if _attends_to_its_pads(base, rows, decoder_ids):
        # No layout hides the pads from such a model (transformers' YOSO turns its 0/1 mask into ones:
        # `int(1 + mask / 10000)`), and what they add grows with whatever the prompt changes in each
        # layer, so no multiple of the bare model's drift bounds a prompted row's (YOSO P-tuning: 7.3e-04
        # against the bare 3.6e-04; both ~1e-9 once YOSO's mask is honoured). What a prompt must keep
        # is the rest: a row in a batch computes what it does alone with the pads softprompt lays after it.
        drift = _padding_drift(model, rows, side, _alone_with_pads(model, rows, decoder_ids), decoder_ids)
        if drift > ATOL:
            raise CheckFailed(
                f"rows {side}-padded in a batch differ from alone with the same pads by {drift:.2e} "
                "(the model attends to its pads)"
            )
        return
    own = min(_padding_drift(base, rows, layout, bare, decoder_ids) for layout in ("left", "right"))
    if drift > 2 * own:
        ceiling = f"; the bare model's own rows drift by {own:.2e}" if own > ATOL else ""
        raise CheckFailed(f"rows {side}-padded in a batch differ from alone by {drift:.2e}{ceiling}")


def _attends_to_its_pads(base, rows, decoder_ids) -> bool:
    """Whether ``base`` computes the same for a padded batch with its pads masked as unmasked."""
    ids, mask = padded_batch(rows, "right")
    masked = _logits(base, ids, mask, decoder_ids)
    return torch.equal(masked, _logits(base, ids, torch.ones_like(mask), decoder_ids))


def _alone_with_pads(model, rows, decoder_ids) -> list[torch.Tensor]:
    """Each row's logits alone, with the pads after it that a right-padded batch gives it (the layout
    softprompt puts every batch in); per-token logits cut to the row's own tokens."""
    ids, mask = padded_batch(rows, "right")
    alone = []
    for i in range(len(rows)):
        logits = _logits(model, ids[i : i + 1], mask[i : i + 1], decoder_ids)
        alone.append(logits[:, mask[i].bool()] if decoder_ids is None and logits.dim() == 3 else logits)
    return alone


def _generation_invariant(model, rows) -> None:
    def greedy(ids, mask):
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
        )
        # causal LMs return the input too; encoder-decoders return decoder tokens only
        return out[:, ids.shape[1] :] if not model.base_model.config.is_encoder_decoder else out

    alone = [greedy(r[None], torch.ones(1, len(r), dtype=torch.long))[0].tolist() for r in rows]
    ids, mask = padded_batch(rows, "left")
    batched = greedy(ids, mask).tolist()
    for i, (b, a) in enumerate(zip(batched, alone, strict=True)):
        if b != a:
            raise CheckFailed(f"row {i} generates {b} left-padded in a batch, {a} alone")


def _round_trip(model, base, row, prompted, decoder_ids, folder: Path) -> None:
    path = model.save(folder / "prompt.safetensors")
    again = softprompt.load(base, path).eval()
    diff = _max_diff(_logits(again, row[None], None, decoder_ids), prompted)
    if diff > 1e-5:
        raise CheckFailed(f"the reloaded prompt's logits differ by {diff:.2e}")


_FOREIGN_FILES: dict[str, Path] = {}


def _foreign_file(config: SoftPromptConfig) -> Path:
    """A prompt of ``config`` saved for a model no generic build matches (hidden 24, 3 layers)."""
    if config.method not in _FOREIGN_FILES:
        torch.manual_seed(0)
        other = T.LlamaForCausalLM(
            T.LlamaConfig(
                vocab_size=96,
                hidden_size=24,
                intermediate_size=48,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                pad_token_id=0,
            )
        ).eval()
        folder = Path(tempfile.mkdtemp(prefix="softprompt-foreign-"))
        _FOREIGN_FILES[config.method] = softprompt.wrap(other, config).save(folder / "other.safetensors")
    return _FOREIGN_FILES[config.method]


def _foreign_file_refused(base, config: SoftPromptConfig, folder: Path) -> None:
    try:
        softprompt.load(base, _foreign_file(config))
    except (AdapterFileError, softprompt.UnsupportedModelError):
        return
    raise CheckFailed("a prompt saved for another model (hidden 24, 3 layers) loaded without an error")


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() if a.shape == b.shape else float("inf")
