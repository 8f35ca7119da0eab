"""Shared fixtures for the training tests: a tiny GPT-2 folder (the test tokenizer) and small data files."""

from __future__ import annotations

import pytest
from train_helpers import save_tiny_gpt2, write_classification_data, write_generation_data


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2")


@pytest.fixture(scope="session")
def cls_data(tmp_path_factory):
    return write_classification_data(tmp_path_factory.mktemp("cls"))


@pytest.fixture(scope="session")
def gen_data(tmp_path_factory):
    return write_generation_data(tmp_path_factory.mktemp("gen"))


@pytest.fixture(scope="session")
def gpt2_base(tiny_gpt2):
    """The tiny GPT-2 and its tokenizer, loaded once and shared by runs (train(base=...))."""
    from softprompt.hub import load_base_model

    return load_base_model(str(tiny_gpt2))
