"""The benchmark scripts run: each one's ``--quick`` mode on a tiny model, and its ``--help``.

No timings are checked (the suite has no timed tests); only that every script runs end to end,
prints its tables and writes the JSON that RESULTS.md is made from. Adding a script = one entry
in ``QUICK_RUNS``.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from _common import SHARED_DATA  # noqa: E402  (real data sets and GPT-2's tokenizer; a bare clone has none)

# script -> extra arguments of its smoke run (each must finish in seconds)
QUICK_RUNS = {
    "speed_memory.py": ["--quick"],
    "mixed_tasks.py": ["--quick"],  # tiny random Llama
    "quality.py": ["--quick"],  # tiny random GPT-2 and BERT, a few rows of the real data sets
    "example_task_probe.py": ["--quick"],  # tiny random Llama over GPT-2's tokenizer, the example's rows
    "precision.py": ["--quick"],  # tiny random GPT-2, fp32 vs bf16, a few rows of the real data sets
    "time_to_quality.py": ["--quick", "--target", "0"],  # tiny random GPT-2: any trained score reaches 0 %
    "quantized_base.py": ["--quick"],  # a small random Llama stored fp32 / bf16 / int8 / nf4
    "search.py": ["--quick"],  # tiny random GPT-2 over GPT-2's tokenizer, a few rows of the example and SST-2
}
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no {SHARED_DATA}")


def run_quick(script: str, out: Path) -> tuple[str, dict]:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *QUICK_RUNS[script], "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


@pytest.mark.parametrize("script", sorted(QUICK_RUNS))
def test_help_describes_the_script(script, capsys):
    module = importlib.import_module(Path(script).stem)
    with pytest.raises(SystemExit) as exit_:
        module.parse_args(["--help"])
    assert exit_.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_speed_memory_quick_run_writes_tables_and_json(tmp_path):
    stdout, result = run_quick("speed_memory.py", tmp_path / "speed.json")
    assert "Step time" in stdout and "Peak training memory" in stdout
    for key in ("date", "cpu_count", "platform", "torch", "transformers", "peft", "torch_threads"):
        assert key in result["machine"]

    entries = result["entries"]
    methods = {"prompt_tuning", "prefix_tuning", "prefix_tuning_mlp512", "p_tuning_mlp"}
    for style in ("classification", "generation"):
        mine = [e for e in entries if e["style"] == style]
        assert {(e["contestant"], e["method"]) for e in mine} == {("floor", None)} | {
            (c, m) for m in methods for c in ("softprompt", "peft", "peft-scored")
        }
        for e in mine:
            assert len(e["step_seconds"]["values"]) == 2  # --quick: 2 timed rounds
            assert e["peak_bytes"] > 0
        ratios = {r["method"]: r["softprompt_vs"] for r in result["ratios"] if r["style"] == style}
        assert set(ratios) == methods
        assert all(v["time"] > 0 and v["memory"] > 0 for r in ratios.values() for v in r.values())


def test_mixed_tasks_quick_run_writes_every_case_and_goal(tmp_path):
    stdout, result = run_quick("mixed_tasks.py", tmp_path / "mixed_tasks.json")
    assert {"date", "machine", "settings", "throughput", "latency", "goals", "checks_max_rel_diff"} <= set(
        result
    )
    assert {"torch", "transformers", "peft", "softprompt", "platform"} <= set(result["machine"])
    assert len(result["tasks"]) == 8
    assert {t["method"] for t in result["tasks"]} == {"prompt_tuning", "prefix_tuning", "p_tuning"}
    for workload in ("forward", "generate"):
        assert "TaskBank, 8 tasks mixed, 1 batch" in result["throughput"][workload]
        assert "peft, 8 batches, set_adapter" in result["throughput"][workload]
        assert "TaskBank, compiled prompt" in result["latency"][workload]
    assert len(result["goals"]) == 4
    # The ways of serving that are timed compute the same numbers.
    checks = result["checks_max_rel_diff"]
    assert all(diff < 1e-5 for diff in checks.values()), checks
    assert "Goals" in stdout


@needs_shared_data
def test_quality_quick_run_writes_every_row_and_goal(tmp_path):
    stdout, result = run_quick("quality.py", tmp_path / "quality.json")
    assert {"date", "machine", "settings", "rows", "goals"} <= set(result)
    assert {"torch", "transformers", "peft", "softprompt", "platform", "torch_threads"} <= set(
        result["machine"]
    )
    assert result["settings"]["quick"] and result["settings"]["budget"]["seed"] == 0

    rows = result["rows"]
    causal = [r for r in rows if r["model"] == result["models"]["causal"]]
    main = {(r["task"], r["library"], r["method"]) for r in causal if r["train_rows"] in (0, 32)}
    for task in ("sst2", "rte", "boolq"):
        assert (task, "zero-shot", "-") in main
        for method in ("prompt_tuning", "prefix_tuning", "p_tuning"):
            assert {(task, "softprompt", method), (task, "peft", method)} <= main
    low_data = {
        (r["library"], r["train_rows"]) for r in causal if r["task"] == "sst2" and r["train_rows"] == 8
    }
    assert low_data == {("softprompt", 8), ("peft", 8)}
    encoder = {(r["method"], r["train_rows"]) for r in rows if r["model"] == result["models"]["encoder"]}
    methods = ("deep_prompt", "deep_prompt_mean", "prompt_tuning", "full_finetuning", "linear_probe")
    assert encoder == {(m, n) for m in methods for n in (8, 32)}

    for r in rows:
        assert 0 <= r["accuracy"] <= 100 and r["dev_loss"] > 0
        if r["library"] != "zero-shot":
            assert r["trainable_parameters"] > 0 and r["file_bytes"] > 0
    # peft's files and parameters are counted, not copied from softprompt's
    sizes = {(r["library"], r["method"]): r["trainable_parameters"] for r in causal if r["task"] == "sst2"}
    assert sizes[("peft", "prefix_tuning")] == 2 * sizes[("softprompt", "prefix_tuning")]  # 20 vs 10 tokens
    assert [g["goal"].split()[0] for g in result["goals"]] == ["softprompt", "MiniLM", "MiniLM"]
    assert "Goals" in stdout


@needs_shared_data
def test_example_task_probe_quick_run_scores_zero_shot_and_trained(tmp_path):
    stdout, result = run_quick("example_task_probe.py", tmp_path / "probe.json")
    assert "SUMMARY" in stdout and "recall billing" in stdout
    assert result["settings"]["quick"] and result["steps"] == 3 and len(result["train_loss"]) == 3
    assert (result["train_rows"], result["dev_rows"]) == (32, 16)
    for run in ("zero_shot", "trained"):
        scores = result[run]
        assert 0 <= scores["accuracy"] <= 100 and scores["loss"] > 0
        assert set(scores["recall"]) <= {"billing", "technical", "shipping", "account"}
        # accuracy is the dev-weighted mean of the per-class recalls: every dev row was scored once
        assert min(scores["recall"].values()) <= scores["accuracy"] <= max(scores["recall"].values())


@needs_shared_data
def test_precision_quick_run_compares_bf16_with_fp32_in_one_run(tmp_path):
    stdout, result = run_quick("precision.py", tmp_path / "precision.json")
    assert "Step time and memory" in stdout and "Dev accuracy, bf16 vs fp32 base" in stdout
    assert result["auto_dtype_here"].startswith("base dtype: ")
    steps = {(r["dtype"], r["call"]): r for r in result["step"]}
    assert set(steps) == {
        (d, c) for d in ("float32", "bfloat16") for c in ("users' call", 'logits_at="labels"')
    }
    for (_, call), r in steps.items():
        assert len(r["step_seconds"]["values"]) == 2 and r["peak_bytes"] > 0
        reference = steps[("float32", call)]
        assert r["time_vs_fp32_same_call"] == pytest.approx(
            r["step_seconds"]["median"] / reference["step_seconds"]["median"]
        )
    # the bf16 base holds half the bytes of the fp32 one
    assert (
        steps[("bfloat16", "users' call")]["base_bytes"] * 2
        == steps[("float32", "users' call")]["base_bytes"]
    )
    panel = result["panel"]
    assert {(r["task"], r["dtype"], r["seed"]) for r in panel} == {
        (t, d, s) for t in ("sst2", "rte", "boolq") for d in ("float32", "bfloat16") for s in (0, 1)
    }
    for s in result["panel_summary"]:
        fp32, bf16 = s["accuracy"]["float32"]["values"], s["accuracy"]["bfloat16"]["values"]
        assert s["bf16_minus_fp32"]["values"] == pytest.approx(
            [b - f for f, b in zip(fp32, bf16, strict=True)]
        )


@needs_shared_data
def test_time_to_quality_quick_run_races_both_contestants_to_the_target(tmp_path):
    stdout, result = run_quick("time_to_quality.py", tmp_path / "time_to_quality.json")
    assert "Time to quality, SST-2" in stdout and "softprompt ÷ peft time to 0 %" in stdout
    ours, theirs = result["contestants"]
    assert (ours["name"], theirs["name"], theirs["dtype"]) == ("softprompt", "peft", "float32")
    assert ours["dtype"] in ("float32", "bfloat16")
    for contestant in (ours, theirs):
        # evaluated before training and every 2 steps; a score of at least 0 % is reached at the first
        assert [p["step"] for p in contestant["curve"]] == [0, 2]
        assert contestant["reached_at"] == contestant["curve"][1]
    ratio = ours["reached_at"]["train_seconds"] / theirs["reached_at"]["train_seconds"]
    assert result["result"]["softprompt_vs_peft_time"] == pytest.approx(ratio)
    assert result["result"]["relation"] == "="


@needs_shared_data
def test_quantized_base_quick_run_measures_every_base(tmp_path):
    pytest.importorskip("bitsandbytes")
    stdout, result = run_quick("quantized_base.py", tmp_path / "quantized.json")
    assert "Training memory and step time" in stdout and "Dev accuracy" in stdout
    assert result["model"] == "small random Llama (--quick)" and "bitsandbytes" in result["machine"]
    bases = result["bases"]
    assert list(bases) == ["fp32", "bf16", "int8", "nf4"]
    for name, row in bases.items():
        assert row["weight_bytes"] > 0 and row["peak_step_bytes"] > 0
        assert len(row["step_seconds"]["values"]) == 2  # --quick: 2 timed steps
        assert set(row["tasks"]) == (set() if name == "bf16" else {"sst2", "rte"})  # bf16: timed only
        for scores in row["tasks"].values():
            assert len(scores["trained"]) == 2 and all(0 <= a <= 100 for a in scores["trained"])
    assert bases["bf16"]["weight_bytes"] < bases["fp32"]["weight_bytes"]


def test_quantized_base_quick_run_never_writes_the_results_file():
    module = importlib.import_module("quantized_base")
    assert module.parse_args([]).out == module.DEFAULT_OUT
    quick = module.parse_args(["--quick"]).out
    assert quick != module.DEFAULT_OUT and BENCHMARKS not in quick.parents


def test_quality_help_lists_the_selection_flags(capsys):
    module = importlib.import_module("quality")
    with pytest.raises(SystemExit) as exit_:
        module.parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--quick", "--out", "--threads", "--tasks", "--methods", "--libraries", "--low-data"):
        assert flag in text


def test_peak_memory_sees_a_freed_temporary_and_what_stays():
    from _common import peak_memory

    kept = []
    with peak_memory() as mem:
        temporary = torch.ones(2**20)  # 4 MiB, freed inside the window
        kept.append(torch.ones(2**18))  # 1 MiB, still alive at the end
        del temporary
    assert mem.peak >= 5 * 2**20
    assert 2**20 <= mem.end < 2 * 2**20


def test_peft_objective_scores_each_row_as_peft_scores_it_alone():
    """The benchmarks' peft classifier (quality.py, the example probe) reads the answer position of
    each row as peft does for that row alone, whatever the batch's padding side."""
    import peft
    import torch.nn.functional as F
    from _common import PeftAnswerToken, tiny_llama

    from softprompt.data import Encoded, collate

    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    model = peft.get_peft_model(tiny_llama(), config).eval()
    objective = PeftAnswerToken(model, label_token_ids=[5, 6])
    rows, labels = [[11, 12, 13, 14], [21, 22]], [0, 1]
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([row])).logits[:, -1] for row in rows])  # (B, V)
        for side in ("left", "right"):
            batch = collate([Encoded(r, label=y) for r, y in zip(rows, labels, strict=True)], 0, side)
            scores = objective.scores(batch["input_ids"], batch["attention_mask"])
            torch.testing.assert_close(scores, alone[:, [5, 6]], atol=1e-5, rtol=1e-5)
            # the causal-LM loss of the answer token: cross-entropy over the whole vocabulary
            expected = F.cross_entropy(alone, torch.tensor([5, 6]), reduction="sum")
            torch.testing.assert_close(objective(batch), expected, atol=1e-5, rtol=1e-5)
