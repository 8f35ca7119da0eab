"""A method is one file plus one registration: a test-only method goes through wrap, save, load and the bank."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from tiny import random_ids, tiny_causal_lm

import softprompt
from softprompt.bank import TaskBank
from softprompt.methods import METHODS, Method, SoftPromptConfig, method_of
from softprompt.methods.base import SoftPrompt, VirtualTokens
from softprompt.methods.prompt_tuning import PromptEmbedding


@dataclass(frozen=True)
class MeanTokenConfig(SoftPromptConfig):
    """Virtual tokens that all start at the mean of the vocabulary's embeddings."""

    method: ClassVar[str] = "mean_token"
    num_virtual_tokens: int = 3
    init: str = "mean"


class MeanTokenPrompt(SoftPrompt):
    def __init__(self, config: MeanTokenConfig, start: torch.Tensor) -> None:
        super().__init__(config)
        self.embeddings = torch.nn.Parameter(start.repeat(config.num_virtual_tokens, 1))

    def forward(self) -> VirtualTokens:
        return VirtualTokens(self.embeddings)


class MeanToken(Method):
    config = MeanTokenConfig
    saves = "embeddings"
    reload_init = "file"
    peft_type = "PROMPT_TUNING"

    def build(self, config, model, shape, tokenizer=None):
        return MeanTokenPrompt(config, model.get_input_embeddings().weight.detach().float().mean(0))

    def rebuild(self, config, table, shape):
        return PromptEmbedding(config, table.float())


@pytest.fixture
def registered(monkeypatch):
    method = MeanToken()
    monkeypatch.setitem(METHODS, method.name, method)
    return method


def test_a_registered_method_wraps_saves_loads_and_serves(registered, tmp_path):
    base = tiny_causal_lm("llama")
    model = softprompt.wrap(base, MeanTokenConfig())
    assert method_of(model.prompt_config) is registered
    ids = random_ids(2, 5)
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.prompt.embeddings.grad is not None

    path = model.save(tmp_path / "mean.safetensors")
    again = softprompt.load(base, path)
    assert again.prompt_config == MeanTokenConfig(init="file")
    torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)

    bank = TaskBank(base)
    bank.add("mean", path)
    torch.testing.assert_close(bank(ids, tasks=["mean", "mean"]).logits, model(input_ids=ids).logits)


def test_an_unregistered_method_is_refused_by_name(tmp_path, registered):
    base = tiny_causal_lm("llama")
    path = softprompt.wrap(base, MeanTokenConfig()).save(tmp_path / "mean.safetensors")
    del METHODS[registered.name]
    with pytest.raises(softprompt.AdapterFileError, match="unknown method 'mean_token'"):
        softprompt.load(base, path)
