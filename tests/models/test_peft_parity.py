"""Same base model + same soft-prompt numbers => the same logits as peft (the reference), 1e-5 fp32.

Each case builds a peft model with its own random init, saves it, loads the folder with
``softprompt.load`` and compares logits of the real tokens; then exports back to peft's format and
checks peft reproduces softprompt. Cases where peft itself cannot run are skipped with peft's error.
"""

import peft
import pytest
import torch
from tiny import FAMILIES, random_ids, tiny_causal_lm

import softprompt

PEFT_CONFIGS = {
    "prompt_tuning": lambda: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    "prefix_tuning": lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    "prefix_tuning_mlp": lambda: peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=16
    ),
    "p_tuning_mlp": lambda: peft.PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16
    ),
    "p_tuning_lstm": lambda: peft.PromptEncoderConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=4,
        encoder_hidden_size=16,
        encoder_reparameterization_type="LSTM",
    ),
}


def peft_logits(family, method, tmp_path):
    base = tiny_causal_lm(family)
    torch.manual_seed(1)
    peft_model = peft.get_peft_model(base, PEFT_CONFIGS[method]()).eval()
    ids = random_ids(2, 7)
    try:
        with torch.no_grad():
            logits = peft_model(input_ids=ids).logits[:, -ids.shape[1] :]
    except Exception as err:  # noqa: BLE001 - report what peft could not do
        pytest.skip(f"peft cannot run {method} on {family}: {type(err).__name__}: {err}")
    peft_model.save_pretrained(tmp_path / "peft")
    return base, ids, logits


@pytest.mark.parametrize("method", sorted(PEFT_CONFIGS))
@pytest.mark.parametrize("family", FAMILIES)
def test_loading_a_peft_adapter_gives_peft_logits(family, method, tmp_path):
    base, ids, expected = peft_logits(family, method, tmp_path)
    model = softprompt.load(base, tmp_path / "peft")
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "p_tuning_mlp"])
@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3", "gemma2", "bloom"])
def test_exported_adapter_loads_in_peft_with_the_same_logits(family, method, tmp_path):
    base, ids, _ = peft_logits(family, method, tmp_path)
    configs = {
        "prompt_tuning": softprompt.PromptTuningConfig(num_virtual_tokens=3, init="random"),
        "prefix_tuning": softprompt.PrefixTuningConfig(num_virtual_tokens=3, init="random"),
        "p_tuning_mlp": softprompt.PTuningConfig(num_virtual_tokens=3, init="random", encoder_hidden_size=8),
    }
    model = softprompt.wrap(base, configs[method]).eval()
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    folder = model.export_peft(tmp_path / "exported")
    reloaded = peft.PeftModel.from_pretrained(tiny_causal_lm(family), folder).eval()
    with torch.no_grad():
        theirs = reloaded(input_ids=ids).logits[:, -ids.shape[1] :]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
