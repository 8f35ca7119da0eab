"""The base model's dtype: bf16 only where the hardware computes it natively; on a bf16 base the prompt
(and its gradient, its optimiser state, its file) stays fp32 and trains as on an fp32 base."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from tiny import random_ids, tiny_causal_lm

import softprompt
from softprompt.precision import choose_dtype, native_bf16_flag, read_cpu_flags
from softprompt.train.core import step
from softprompt.train.objectives import ClassificationObjective

METHODS = {
    "prompt_tuning": softprompt.PromptTuningConfig(num_virtual_tokens=4, init="random"),
    "prefix_tuning": softprompt.PrefixTuningConfig(num_virtual_tokens=4, init="random", random_scale=1.0),
    "p_tuning": softprompt.PTuningConfig(num_virtual_tokens=4, init="random"),
}
LABEL_IDS = [5, 6]


# ------------------------------------------------------------------------------------ the decision
@pytest.mark.parametrize(
    ("flags", "expected", "reason"),
    [
        ({"avx512f", "avx512_bf16"}, torch.bfloat16, "this CPU computes bf16 natively: avx512_bf16"),
        (
            {"avx512_bf16", "amx_bf16", "amx_tile"},
            torch.bfloat16,
            "this CPU computes bf16 natively: amx_bf16",
        ),
        ({"avx2", "avx512f", "avx512bw"}, torch.float32, "this CPU has no native bf16 arithmetic"),
        (set(), torch.float32, "this CPU has no native bf16 arithmetic"),
    ],
)
def test_auto_picks_bf16_only_on_cpus_with_bf16_instructions(flags, expected, reason):
    choice = choose_dtype("auto", cpu_flags=frozenset(flags), cuda=False)
    assert (choice.dtype, choice.reason, choice.automatic) == (expected, reason, True)


def test_the_message_says_what_was_chosen_why_and_how_to_override():
    bf16 = choose_dtype("auto", cpu_flags=frozenset({"avx512_bf16"}), cuda=False)
    assert bf16.message() == (
        "base dtype: bfloat16 (this CPU computes bf16 natively: avx512_bf16; "
        "set model.dtype: float32 to override)"
    )
    assert choose_dtype("float16").message() == "base dtype: float16 (set in model.dtype)"


@pytest.mark.parametrize(("supported", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_a_gpu_asks_torch_whether_it_computes_bf16(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    choice = choose_dtype("auto", cpu_flags=frozenset({"avx512_bf16"}), cuda=True)
    assert choice.dtype == expected and "GPU" in choice.reason


def test_a_new_head_inside_the_base_keeps_fp32_under_auto_but_not_when_asked():
    assert (
        choose_dtype("auto", trains_base_head=True, cpu_flags=frozenset({"amx_bf16"})).dtype == torch.float32
    )
    assert choose_dtype("bfloat16", trains_base_head=True).dtype == torch.bfloat16


def test_unknown_dtype_names_the_choices():
    with pytest.raises(ValueError, match="unknown dtype 'half'; choose auto, float32, bfloat16 or float16"):
        choose_dtype("half")


def test_cpu_flags_come_from_the_first_processor_of_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx512f avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    assert read_cpu_flags(cpuinfo) == frozenset({"fpu", "avx512f", "avx512_bf16"})
    assert native_bf16_flag(read_cpu_flags(cpuinfo)) == "avx512_bf16"


# ------------------------------------------------------------------------------- training on bf16
def batch(rows: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    ids = random_ids(rows, 7, seed)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "label": torch.arange(rows) % 2}


def objectives_on(method: str) -> tuple[ClassificationObjective, ClassificationObjective]:
    """The same prompt (same init) on an fp32 base and on its bf16 copy."""
    base = tiny_causal_lm("llama").requires_grad_(False)
    fp32 = softprompt.wrap(base, METHODS[method])
    bf16 = softprompt.wrap(copy.deepcopy(base).to(torch.bfloat16), METHODS[method])
    bf16.prompt.load_state_dict(fp32.prompt.state_dict())
    return ClassificationObjective(fp32, LABEL_IDS), ClassificationObjective(bf16, LABEL_IDS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_prompt_stays_fp32_on_a_bf16_base(method):
    _, objective = objectives_on(method)
    assert objective.model.base_model.dtype == torch.bfloat16
    assert {p.dtype for p in objective.model.prompt.parameters()} == {torch.float32}
    objective(batch()).backward()
    grads = [p.grad for p in objective.model.prompt.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)


def prompt_gradient(
    objective: ClassificationObjective, rows: dict[str, torch.Tensor]
) -> tuple[float, torch.Tensor]:
    """The mean loss on ``rows`` and the gradient of every prompt parameter, flattened into one vector."""
    objective.zero_grad()
    loss = objective(rows) / objective.count(rows)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in objective.model.prompt.parameters()])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_prompt_gradients_on_a_bf16_base_match_an_fp32_base_along_training(method):
    """At every point of a short fp32 training run, the bf16 base gives the prompt the same loss and
    gradient within bf16's precision (8 bits of mantissa): same direction, same size to a few percent."""
    fp32, bf16 = objectives_on(method)
    optimizer = torch.optim.AdamW(fp32.model.prompt.parameters(), lr=1e-2)
    for number in range(4):
        bf16.model.prompt.load_state_dict(fp32.model.prompt.state_dict())  # the same point
        rows = batch(seed=number)
        (loss, expected), (bf16_loss, got) = prompt_gradient(fp32, rows), prompt_gradient(bf16, rows)
        assert got.dtype == torch.float32
        assert bf16_loss == pytest.approx(loss, rel=2e-2)
        assert torch.nn.functional.cosine_similarity(got, expected, dim=0) > 0.99
        torch.testing.assert_close(got.norm(), expected.norm(), rtol=5e-2, atol=0)
        optimizer.step()


def test_the_optimiser_state_of_a_prompt_on_a_bf16_base_is_fp32():
    _, objective = objectives_on("prompt_tuning")
    optimizer = torch.optim.AdamW(objective.model.prompt.parameters(), lr=1e-2)
    step(objective, optimizer, batch())
    moments = [t for state in optimizer.state.values() for t in state.values() if t.dim() > 0]
    assert moments and {t.dtype for t in moments} == {torch.float32}


def test_the_file_of_a_prompt_trained_on_bf16_stores_fp32(tmp_path):
    _, objective = objectives_on("prefix_tuning")
    step(objective, torch.optim.AdamW(objective.parameters(), lr=1e-2), batch())
    path = objective.model.save(tmp_path / "adapter.safetensors")
    assert {t.dtype for t in load_file(str(path)).values()} == {torch.float32}
