"""A quantized frozen base (issue 16): training memory, step time and dev accuracy of prompt tuning on
SmolLM2-135M-Instruct stored in fp32, bf16, int8 (LLM.int8()) and nf4 (4-bit NormalFloat), in one run.

Every base is the same checkpoint loaded four ways (``softprompt.hub.load_base_model`` for fp32 and
bf16, ``softprompt.quantization.load_quantized`` for int8 and nf4; 4-bit layers compute in fp32 on
the CPU). Every row trains the same prompt the same way — prompt tuning, 20 tokens initialised from
the label words, AdamW 1e-2 constant (softprompt's defaults), batch 8 — with the library's core
(``softprompt.train.core.step``) and is scored by ``softprompt.train.evaluate`` on the same dev rows.

* **Speed and memory** (SST-2 batch 8): the base's weight bytes, the peak of tensor bytes a training
  step allocates above them (activations, saved tensors, dequantized weights, gradients, optimiser
  state; see ``_common.peak_memory``), and the median step time.
* **Quality**: zero-shot and trained dev accuracy on SST-2 and RTE, three seeds each (the seed sets
  the batch order), each base against fp32 on the same seeds.

Run:
    python benchmarks/quantized_base.py --threads 1     # the table in RESULTS.md (~20 minutes here)
    python benchmarks/quantized_base.py --quick         # a small random Llama, seconds (the test; JSON to a temp dir)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from _common import (  # noqa: E402
    SHARED_DATA,
    encode_file,
    gpt2_tokenizer,
    machine_info,
    markdown_table,
    peak_memory,
    set_threads,
    summary,
    train_steps,
    write_json,
)

import softprompt  # noqa: E402
from softprompt.data import ClassificationTask, collate  # noqa: E402
from softprompt.hub import load_base_model  # noqa: E402
from softprompt.quantization import load_quantized  # noqa: E402
from softprompt.train.config import TrainSection  # noqa: E402
from softprompt.train.core import step  # noqa: E402
from softprompt.train.evaluate import evaluate_predictions  # noqa: E402
from softprompt.train.objectives import ClassificationObjective  # noqa: E402
from softprompt.train.optim import make_optimizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "quantized_base.json"
QUICK_OUT = (
    Path(tempfile.gettempdir()) / "quantized_base_quick.json"
)  # a smoke run never replaces the table's JSON
BASES = ("fp32", "bf16", "int8", "nf4")
QUALITY_BASES = ("fp32", "int8", "nf4")  # bf16 is timed and measured; its accuracy costs as much again
REFERENCE = "fp32"


@dataclass(frozen=True)
class Task:
    name: str
    template: str
    label_words: dict[str | int, str]
    train: str
    dev: str


TASKS = {
    "sst2": Task("sst2", "Review: {sentence}\nSentiment:", {0: "negative", 1: "positive"}, "sst2/train.tsv", "sst2/dev.tsv"),
    "rte": Task(
        "rte",
        "{premise}\nQuestion: {hypothesis} Yes or no?\nAnswer:",
        {"entailment": "yes", "not_entailment": "no"},
        "superglue/RTE/train.jsonl",
        "superglue/RTE/val.jsonl",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Budget:
    """Every setting that decides the numbers; all of it goes into the JSON."""

    steps: dict[str, int]  # optimiser steps per task
    dev_rows: dict[str, int]  # a seeded dev subset per task (the same rows for every base and seed)
    max_length: dict[str, int]  # tokens per row per task
    seeds: tuple[int, ...] = (0, 1, 2)
    timed_steps: int = 5  # step-time samples per base (after one warm-up step)
    train_rows: int | None = None  # cap on the training rows (only --quick sets it)
    batch_size: int = 8
    eval_batch_size: int = 32
    num_virtual_tokens: int = 20
    lr: float = 1e-2


# Sized for ~30 minutes on one thread of this 2-core machine shared by ~6 engineers (load average
# ~14): there SmolLM2 takes ~5 s a step on SST-2 (batch 8) and ~0.35 s a dev row in fp32, RTE rows
# are ~3x longer, and int8 / nf4 steps cost up to 2x more (dequantization on the CPU).
FULL = Budget(
    steps={"sst2": 10, "rte": 3}, dev_rows={"sst2": 80, "rte": 40}, max_length={"sst2": 64, "rte": 160}
)
QUICK = Budget(
    steps={"sst2": 2, "rte": 2}, dev_rows={"sst2": 8, "rte": 8}, max_length={"sst2": 32, "rte": 48},
    seeds=(0, 1), timed_steps=2, train_rows=32, batch_size=4, eval_batch_size=8, num_virtual_tokens=4,
)  # fmt: skip


# ------------------------------------------------------------------------------------------ bases
def smollm2(base: str) -> tuple[torch.nn.Module, Any]:
    """SmolLM2-135M-Instruct stored as ``base``."""
    if base in ("int8", "nf4"):
        return load_quantized("smollm2-135m-instruct", base)
    return load_base_model(
        "smollm2-135m-instruct", dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[base]
    )


def small_random(folder: Path) -> Callable[[str], tuple[torch.nn.Module, Any]]:
    """A random 2-layer Llama (64 wide: bitsandbytes' CPU kernels need 64-value blocks) over GPT-2's
    tokenizer, saved once and loaded as each base (``--quick``)."""
    tokenizer = gpt2_tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    def load(base: str) -> tuple[torch.nn.Module, Any]:
        if base in ("int8", "nf4"):
            return load_quantized(str(folder), base)
        return load_base_model(str(folder), dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[base])

    return load


# ------------------------------------------------------------------------------------------ rows
def label_token_ids(tokenizer: Any, task: Task) -> list[int]:
    """Each label word's first token (after a space, as it follows the template)."""
    return [
        tokenizer(f" {word}", add_special_tokens=False)["input_ids"][0] for word in task.label_words.values()
    ]


def objective_for(
    base: torch.nn.Module, tokenizer: Any, task: Task, budget: Budget
) -> ClassificationObjective:
    """Prompt tuning initialised from the label words, read out by the label words' logits."""
    text = "".join(f" {word}" for word in task.label_words.values())
    config = softprompt.PromptTuningConfig(
        num_virtual_tokens=budget.num_virtual_tokens, init="text", init_text=text
    )
    model = softprompt.wrap(base, config, tokenizer=tokenizer)
    return ClassificationObjective(model, label_token_ids=label_token_ids(tokenizer, task))


def classification(task: Task, budget: Budget) -> ClassificationTask:
    return ClassificationTask(task.template, "label", task.label_words, budget.max_length[task.name])


def dev_accuracy(objective, dev, tokenizer, budget: Budget) -> float:
    scores = evaluate_predictions(
        objective,
        dev,
        batch_size=budget.eval_batch_size,
        pad_token_id=tokenizer.pad_token_id,
        metrics=["accuracy"],
    )
    return scores["accuracy"]


def speed_and_memory(base: torch.nn.Module, tokenizer: Any, train, budget: Budget) -> dict:
    """Weight bytes, peak step bytes above them, and step times on one fixed SST-2 batch."""
    objective = objective_for(base, tokenizer, TASKS["sst2"], budget)
    optimizer = make_optimizer(objective.parameters(), TrainSection(lr=budget.lr))
    batch = collate(train[: budget.batch_size], tokenizer.pad_token_id, type(objective).padding_side)
    step(objective, optimizer, batch)  # warm-up: optimiser state exists, kernels are loaded
    with peak_memory() as memory:
        step(objective, optimizer, batch)
    times = []
    for _ in range(budget.timed_steps):
        started = time.perf_counter()
        step(objective, optimizer, batch)
        times.append(time.perf_counter() - started)
    return {
        "weight_bytes": base.get_memory_footprint(),
        "peak_step_bytes": memory.peak,
        "step_seconds": summary(times),
    }


def run(
    loader: Callable[[str], tuple[torch.nn.Module, Any]],
    budget: Budget,
    bases: Sequence[str],
    quality_bases: Sequence[str],
    data: Path,
) -> dict:
    """Each base of ``bases`` timed and measured; those of ``quality_bases`` also trained and scored."""
    results: dict[str, Any] = {"budget": asdict(budget), "quality_bases": list(quality_bases), "bases": {}}
    for base_name in dict.fromkeys([*bases, *quality_bases]):
        started = time.perf_counter()
        base, tokenizer = loader(base_name)
        row: dict[str, Any] = {"tasks": {}}
        for task in TASKS.values():
            spec = classification(task, budget)
            train = encode_file(spec, data / task.train, tokenizer, rows=budget.train_rows)
            dev = encode_file(spec, data / task.dev, tokenizer, rows=budget.dev_rows[task.name])
            if task.name == "sst2":
                row |= speed_and_memory(base, tokenizer, train, budget)
            if base_name not in quality_bases:
                continue
            bare = objective_for(base, tokenizer, task, budget)
            bare = ClassificationObjective(bare.model.without_prompt(), label_token_ids(tokenizer, task))
            trained = []
            for seed in budget.seeds:
                objective = objective_for(base, tokenizer, task, budget)
                recipe = TrainSection(
                    max_steps=budget.steps[task.name], batch_size=budget.batch_size, seed=seed, lr=budget.lr
                )
                train_steps(
                    objective, recipe, train, steps=recipe.max_steps, pad_token_id=tokenizer.pad_token_id
                )
                trained.append(dev_accuracy(objective, dev, tokenizer, budget))
            row["tasks"][task.name] = {
                "zero_shot": dev_accuracy(bare, dev, tokenizer, budget),
                "trained": trained,
            }
        row["seconds"] = time.perf_counter() - started
        results["bases"][base_name] = row
        print(f"{base_name}: {row['seconds']:.0f} s", file=sys.stderr, flush=True)
        del base
    return results


# ------------------------------------------------------------------------------------------ tables
def tables(results: dict) -> str:
    bases = results["bases"]
    reference = bases.get(REFERENCE)
    speed = []
    for name, row in bases.items():
        ratio = (
            f"{row['step_seconds']['median'] / reference['step_seconds']['median']:.2f}x"
            if reference
            else "-"
        )
        speed.append([
            name, f"{row['weight_bytes'] / 2**20:.0f} MiB", f"{row['peak_step_bytes'] / 2**20:.0f} MiB",
            f"{(row['weight_bytes'] + row['peak_step_bytes']) / 2**20:.0f} MiB",
            f"{row['step_seconds']['median']:.2f} s", ratio,
        ])  # fmt: skip
    lines = [
        "Training memory and step time (prompt tuning, SST-2 batch 8)",
        markdown_table(
            ["base", "weights", "step peak above weights", "total", "step time", "vs fp32"], speed
        ),
        "",
        "Dev accuracy (%; zero-shot, and trained: mean ± std over seeds, the difference to fp32 seed by seed)",
    ]
    quality = []
    scored = {name: row for name, row in bases.items() if row["tasks"]}
    for name, row in scored.items():
        cells = [name]
        for task, scores in row["tasks"].items():
            trained = scores["trained"]
            spread = statistics.stdev(trained) if len(trained) > 1 else 0.0
            cells += [f"{scores['zero_shot']:.1f}", f"{statistics.mean(trained):.1f} ± {spread:.1f}"]
            if reference and reference["tasks"] and name != REFERENCE:
                deltas = [a - b for a, b in zip(trained, reference["tasks"][task]["trained"], strict=True)]
                cells.append(f"{statistics.mean(deltas):+.1f}")
            else:
                cells.append("-")
        quality.append(cells)
    if not scored:
        return "\n".join(lines[:-1])
    columns = ("zero-shot", "trained", "Δ vs fp32")
    headers = ["base"] + [
        f"{task} {column}" for task in next(iter(scored.values()))["tasks"] for column in columns
    ]
    lines.append(markdown_table(headers, quality))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small random Llama and a few rows (seconds)")
    parser.add_argument(
        "--bases", nargs="+", choices=BASES, default=list(BASES), help="bases timed and measured"
    )
    parser.add_argument(
        "--quality-bases",
        nargs="+",
        choices=BASES,
        default=list(QUALITY_BASES),
        help="bases trained and scored",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (timings compare at one count)")
    parser.add_argument(
        "--out", type=Path, help=f"where the JSON goes (default {DEFAULT_OUT}; with --quick {QUICK_OUT})"
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = QUICK_OUT if args.quick else DEFAULT_OUT
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    set_threads(args.threads)
    if not SHARED_DATA.is_dir():
        raise SystemExit(f"the data sets are read from {SHARED_DATA}, which does not exist here")
    import bitsandbytes

    budget = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory() as work:
        loader = small_random(Path(work) / "llama") if args.quick else smollm2
        results = run(loader, budget, args.bases, args.quality_bases, SHARED_DATA)
    results["model"] = "small random Llama (--quick)" if args.quick else "SmolLM2-135M-Instruct"
    results["machine"] = {**machine_info(), "bitsandbytes": bitsandbytes.__version__}
    print(tables(results))
    write_json(args.out, results)


if __name__ == "__main__":
    main()
