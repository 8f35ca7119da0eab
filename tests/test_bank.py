"""Mixed-task batches: every row equals the same row run alone with its task."""

import pytest
import torch
from tiny import padded_batch, random_ids, tiny_causal_lm

import softprompt
from softprompt.bank import TaskBank

TASKS = {
    "short_prompt": softprompt.PromptTuningConfig(num_virtual_tokens=2, init="random", seed=1),
    "long_prompt": softprompt.PromptTuningConfig(num_virtual_tokens=6, init="random", seed=2),
    "prefix": softprompt.PrefixTuningConfig(num_virtual_tokens=3, init="random", random_scale=1.0),
    "encoder": softprompt.PTuningConfig(
        num_virtual_tokens=4, encoder="lstm", encoder_hidden_size=8, init="random"
    ),
}


def bank_and_singles(family):
    base = tiny_causal_lm(family)
    bank = TaskBank(base)
    singles = {}
    for name, config in TASKS.items():
        singles[name] = softprompt.wrap(base, config).eval()
        bank.add(name, singles[name])
    singles[None] = softprompt.SoftPromptModel(base, None, bank.runner.shape)
    return bank.eval(), singles


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3", "bloom", "opt", "gemma2"])
def test_each_row_of_a_mixed_batch_equals_the_row_alone(family, side):
    bank, singles = bank_and_singles(family)
    tasks = ["long_prompt", "prefix", None, "short_prompt", "encoder", "long_prompt"]
    rows = [random_ids(1, n, seed=n)[0] for n in (5, 3, 6, 4, 7, 2)]
    ids, mask = padded_batch(rows, side)
    logits = bank(ids, mask, tasks=tasks).logits
    generated = bank.generate(ids, mask, tasks=tasks, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    for i, (task, row) in enumerate(zip(tasks, rows, strict=True)):
        alone = singles[task]
        torch.testing.assert_close(
            logits[i][mask[i].bool()], alone(input_ids=row[None]).logits[0], atol=1e-5, rtol=1e-5
        )
        expected = alone.generate(row[None], max_new_tokens=4, min_new_tokens=4, do_sample=False)[
            0, len(row) :
        ]
        assert generated[i, ids.shape[1] :].tolist() == expected.tolist(), f"row {i} ({task})"


def test_tasks_by_index_and_beam_search():
    bank, singles = bank_and_singles("llama")
    ids = random_ids(2, 4)
    by_index = bank.generate(ids, tasks=[1, 2], max_new_tokens=3, num_beams=2, do_sample=False)
    by_name = bank.generate(
        ids, tasks=["long_prompt", "prefix"], max_new_tokens=3, num_beams=2, do_sample=False
    )
    assert by_index.tolist() == by_name.tolist()
    alone = singles["prefix"].generate(ids[1:], max_new_tokens=3, num_beams=2, do_sample=False)
    assert by_name[1:].tolist() == alone.tolist()


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma", "falcon"])
def test_compiled_prompt_equals_embeddings_prepended_to_the_input(family):
    base = tiny_causal_lm(family)
    model = softprompt.wrap(base, TASKS["long_prompt"])
    bank = TaskBank(base)
    bank.add("task", model)
    ids = random_ids(2, 5)
    prompt = model.prompt.embeddings.detach()
    embeds = torch.cat([prompt[None].expand(2, -1, -1), base.get_input_embeddings()(ids)], dim=1)
    uncompiled = base(inputs_embeds=embeds).logits[:, prompt.shape[0] :]
    torch.testing.assert_close(bank(ids, tasks=["task", "task"]).logits, uncompiled, atol=1e-5, rtol=1e-5)


def test_compiled_caches_are_dropped_when_a_task_changes():
    bank, singles = bank_and_singles("qwen2")
    ids = random_ids(1, 4)
    first = bank(ids, tasks=["short_prompt"]).logits
    assert "short_prompt" in bank._compiled
    # an optimiser step changes the parameters in place: the next call recompiles
    with torch.no_grad():
        singles["short_prompt"].prompt.embeddings.add_(1.0)
    changed = bank(ids, tasks=["short_prompt"]).logits
    assert not torch.allclose(first, changed)
    torch.testing.assert_close(changed, singles["short_prompt"](input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    # replacing and removing drop the compiled cache too
    bank.add("short_prompt", singles["long_prompt"], replace=True)
    assert "short_prompt" not in bank._compiled
    torch.testing.assert_close(
        bank(ids, tasks=["short_prompt"]).logits, singles["long_prompt"](input_ids=ids).logits
    )
    bank.remove("short_prompt")
    assert "short_prompt" not in bank._compiled
    with pytest.raises(KeyError, match="no task 'short_prompt'; tasks: long_prompt, prefix, encoder"):
        bank(ids, tasks=["short_prompt"])


def test_tasks_from_files_and_listing(tmp_path):
    base = tiny_causal_lm("llama")
    bank = TaskBank(base)
    path = softprompt.wrap(base, TASKS["prefix"]).save(tmp_path / "prefix.safetensors")
    bank.add("from_file", path)
    bank.add("in_memory", softprompt.wrap(base, TASKS["long_prompt"]).prompt)
    info = {t.name: t for t in bank.info()}
    assert (info["from_file"].method, info["from_file"].length, info["from_file"].numbers) == (
        "prefix_tuning",
        3,
        3 * 64,
    )
    assert (info["in_memory"].method, info["in_memory"].length, info["in_memory"].bytes) == (
        "prompt_tuning",
        6,
        6 * 32 * 4,
    )


def test_bad_requests_are_refused_with_the_reason(tmp_path):
    bank, _ = bank_and_singles("llama")
    ids = random_ids(2, 3)
    with pytest.raises(KeyError, match="exists; pass replace=True"):
        bank.add("prefix", softprompt.wrap(bank.base_model, TASKS["prefix"]))
    with pytest.raises(ValueError, match="tasks names 1 rows but the batch has 2"):
        bank(ids, tasks=["prefix"])
    with pytest.raises(IndexError, match="bank has 4 tasks"):
        bank(ids, tasks=[0, 9])
    other = softprompt.wrap(tiny_causal_lm("gpt2"), TASKS["prefix"])
    with pytest.raises(ValueError, match="another base model \\(tiny-gpt2\\)"):
        bank.add("gpt2_task", other)


SEQ2SEQ_TASKS = {
    "short_prompt": softprompt.PromptTuningConfig(num_virtual_tokens=2, init="random", seed=1),
    "long_prompt": softprompt.PromptTuningConfig(num_virtual_tokens=5, init="random", seed=2),
    "prefix_all_sites": softprompt.PrefixTuningConfig(num_virtual_tokens=3, init="random", random_scale=1.0),
    "prefix_decoder": softprompt.PrefixTuningConfig(
        num_virtual_tokens=4, init="random", random_scale=1.0, prefix_sites="decoder", seed=5
    ),
}


SEQ2SEQ_MIXES = {
    # T5's relative positions do not move with a row's offset: any mix works.
    "t5": ["long_prompt", "prefix_all_sites", None, "short_prompt", "prefix_decoder"],
    # BART numbers positions by index: only tasks of equal prompt lengths share a batch.
    "bart": ["long_prompt", "long_prompt_too", "long_prompt", "long_prompt_too", "long_prompt"],
}


def seq2seq_bank(family):
    from tiny import tiny_seq2seq_lm

    base = tiny_seq2seq_lm(family)
    bank = TaskBank(base).eval()
    singles = {None: softprompt.Seq2SeqSoftPromptModel(base, None, bank.runner.shape)}
    tasks = {
        **SEQ2SEQ_TASKS,
        "long_prompt_too": softprompt.PTuningConfig(num_virtual_tokens=5, encoder_hidden_size=8),
    }
    for name, config in tasks.items():
        singles[name] = softprompt.wrap(base, config).eval()
        bank.add(name, singles[name])
    return bank, singles


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family", ["t5", "bart"])
def test_encoder_decoder_rows_of_a_mixed_batch_equal_the_rows_alone(family, side):
    bank, singles = seq2seq_bank(family)
    tasks = SEQ2SEQ_MIXES[family]
    rows = [random_ids(1, n, seed=n)[0] for n in (5, 3, 6, 4, 7)]
    ids, mask = padded_batch(rows, side)
    targets = random_ids(len(rows), 4, seed=9)
    logits = bank(ids, mask, tasks=tasks, labels=targets).logits
    generated = bank.generate(ids, mask, tasks=tasks, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    for i, (task, row) in enumerate(zip(tasks, rows, strict=True)):
        alone = singles[task]
        expected = alone(input_ids=row[None], labels=targets[i : i + 1]).logits[0]
        torch.testing.assert_close(logits[i], expected, atol=1e-5, rtol=1e-5)
        expected_ids = alone.generate(row[None], max_new_tokens=4, min_new_tokens=4, do_sample=False)[0]
        assert generated[i].tolist() == expected_ids.tolist(), f"row {i} ({task})"


def test_bart_refuses_to_mix_prompts_that_would_shift_positions():
    bank, _ = seq2seq_bank("bart")
    with pytest.raises(softprompt.UnsupportedModelError, match="numbers positions by index"):
        bank(random_ids(2, 4), tasks=["long_prompt", "short_prompt"], labels=random_ids(2, 3))


def test_a_bank_refuses_encoder_classifiers():
    from tiny import tiny_encoder

    with pytest.raises(softprompt.UnsupportedModelError, match="serves causal and seq2seq language models"):
        TaskBank(tiny_encoder("bert"))


def test_a_bank_refuses_decoder_classifiers_whose_rows_would_share_one_head():
    from tiny import tiny_model

    message = (
        "a task bank serves causal and seq2seq language models; this llama model is a sequence-classification "
        "model (classifiers carry a task head each: serve them one model per task)"
    )
    with pytest.raises(softprompt.UnsupportedModelError) as refused:
        TaskBank(tiny_model("llama", "sequence-classification"))
    assert str(refused.value) == message
