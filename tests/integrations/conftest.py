"""What the integration tests share: no network (the Hub is offline, its cache a temp folder) and a
word-level tokenizer with a chat template, built in memory."""

from __future__ import annotations

import pytest
import transformers as T
from huggingface_hub import constants
from tiny import VOCAB
from tokenizers import Tokenizer, models, pre_tokenizers

SPECIAL = ["<pad>", "</s>", "<s>", "<unk>"]
WORDS = ["user", "assistant", ":", "where", "is", "paris", "what", "a", "cat", "hello", "hi", "the", "sun"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} : {{ message['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


@pytest.fixture(autouse=True)
def offline_hub(tmp_path, monkeypatch):
    """Every Hub call stays on this machine: offline mode, a fresh cache, no telemetry."""
    cache = tmp_path / "hf-cache"
    # huggingface_hub read the environment at import; its functions read these constants at call time.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def tokenizer() -> T.PreTrainedTokenizerFast:
    """A fast word-level tokenizer over the tiny models' 96 ids, with a chat template."""
    words = SPECIAL + WORDS + [f"w{i}" for i in range(VOCAB - len(SPECIAL) - len(WORDS))]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = T.PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok
