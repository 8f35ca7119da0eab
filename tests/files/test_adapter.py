"""Adapter files: tiny, exact round trips, atomic writes, and clear refusals of bad input."""

import json

import pytest
import torch
from safetensors.torch import save, save_file
from tiny import random_ids, tiny_causal_lm, tiny_seq2seq_lm

import softprompt
from softprompt.files import CorruptFileError, RecordError, VersionError, WrongModelError
from softprompt.files.adapter import ADAPTER_FILENAME, read_adapter, write_adapter


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
    with pytest.raises(WrongModelError) as refused:
        softprompt.load(tiny_causal_lm("gpt2"), path)
    assert str(refused.value) == (
        f"{path}: base_model is 'tiny-llama', which differs from this model in family: file 'llama', "
        "model 'gpt2'; layers: file [[2, 8], [2, 8]], model [[4, 8], [4, 8]]; expected this gpt2 model "
        "(tiny-gpt2).\nThe file was made for another base model (tiny-llama): load it onto that model "
        "(--base NAME on the command line)."
    )


def test_refuses_a_prompt_made_for_another_shape(tmp_path):
    model = softprompt.wrap(tiny_causal_lm("qwen2"), softprompt.PromptTuningConfig(num_virtual_tokens=3))
    path = model.save(tmp_path / "qwen2.safetensors")
    other = tiny_causal_lm("qwen2")
    other.config.vocab_size = 50  # pretend: same family, another vocabulary
    with pytest.raises(WrongModelError, match="vocab_size: file 96, model 50"):
        softprompt.load(other, path)


def test_refuses_truncated_and_corrupt_files(trained, tmp_path):
    path = trained.save(tmp_path / "good.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    for name, says in (("cut", "truncated"), ("junk", "not valid JSON")):
        with pytest.raises(CorruptFileError, match=says):
            softprompt.load(tiny_causal_lm("llama"), tmp_path / f"{name}.safetensors")


def test_flipped_bytes_in_the_numbers_fail_the_checksum(trained, tmp_path):
    path = trained.save(tmp_path / "good.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last byte of the prefix: a tiny change of one number, still finite
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="the tensor data is checksum sha256:"):
        softprompt.load(tiny_causal_lm("llama"), path)


def test_files_of_format_version_1_without_a_checksum_still_load(trained, tmp_path):
    record, tensors = read_adapter(trained.save(tmp_path / "new.safetensors"))
    del record["checksum"]
    record["format_version"] = 1  # what softprompt wrote before the checksum
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={"softprompt": json.dumps(record)})
    loaded = softprompt.load(tiny_causal_lm("llama"), old)
    assert torch.equal(loaded.prompt.prefix, trained.prompt.prefix)


def test_refuses_foreign_safetensors_and_unknown_versions(trained, tmp_path):
    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(RecordError, match="but not a softprompt adapter"):
        softprompt.load(tiny_causal_lm("llama"), tmp_path / "foreign.safetensors")
    record, tensors = read_adapter(trained.save(tmp_path / "good.safetensors"))
    record["format_version"] = 99
    save_file(tensors, str(tmp_path / "future.safetensors"), metadata={"softprompt": json.dumps(record)})
    with pytest.raises(VersionError, match="format_version is 99 \\(int\\); expected one of \\(1, 2\\)"):
        softprompt.load(tiny_causal_lm("llama"), tmp_path / "future.safetensors")


def test_a_file_without_a_suffix_is_read_as_a_file(trained, tmp_path):
    path = trained.save(tmp_path / "task.safetensors").rename(tmp_path / "upload")
    assert torch.equal(softprompt.load(tiny_causal_lm("llama"), path).prompt.prefix, trained.prompt.prefix)


def test_the_recorded_task_comes_back_on_the_model(trained, tmp_path):
    record, tensors = read_adapter(trained.save(tmp_path / "plain.safetensors"))
    assert softprompt.load(tiny_causal_lm("llama"), tmp_path / "plain.safetensors").task is None
    task = {"template": "Review: {text}\nSentiment:", "label_words": {"pos": "good"}, "chat_template": False}
    path = write_adapter(tmp_path / "task.safetensors", tensors, {**record, "task": task})
    assert softprompt.load(tiny_causal_lm("llama"), path).task == task


def test_a_prompt_for_a_model_of_another_head_layout_names_the_config(tmp_path):
    t5 = softprompt.wrap(
        tiny_seq2seq_lm("t5"), softprompt.PrefixTuningConfig(num_virtual_tokens=2, prefix_sites="decoder")
    )
    record, tensors = read_adapter(t5.save(tmp_path / "t5.safetensors"))
    llama = tiny_causal_lm("llama")
    record["base_model"] = {"name_or_path": "tiny-llama", **softprompt.model_shape(llama).fingerprint()}
    path = write_adapter(tmp_path / "as-llama.safetensors", tensors, record)
    with pytest.raises(WrongModelError, match="prefix_sites='decoder' does not apply to llama"):
        softprompt.load(llama, path)


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


def test_peft_prefix_for_another_model_is_refused_naming_each_field(trained, tmp_path):
    folder = trained.export_peft(tmp_path / "peft")
    with pytest.raises(WrongModelError, match="family: file 'llama', model 'gpt2'; layers"):
        softprompt.load(tiny_causal_lm("gpt2"), folder)  # from the shape softprompt records in the weights
    (folder / "adapter_model.safetensors").write_bytes(
        save({"prompt_embeddings": trained.prompt.prefix.detach()}, metadata={"format": "pt"})
    )  # as peft itself writes it: only the config's fields say what it was made for
    with pytest.raises(WrongModelError) as refused:
        softprompt.load(tiny_causal_lm("gpt2"), folder)
    for difference in (
        "num_attention_heads: folder 2, model 4",
        "token_dim: folder 16, model 32",
        "prompt_embeddings width: folder 64, model 128",
    ):
        assert difference in str(refused.value)


def test_a_peft_folder_naming_another_base_model_warns_and_loads(trained, tmp_path, caplog):
    folder = trained.export_peft(tmp_path / "peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": "org/Other-1B"})
    )
    with caplog.at_level("WARNING"):
        loaded = softprompt.load(tiny_causal_lm("llama"), folder)
    assert "names the base model 'org/Other-1B', and this model is 'tiny-llama'" in caplog.text
    assert torch.equal(loaded.prompt.prefix, trained.prompt.prefix)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors: the path is nothing"):
        softprompt.load(tiny_causal_lm("llama"), tmp_path / "nothing.safetensors")
