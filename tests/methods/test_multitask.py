"""Multitask prompt tuning: the composition, its file, its tasks in a task bank, and training on mixed rows."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tiny import padded_batch, random_ids, tiny_causal_lm

import softprompt
from softprompt.bank import TaskBank
from softprompt.files import TensorError, WrongModelError, write_adapter
from softprompt.files.adapter import read_adapter
from softprompt.files.errors import RecordError
from softprompt.methods import MultitaskPromptTuningConfig
from softprompt.methods.multitask import MultitaskPrompt, read_multitask, read_task
from softprompt.train.config import TrainSection
from softprompt.train.objectives import ClassificationObjective
from softprompt.transfer import MultitaskObjective, load_multitask, multitask_batches, train_steps

TASKS = ("rte", "cb", "sst2")


def trained_multitask(base, rank: int = 1, length: int = 3):
    """A wrapped multitask prompt whose shared prompt and factors have all moved from their init."""
    config = MultitaskPromptTuningConfig(num_virtual_tokens=length, tasks=TASKS, rank=rank, init="random")
    model = softprompt.wrap(base, config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.prompt.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model


def test_a_task_prompt_is_the_shared_prompt_times_its_rank_r_factor():
    config = MultitaskPromptTuningConfig(num_virtual_tokens=2, tasks=("a", "b"), rank=2)
    shared = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # (P=2, E=3)
    u = torch.tensor([[[1.0, 0.0], [2.0, 1.0]], [[0.5, 0.5], [1.0, -1.0]]])  # (K=2, P=2, r=2)
    v = torch.tensor(
        [[[1.0, 1.0], [0.0, 2.0], [3.0, 0.0]], [[2.0, 0.0], [1.0, 1.0], [0.0, 4.0]]]
    )  # (K, E, r)
    prompt = MultitaskPrompt(config, shared, u, v)
    for k, task in enumerate(("a", "b")):
        by_hand = torch.tensor(
            [
                [shared[i, j] * sum(u[k, i, r] * v[k, j, r] for r in range(2)) for j in range(3)]
                for i in range(2)
            ]
        )
        torch.testing.assert_close(prompt.composed(task), by_hand)
        torch.testing.assert_close(prompt.task(task)().embeddings, by_hand)
    # task "b", row 1, column 2: 6 * (1 * 0 + -1 * 4)
    assert prompt.composed("b")[1, 2].item() == -24.0
    # run as one prompt (no task named), a multitask prompt is its shared prompt
    assert torch.equal(prompt().embeddings, shared)
    with pytest.raises(KeyError, match="no task 'c' in this multitask prompt; its tasks: a, b"):
        prompt.task("c")


def test_every_task_starts_at_the_shared_prompt():
    base = tiny_causal_lm("llama")
    rank1 = softprompt.wrap(base, MultitaskPromptTuningConfig(num_virtual_tokens=3, tasks=TASKS)).prompt
    for task in TASKS:
        assert torch.equal(rank1.composed(task), rank1.shared)
    rank3 = softprompt.wrap(
        base, MultitaskPromptTuningConfig(num_virtual_tokens=3, tasks=TASKS, rank=3)
    ).prompt
    torch.testing.assert_close(rank3.composed("cb"), rank3.shared, atol=0.1, rtol=0.1)
    assert not torch.equal(rank3.task_u[0, :, 0], rank3.task_u[0, :, 1])  # the components differ
    assert rank1.task_u.shape == (3, 3, 1) and rank1.task_v.shape == (3, 32, 1)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"tasks": ("a", "b", "a")}, "must not repeat a name; a appear"),
        ({"tasks": ("a", "")}, "tasks must be non-empty strings"),
        ({"tasks": ("a",), "rank": 0}, "rank must be at least 1"),
    ],
)
def test_config_errors_say_what_is_wrong(options, message):
    with pytest.raises(ValueError, match=message):
        MultitaskPromptTuningConfig(**options)


def test_the_file_round_trips_the_shared_prompt_and_every_task(tmp_path):
    base = tiny_causal_lm("llama")
    model = trained_multitask(base, rank=2)
    path = model.save(tmp_path / "mpt.safetensors")
    assert sorted(load_file(path)) == ["embeddings", "task_u", "task_v"]

    again = read_multitask(path, model.shape)
    assert again.config == MultitaskPromptTuningConfig(
        num_virtual_tokens=3, tasks=TASKS, rank=2, init="random"
    )
    for name in ("shared", "task_u", "task_v"):
        assert torch.equal(getattr(again, name), getattr(model.prompt, name))
    assert load_multitask(base, path).prompt.task_v.requires_grad

    ids = random_ids(2, 5)
    for task in TASKS:
        alone = softprompt.SoftPromptModel(base, model.prompt.task(task), model.shape)
        loaded = softprompt.load(base, path, task=task)
        assert loaded.prompt_config.method == "prompt_tuning"
        torch.testing.assert_close(loaded(input_ids=ids).logits, alone(input_ids=ids).logits)
    # softprompt.load reads one prompt: the shared one (the start for a new task)
    shared = softprompt.load(base, path)
    assert torch.equal(shared.prompt.embeddings, model.prompt.shared)
    with pytest.raises(KeyError, match="has no task 'qnli'; its tasks: rte, cb, sst2"):
        read_task(path, model.shape, "qnli")


def test_a_task_saved_alone_is_an_ordinary_prompt_tuning_file(tmp_path):
    base = tiny_causal_lm("llama")
    model = trained_multitask(base)
    single = softprompt.SoftPromptModel(base, model.prompt.task("cb"), model.shape)
    record, tensors = read_adapter(single.save(tmp_path / "cb.safetensors"))
    assert record["method"] == "prompt_tuning"
    torch.testing.assert_close(tensors["embeddings"], model.prompt.composed("cb").detach())


def _rewrite(path, tmp_path, **changes):
    """The file at ``path`` written again with some tensors changed (a checksum that matches them)."""
    record, tensors = read_adapter(path)
    record.pop("checksum")
    return write_adapter(tmp_path / "bad.safetensors", {**tensors, **changes}, record)


def test_a_corrupt_file_is_refused_with_the_reason(tmp_path):
    base = tiny_causal_lm("llama")
    path = trained_multitask(base).save(tmp_path / "mpt.safetensors")
    shape = softprompt.families.model_shape(base)
    tensors = load_file(path)
    with pytest.raises(TensorError, match=r"tensor 'task_u' is of shape \(2, 3, 1\); expected \(3, 3, 1\)"):
        read_multitask(_rewrite(path, tmp_path, task_u=tensors["task_u"][:2]), shape)
    with pytest.raises(TensorError, match=r"tensor 'task_v' is of shape \(3, 31, 1\); expected \(3, 32, 1\)"):
        read_multitask(_rewrite(path, tmp_path, task_v=tensors["task_v"][:, :31]), shape)
    nan = tensors["task_v"].clone()
    nan[1, 4, 0] = float("nan")
    with pytest.raises(TensorError, match="1 of 96 numbers NaN or infinite"):
        read_multitask(_rewrite(path, tmp_path, task_v=nan), shape)
    record, kept = read_adapter(path)
    record.pop("checksum")
    without = write_adapter(tmp_path / "bad.safetensors", {"embeddings": kept["embeddings"]}, record)
    with pytest.raises(
        TensorError, match=r"named \['embeddings'\]; expected one tensor 'embeddings'.*'task_u', 'task_v'"
    ):
        read_multitask(without, shape)
    flipped = bytearray(path.read_bytes())
    flipped[-3] ^= 0xFF  # a number of the last tensor changes; the checksum no longer matches
    (tmp_path / "flipped.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(softprompt.AdapterFileError, match="checksum"):
        read_multitask(tmp_path / "flipped.safetensors", shape)


def test_a_file_of_another_base_model_or_method_is_refused(tmp_path):
    path = trained_multitask(tiny_causal_lm("llama")).save(tmp_path / "mpt.safetensors")
    other = softprompt.families.model_shape(tiny_causal_lm("opt"))
    with pytest.raises(WrongModelError, match="base_model is 'tiny-llama'.*embed_dim: file 32, model 16"):
        read_multitask(path, other)
    with pytest.raises(WrongModelError, match="base_model"):
        TaskBank(tiny_causal_lm("opt")).add("rte", path, task="rte")
    base = tiny_causal_lm("llama")
    single = softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=3)).save(tmp_path / "pt")
    with pytest.raises(RecordError, match=r"(?s)method is 'prompt_tuning'.*load it with softprompt.load"):
        read_multitask(single, softprompt.families.model_shape(base))


def test_peft_export_is_refused_and_save_pretrained_keeps_softprompts_file(tmp_path):
    model = trained_multitask(tiny_causal_lm("llama"))
    with pytest.raises(ValueError, match="does not write peft's multitask layout"):
        model.export_peft(tmp_path / "peft")
    folder = model.save_pretrained(tmp_path / "folder")
    assert (folder / "softprompt.safetensors").is_file() and not (folder / "adapter_config.json").exists()


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_bank_mixes_multitask_tasks_with_other_prompts_row_by_row(tmp_path, side):
    base = tiny_causal_lm("llama")
    path = trained_multitask(base, length=4).save(tmp_path / "mpt.safetensors")
    other = softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=2, init="random")).eval()
    plain = softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=6, init="random")).eval()
    bank = TaskBank(base).eval()
    for task in TASKS:
        bank.add(task, path, task=task)
    bank.add("prefix", other)
    bank.add("plain", plain)
    singles = {task: softprompt.load(base, path, task=task).eval() for task in TASKS}
    singles |= {"prefix": other, "plain": plain, None: softprompt.SoftPromptModel(base, None, other.shape)}
    tasks = ["cb", "prefix", "rte", None, "plain", "sst2", "cb"]
    rows = [random_ids(1, n, seed=n)[0] for n in (5, 3, 6, 4, 7, 2, 3)]
    ids, mask = padded_batch(rows, side)
    logits = bank(ids, mask, tasks=tasks).logits
    for i, (task, row) in enumerate(zip(tasks, rows, strict=True)):
        alone = singles[task](input_ids=row[None]).logits[0]
        torch.testing.assert_close(logits[i][mask[i].bool()], alone, atol=1e-5, rtol=1e-5)
    info = {row.name: row for row in bank.info()}
    assert (info["cb"].method, info["cb"].length, info["cb"].numbers) == ("prompt_tuning", 4, 4 * 32)
    bank.add("shared", load_multitask(base, path))  # a whole multitask prompt serves its shared prompt
    assert bank.info()[-1].numbers == 4 * 32 + 3 * 4 + 3 * 32
    ids, mask = padded_batch(rows[:2], side)
    shared = softprompt.load(base, path).eval()
    torch.testing.assert_close(
        bank(ids, mask, tasks=["shared"] * 2).logits, shared(input_ids=ids, attention_mask=mask).logits
    )
    with pytest.raises(ValueError, match=r"for a prompt in memory pass prompt.task\('rte'\)"):
        bank.add("again", other, task="rte")


def label_batch(tasks):
    rows = [random_ids(1, n, seed=10 + n)[0] for n in (4, 6, 3, 5)]
    ids, mask = padded_batch(rows, "left")
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "task": torch.tensor(tasks),
        "label": torch.tensor([1, 0, 2, 0]),
    }


LABEL_WORDS = {"rte": [5, 6], "cb": [5, 6, 7], "sst2": [8, 9]}


def test_mixed_task_scores_equal_each_task_alone_over_its_own_label_words():
    base = tiny_causal_lm("llama")
    model = trained_multitask(base)
    objective = MultitaskObjective(model, LABEL_WORDS)
    batch = label_batch([1, 0, 1, 2])
    scores = objective.scores(batch["input_ids"], batch["attention_mask"], batch["task"])  # (B, 3)
    for i, k in enumerate(batch["task"].tolist()):
        task = TASKS[k]
        alone = ClassificationObjective(
            softprompt.SoftPromptModel(base, model.prompt.task(task), model.shape), LABEL_WORDS[task]
        )
        expected = alone.scores(batch["input_ids"][i : i + 1], batch["attention_mask"][i : i + 1])[0]
        classes = len(LABEL_WORDS[task])
        torch.testing.assert_close(scores[i, :classes], expected, atol=1e-5, rtol=1e-5)
        assert torch.isinf(scores[i, classes:]).all()
    with pytest.raises(KeyError, match=r"no label words for the tasks \['sst2'\]"):
        MultitaskObjective(model, {"rte": [5, 6], "cb": [5, 6, 7]})


def test_a_step_trains_the_shared_prompt_and_the_batchs_tasks_factors_only():
    base = tiny_causal_lm("llama")
    model = trained_multitask(base)
    objective = MultitaskObjective(model, LABEL_WORDS)
    batch = label_batch([0, 2, 0, 2])  # rte and sst2 rows; no cb
    objective(batch).backward()
    prompt = model.prompt
    assert prompt.shared.grad.abs().sum() > 0
    for k, task in enumerate(TASKS):
        moved = bool(prompt.task_u.grad[k].abs().sum() > 0) and bool(prompt.task_v.grad[k].abs().sum() > 0)
        assert moved == (task != "cb"), task


def test_training_on_mixed_batches_lowers_the_loss():
    base = tiny_causal_lm("llama")
    model = softprompt.wrap(
        base, MultitaskPromptTuningConfig(num_virtual_tokens=3, tasks=TASKS, init="random")
    )
    objective = MultitaskObjective(model, LABEL_WORDS)
    examples = {
        task: [softprompt.data.Encoded(random_ids(1, 4, seed=s)[0].tolist(), label=s % 2) for s in range(4)]
        for task in TASKS
    }
    batches = multitask_batches(examples, TASKS, 4, pad_token_id=0)
    losses = train_steps(objective, batches, TrainSection(lr=0.1), 30)
    assert sum(losses[-5:]) < sum(losses[:5])
