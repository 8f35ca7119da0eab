"""A run's frozen base: ``model.dtype: auto`` follows the hardware (printed at load), a dtype name
overrides it (the run's line says which and why), ``model.quantization`` loads the base quantized; the
trained file stores fp32."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import classification_config, save_small_llama, save_tiny_bert

from softprompt import precision
from softprompt.train import ConfigError, load_config, train
from softprompt.train.build import dtype_choice, load_base, make_task

NATIVE = frozenset({"avx512f", "avx512_bf16"})
EMULATED = frozenset({"avx2"})


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend to run on a CPU with the given flags (and no GPU)."""

    def pretend(flags: frozenset[str]) -> None:
        monkeypatch.setattr(precision, "read_cpu_flags", lambda *a: flags)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    return pretend


def config_for(tiny_gpt2, cls_data, tmp_path, **model):
    raw = classification_config(tiny_gpt2, cls_data, tmp_path / "run")
    raw["model"].update(model)
    return load_config(None, base=raw)


def test_model_dtype_defaults_to_auto_and_names_its_choices(tiny_gpt2, cls_data, tmp_path):
    assert config_for(tiny_gpt2, cls_data, tmp_path).model.dtype == "auto"
    assert config_for(tiny_gpt2, cls_data, tmp_path).model.quantization is None
    with pytest.raises(ConfigError, match=r"model.dtype: Input should be 'auto', 'float32', 'bfloat16' or"):
        config_for(tiny_gpt2, cls_data, tmp_path, dtype="half")
    with pytest.raises(ConfigError, match=r"model.quantization: Input should be 'int8' or 'nf4'"):
        config_for(tiny_gpt2, cls_data, tmp_path, quantization="int4")


@pytest.mark.parametrize(
    ("flags", "expected", "line"),
    [
        (NATIVE, torch.bfloat16, "base dtype: bfloat16 (this CPU computes bf16 natively: avx512_bf16; "
         "set model.dtype: float32 to override)"),
        (EMULATED, torch.float32, "base dtype: float32 (this CPU has no native bf16 arithmetic; "
         "set model.dtype: bfloat16 to override)"),
    ],
)  # fmt: skip
def test_auto_loads_bf16_where_the_cpu_computes_it_and_says_so(
    tiny_gpt2, cls_data, tmp_path, cpu_flags, caplog, flags, expected, line
):
    cpu_flags(flags)
    config = config_for(tiny_gpt2, cls_data, tmp_path)
    task = make_task(config.task)
    assert dtype_choice(config, task).message() == line
    with caplog.at_level(logging.DEBUG, logger="softprompt"):
        base, _ = load_base(config, task)
    assert {p.dtype for p in base.parameters()} == {expected}
    assert line in caplog.messages


def test_a_dtype_name_overrides_the_hardware(tiny_gpt2, cls_data, tmp_path, cpu_flags):
    cpu_flags(NATIVE)
    config = config_for(tiny_gpt2, cls_data, tmp_path, dtype="float32")
    task = make_task(config.task)
    assert dtype_choice(config, task).message() == "base dtype: float32 (set in model.dtype)"
    base, _ = load_base(config, task)
    assert base.dtype == torch.float32


def test_an_encoders_new_head_keeps_the_base_fp32_under_auto(cls_data, tmp_path, cpu_flags):
    cpu_flags(NATIVE)
    raw = classification_config(save_tiny_bert(tmp_path / "bert"), cls_data, tmp_path / "run")
    config = load_config(None, base=raw)
    task = make_task(config.task)
    assert dtype_choice(config, task).reason == "a new task head trains inside the base model"
    base, _ = load_base(config, task)
    assert base.dtype == torch.float32


def test_a_run_on_a_bf16_base_trains_and_saves_an_fp32_prompt(tiny_gpt2, cls_data, tmp_path, cpu_flags):
    cpu_flags(NATIVE)
    summary = train(config_for(tiny_gpt2, cls_data, tmp_path))
    assert summary.finished and summary.dev is not None
    assert {t.dtype for t in load_file(str(tmp_path / "run" / "softprompt.safetensors")).values()} == {
        torch.float32
    }


# ------------------------------------------------------------------------------------ quantization
@pytest.fixture(scope="module")
def llama64(tmp_path_factory):
    return save_small_llama(tmp_path_factory.mktemp("llama64"))


def test_model_quantization_loads_the_base_quantized(llama64, cls_data, tmp_path):
    pytest.importorskip("bitsandbytes")
    from softprompt.quantization import quantization_of

    config = config_for(llama64, cls_data, tmp_path, quantization="nf4", dtype="float32")
    base, tokenizer = load_base(config, make_task(config.task))
    assert quantization_of(base) == "nf4" and tokenizer.pad_token is not None
    assert type(base.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"


def test_quantizing_a_base_with_a_new_head_is_refused_with_the_fix(cls_data, tmp_path):
    raw = classification_config(save_tiny_bert(tmp_path / "bert"), cls_data, tmp_path / "run")
    raw["model"]["quantization"] = "int8"
    config = load_config(None, base=raw)
    with pytest.raises(
        ValueError, match=r"trains a new sequence-classification head \(set model.quantization: null\)"
    ):
        load_base(config, make_task(config.task))
