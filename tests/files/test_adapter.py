"""Adapter files: tiny, exact round trips, atomic writes, and clear refusals of bad input."""

import json

import pytest
import torch
from safetensors.torch import save_file
from tiny import random_ids, tiny_causal_lm

import softprompt
from softprompt.files.adapter import ADAPTER_FILENAME, read_adapter


@pytest.fixture
def trained(tmp_path):
    model = softprompt.wrap(
        tiny_causal_lm("llama"), softprompt.PrefixTuningConfig(num_virtual_tokens=4)
    ).eval()
    with torch.no_grad():
        model.prompt.prefix.add_(0.1)
    return model


@pytest.mark.parametrize(
    "config",
    [
        softprompt.PromptTuningConfig(num_virtual_tokens=6),
        softprompt.PrefixTuningConfig(num_virtual_tokens=4, projection_hidden_size=8, init="random"),
        softprompt.PTuningConfig(num_virtual_tokens=5, encoder="lstm", encoder_hidden_size=8),
    ],
    ids=lambda c: c.method,
)
def test_save_load_round_trip_gives_the_same_logits_and_a_tiny_file(config, tmp_path):
    model = softprompt.wrap(tiny_causal_lm("mistral"), config).eval()
    ids = random_ids(2, 5)
    expected = model(input_ids=ids).logits
    path = model.save(tmp_path / "task.safetensors")
    reloaded = softprompt.load(tiny_causal_lm("mistral"), path).eval()
    torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, atol=1e-6, rtol=1e-6)
    numbers = next(iter(model.prompt.folded().values())).numel()
    assert path.stat().st_size < numbers * 4 + 4096  # the numbers plus a header of a few KiB
    record, tensors = read_adapter(path)
    assert record["method"] == config.method and record["base_model"]["name_or_path"] == "tiny-mistral"
    assert record["base_model"]["layers"] == [[2, 8], [2, 8]]
    assert all(p.requires_grad for p in reloaded.prompt.parameters())  # reloaded prompts keep training


def test_half_precision_files_are_half_the_size(trained, tmp_path):
    full = trained.save(tmp_path / "full.safetensors")
    half = trained.save(tmp_path / "half.safetensors", dtype=torch.bfloat16)
    assert read_adapter(half)[1]["prefix"].dtype == torch.bfloat16
    assert half.stat().st_size < full.stat().st_size * 0.75
    torch.testing.assert_close(
        softprompt.load(tiny_causal_lm("llama"), half).prompt.prefix,
        trained.prompt.prefix,
        atol=2e-2,
        rtol=2e-2,
    )


def test_saving_into_a_folder_uses_the_standard_name(trained, tmp_path):
    path = trained.save(tmp_path / "run")
    assert path == tmp_path / "run" / ADAPTER_FILENAME
    assert softprompt.load(tiny_causal_lm("llama"), tmp_path / "run").prompt.prefix.shape == (4, 64)


def test_refuses_a_prompt_made_for_another_family(trained, tmp_path):
    path = trained.save(tmp_path / "llama.safetensors")
    with pytest.raises(
        softprompt.AdapterFileError, match="made for another base model \\(tiny-llama\\).*family"
    ):
        softprompt.load(tiny_causal_lm("gpt2"), path)


def test_refuses_a_prompt_made_for_another_shape(tmp_path):
    model = softprompt.wrap(tiny_causal_lm("qwen2"), softprompt.PromptTuningConfig(num_virtual_tokens=3))
    path = model.save(tmp_path / "qwen2.safetensors")
    other = tiny_causal_lm("qwen2")
    other.config.vocab_size = 50  # pretend: same family, another vocabulary
    with pytest.raises(softprompt.AdapterFileError, match="vocab_size: file 96, model 50"):
        softprompt.load(other, path)


def test_refuses_truncated_and_corrupt_files(trained, tmp_path):
    path = trained.save(tmp_path / "good.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    for name in ("cut", "junk"):
        with pytest.raises(softprompt.AdapterFileError, match="truncated or corrupt"):
            softprompt.load(tiny_causal_lm("llama"), tmp_path / f"{name}.safetensors")


def test_refuses_foreign_safetensors_and_unknown_versions(trained, tmp_path):
    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(softprompt.AdapterFileError, match="not a softprompt adapter"):
        softprompt.load(tiny_causal_lm("llama"), tmp_path / "foreign.safetensors")
    record, tensors = read_adapter(trained.save(tmp_path / "good.safetensors"))
    record["format_version"] = 99
    save_file(tensors, str(tmp_path / "future.safetensors"), metadata={"softprompt": json.dumps(record)})
    with pytest.raises(softprompt.AdapterFileError, match="format version 99"):
        softprompt.load(tiny_causal_lm("llama"), tmp_path / "future.safetensors")


def test_a_failed_save_leaves_the_old_file_intact(trained, tmp_path, monkeypatch):
    path = trained.save(tmp_path / "task.safetensors")
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("softprompt.files.adapter.save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trained.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task.safetensors"]  # no temp file left


def test_peft_folder_settings_that_could_run_code_are_ignored(trained, tmp_path, caplog):
    folder = trained.export_peft(tmp_path / "peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    config |= {"tokenizer_kwargs": {"trust_remote_code": True}, "auto_mapping": {"base_model_class": "Evil"}}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with caplog.at_level("INFO"):
        loaded = softprompt.load(tiny_causal_lm("llama"), folder)
    assert "tokenizer_kwargs" in caplog.text
    ids = random_ids(1, 5)
    torch.testing.assert_close(loaded(input_ids=ids).logits, trained(input_ids=ids).logits)


def test_peft_prefix_for_another_model_is_refused(trained, tmp_path):
    folder = trained.export_peft(tmp_path / "peft")
    with pytest.raises(softprompt.AdapterFileError, match="needs \\(4, 128\\)"):
        softprompt.load(tiny_causal_lm("gpt2"), folder)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        softprompt.load(tiny_causal_lm("llama"), tmp_path / "nothing.safetensors")
