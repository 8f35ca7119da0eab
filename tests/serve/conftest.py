"""Fixtures of the server tests: a tiny random Llama, the tokenizer, and an adapter file per method."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import TASKS, make_tokenizer
from tiny import tiny_causal_lm

import softprompt


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def base():
    return tiny_causal_lm("llama")


@pytest.fixture(scope="session")
def adapters(base, tmp_path_factory) -> dict[str, Path]:
    """An adapter file per task of ``TASKS``."""
    folder = tmp_path_factory.mktemp("adapters")
    return {
        name: softprompt.wrap(base, config).save(folder / f"{name}.safetensors")
        for name, config in TASKS.items()
    }
