"""Property tests: whatever bytes, records, tensors or peft configs a file holds, ``softprompt.load``
either loads a finite float prompt of the right shape or raises an ``AdapterFileError`` — no other
exception, no hang, no code run.

The fast variant tries a few hundred inputs; ``SOFTPROMPT_SLOW=1`` runs the slow one (thousands).
Outcomes are counted and printed at the end of the module (``pytest -s`` shows them).
"""

from __future__ import annotations

import collections
import json
import math
import pickle
import shutil
import signal
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from corpus import MARKER_NAME, RunsCode, good_files, read_raw, write_raw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from tiny import tiny_causal_lm

import softprompt

FAST = settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SLOW = settings(FAST, max_examples=1500, derandomize=False)
OUTCOMES: collections.Counter = collections.Counter()
WORK = Path(tempfile.mkdtemp(prefix="softprompt-fuzz-"))
GOOD = good_files(WORK / "good")
BASE = tiny_causal_lm("llama")


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    tried = OUTCOMES["loaded"] + OUTCOMES["refused"] + OUTCOMES["crashed"]
    print(f"\nfuzz: {tried} inputs, {OUTCOMES['loaded']} loaded, {OUTCOMES['refused']} refused cleanly, "
          f"{OUTCOMES['crashed']} crashes of another type; refusals by cause: "
          f"{dict(sorted((k, v) for k, v in OUTCOMES.items() if k[0].isupper()))}")  # fmt: skip
    assert not (WORK / MARKER_NAME).exists(), "a pickle was run"
    shutil.rmtree(WORK, ignore_errors=True)


@contextmanager
def time_limit(seconds: int):
    """A hang fails the test instead of blocking it."""

    def hung(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def outcome(path: Path) -> None:
    """Load ``path``; a load must give a usable prompt, a refusal must be an AdapterFileError."""
    try:
        with time_limit(20):
            model = softprompt.load(BASE, path)
    except softprompt.AdapterFileError as err:
        OUTCOMES["refused"] += 1
        OUTCOMES[type(err).__name__] += 1
        assert str(err).startswith(str(err.path))
        return
    except BaseException:
        OUTCOMES["crashed"] += 1
        raise
    OUTCOMES["loaded"] += 1
    for parameter in model.prompt.parameters():
        assert parameter.dtype == torch.float32 and bool(torch.isfinite(parameter).all())
    assert model.prompt().length == model.prompt_config.num_virtual_tokens


def fresh(name: str) -> Path:
    folder = Path(tempfile.mkdtemp(dir=WORK))
    return folder / name


# ------------------------------------------------------------------------------------ strategies
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
RECORD_PATHS = [
    ("format_version",), ("method",), ("config",), ("config", "num_virtual_tokens"), ("config", "init"),
    ("config", "prefix_sites"), ("config", "seed"), ("config", "random_scale"), ("base_model",),
    ("base_model", "family"), ("base_model", "vocab_size"), ("base_model", "layers"), ("dtype",),
    ("model_options",), ("task",), ("checksum",), ("surprise",),
]  # fmt: skip
PEFT_FIELDS = [
    "peft_type", "task_type", "num_virtual_tokens", "token_dim", "num_transformer_submodules",
    "num_attention_heads", "num_layers", "encoder_hidden_size", "prefix_projection", "base_model_name_or_path",
]  # fmt: skip
DTYPES = [
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int8,
    torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2, torch.complex64,
]  # fmt: skip
special = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e30, -0.0, 0.0, 1.0])


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(
        st.lists(st.integers(0, 6), max_size=3).map(tuple) | st.sampled_from([(4, 32), (4, 64), (3, 32)])
    )
    values = torch.randn(shape) if shape else torch.randn(())
    if values.numel() and draw(st.booleans()):
        values.view(-1)[draw(st.integers(0, values.numel() - 1))] = draw(special)
    return values.to(dtype)


# ---------------------------------------------------------------------------------- properties
def bytes_mutations(data: bytes):
    cut = st.integers(0, len(data)).map(lambda n: data[:n])
    flips = st.lists(
        st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)), min_size=1, max_size=6
    ).map(lambda changes: _flip(data, changes))
    spliced = st.tuples(st.integers(0, len(data)), st.binary(max_size=64)).map(
        lambda p: data[: p[0]] + p[1] + data[p[0] :]
    )
    return cut | flips | spliced | st.binary(max_size=256)


def _flip(data: bytes, changes) -> bytes:
    out = bytearray(data)
    for index, mask in changes:
        out[index] ^= mask
    return bytes(out)


def check_bytes(data: bytes) -> None:
    path = fresh("x.safetensors")
    path.write_bytes(data)
    outcome(path)


def check_record_field(which: str, field_path: tuple, value) -> None:
    record, saved = read_raw(GOOD[which])
    node = record
    for key in field_path[:-1]:
        node = node[key] if isinstance(node.get(key), dict) else node.setdefault(key, {})
    node[field_path[-1]] = value
    outcome(write_raw(fresh("x.safetensors"), saved, record))


def check_tensor(which: str, name: str, value: torch.Tensor) -> None:
    record, _ = read_raw(GOOD[which])
    outcome(write_raw(fresh("x.safetensors"), {name: value}, record))


def check_peft_field(which: str, field: str, value) -> None:
    folder = fresh("peft")
    shutil.copytree(GOOD[which], folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config[field] = value
    (folder / "adapter_config.json").write_text(json.dumps(config))
    outcome(folder)


def check_peft_weights(which: str, value: torch.Tensor) -> None:
    folder = fresh("peft")
    shutil.copytree(GOOD[which], folder)
    save_file(
        {"prompt_embeddings": value}, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"}
    )
    outcome(folder)


def check_header(entries: dict, body: bytes) -> None:
    text = json.dumps(entries).encode()
    path = fresh("x.safetensors")
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    outcome(path)


header_entries = st.dictionaries(
    st.text(max_size=6),
    st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["F32", "F16", "I64", "BOOL", "F4", "x"]) | json_values,
            "shape": st.lists(st.integers(-2, 2**40), max_size=3) | json_values,
            "data_offsets": st.lists(st.integers(-2, 2**40), max_size=3) | json_values,
        }
    )
    | json_values,
    max_size=3,
)


def pickles():
    return st.sampled_from([pickle.dumps(RunsCode(WORK / MARKER_NAME), protocol=p) for p in range(6)])


def variant(config):
    """The same properties at a given number of examples."""

    @config
    @given(
        st.sampled_from(["prompt", "prefix"]).flatmap(lambda w: bytes_mutations(GOOD[w].read_bytes()))
        | pickles()
    )
    def bytes_property(data):
        check_bytes(data)

    @config
    @given(st.sampled_from(["prompt", "prefix"]), st.sampled_from(RECORD_PATHS), json_values)
    def record_property(which, field_path, value):
        check_record_field(which, field_path, value)

    @config
    @given(
        st.sampled_from(["prompt", "prefix"]),
        st.sampled_from(["embeddings", "prefix", "head.score.weight"]),
        tensors(),
    )
    def tensor_property(which, name, value):
        check_tensor(which, name, value)

    @config
    @given(st.sampled_from(["peft_prompt", "peft_prefix"]), st.sampled_from(PEFT_FIELDS), json_values)
    def peft_field_property(which, field, value):
        check_peft_field(which, field, value)

    @config
    @given(st.sampled_from(["peft_prompt", "peft_prefix"]), tensors())
    def peft_weights_property(which, value):
        check_peft_weights(which, value)

    @config
    @given(header_entries, st.binary(max_size=64))
    def header_property(entries, body):
        check_header(entries, body)

    return [
        bytes_property,
        record_property,
        tensor_property,
        peft_field_property,
        peft_weights_property,
        header_property,
    ]


PROPERTIES = ["bytes", "record", "tensor", "peft_field", "peft_weights", "header"]


@pytest.mark.parametrize("index", range(len(PROPERTIES)), ids=PROPERTIES)
def test_no_input_crashes_hangs_or_is_accepted_broken(index):
    variant(FAST)[index]()


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(PROPERTIES)), ids=PROPERTIES)
def test_thousands_of_inputs(index):
    variant(SLOW)[index]()


def test_the_strategies_reach_both_outcomes():
    """The properties are not vacuous: good files load, and a broken one is refused."""
    for which in ("prompt", "prefix", "peft_prompt", "peft_prefix"):
        softprompt.load(BASE, GOOD[which])
    record, saved = read_raw(GOOD["prompt"])
    with pytest.raises(softprompt.AdapterFileError):
        softprompt.load(
            BASE, write_raw(fresh("x.safetensors"), {"embeddings": saved["embeddings"] * math.inf}, record)
        )
