"""A bf16 frozen base against an fp32 one (issue 15): dev scores on the learning-quality panel over three
seeds, and one training step's time and memory — both in the same run, as ratios to fp32.

**Step** (SmolLM2-135M-Instruct, batch 8 x 48 tokens, prompt tuning with 20 virtual tokens, AdamW, the
loss on each row's last token): the same step on the fp32 base and on its bf16 copy, each called two
ways — as users call a causal LM (``model(input_ids, attention_mask, labels=labels)``: logits at every
position, (B, T, V)) and with ``logits_at="labels"`` (logits only where a label is: (B, V)), which is
how ``softprompt train``, the task bank and the Trainer integration call it. Rounds are interleaved
(every round runs every contestant once, the order rotated), medians reported with the spread; the
memory is the peak of live tensor bytes over two steps above the loaded model (``_common.peak_memory``),
and the base's own bytes beside it.

**Panel** (SmolLM2, the tasks of ``benchmarks/quality.py``: SST-2, RTE, BoolQ): softprompt's defaults
(prompt tuning, ``presets.DEFAULTS``) built as ``softprompt train`` builds them, trained on the fp32
base and on the bf16 base with the same batches for the same steps (seeds 0, 1, 2: the training
batches' order), scored once after the last step on the same dev rows with the same base dtype as
trained. Fewer steps than quality.py (its budget would take an hour per dtype and seed): the panel
asks whether bf16 moves the scores, not how good they get.

Run:
    python benchmarks/precision.py --threads 1      # the tables in docs/performance.md (~20 minutes)
    python benchmarks/precision.py --quick          # tiny random models, seconds (the test)
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would bury the tables
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common and quality, when run from anywhere

import torch  # noqa: E402
from _common import (  # noqa: E402
    benchmark_parser,
    encode_file,
    machine_info,
    markdown_table,
    parameter_bytes,
    peak_memory,
    quiet_libraries,
    set_threads,
    summary,
    write_json,
)
from accelerate.utils import set_seed  # noqa: E402
from quality import FULL, QUICK, TASKS, Bench, Budget, softprompt_config, softprompt_contestant, task_splits  # noqa: E402
from quality import real_models as quality_real_models  # noqa: E402
from quality import tiny_models as quality_tiny_models  # noqa: E402
from torch import nn  # noqa: E402

import softprompt  # noqa: E402
from softprompt.precision import choose_dtype  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "precision.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CALLS = ("users' call", 'logits_at="labels"')
METHOD = "prompt_tuning"  # softprompt's default method

# The panel's budget: quality.py's tasks and row lengths, fewer steps and dev rows (three seeds x two dtypes).
PANEL = replace(
    FULL,
    steps={"sst2": 30, "rte": 8, "boolq": 4},
    dev_rows={"sst2": 200, "rte": 100, "boolq": 80},
    low_data=(),
    train_rows=2000,  # a seeded 2,000 of SST-2's 67,349 (RTE and BoolQ have 32): tokenized in seconds
)
QUICK_PANEL = replace(QUICK, low_data=())


@dataclass(frozen=True)
class StepSetup:
    batch_size: int = 8
    seq_len: int = 48
    virtual_tokens: int = 20
    warmup: int = 1
    repeats: int = 5


QUICK_STEP = StepSetup(batch_size=4, seq_len=16, virtual_tokens=4, warmup=1, repeats=2)


# ------------------------------------------------------------------------------------------- step
@dataclass
class StepEntry:
    dtype: str
    call: str
    step: Callable[[], None] | None = None
    base_bytes: int = 0
    peak_bytes: int = 0
    times: list[float] | None = None


def build_step(base: nn.Module, call: str, setup: StepSetup) -> Callable[[], None]:
    """One AdamW step of a fresh prompt on ``base``, the loss on each row's last token, called ``call``'s way."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, base.config.vocab_size, (setup.batch_size, setup.seq_len), generator=generator)
    mask, labels = torch.ones_like(ids), torch.full_like(ids, -100)
    labels[:, -1] = ids[:, -1]
    model = softprompt.wrap(
        base, softprompt.PromptTuningConfig(num_virtual_tokens=setup.virtual_tokens, init="vocab")
    )
    optimizer = torch.optim.AdamW(model.prompt.parameters(), lr=1e-3)
    options = {"logits_at": "labels"} if call == CALLS[1] else {}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(ids, attention_mask=mask, labels=labels, **options).loss.backward()
        optimizer.step()

    return step


def measure_steps(bases: dict[str, nn.Module], setup: StepSetup) -> list[StepEntry]:
    """Memory (one window per contestant), then interleaved timing rounds."""
    entries = [StepEntry(dtype, call) for dtype in bases for call in CALLS]
    for entry in entries:
        base = bases[entry.dtype]
        gc.collect()
        with peak_memory() as mem:
            entry.step = build_step(base, entry.call, setup)
            for _ in range(2):  # the second step runs with AdamW's moments allocated
                entry.step()
        entry.peak_bytes, entry.base_bytes, entry.times = mem.peak, parameter_bytes(base), []
    for round_ in range(setup.warmup + setup.repeats):
        shift = round_ % len(entries)
        for entry in entries[shift:] + entries[:shift]:
            started = time.perf_counter()
            entry.step()
            if round_ >= setup.warmup:
                entry.times.append(time.perf_counter() - started)
    return entries


def step_records(entries: Sequence[StepEntry]) -> list[dict]:
    reference = next(e for e in entries if e.dtype == "float32" and e.call == CALLS[0])
    fp32 = {e.call: e for e in entries if e.dtype == "float32"}
    records = []
    for e in entries:
        median = statistics.median(e.times)
        records.append(
            {
                "dtype": e.dtype,
                "call": e.call,
                "step_seconds": summary(e.times),
                "peak_bytes": e.peak_bytes,
                "base_bytes": e.base_bytes,
                "time_vs_fp32_same_call": median / statistics.median(fp32[e.call].times),
                "memory_vs_fp32_same_call": (e.peak_bytes + e.base_bytes)
                / (fp32[e.call].peak_bytes + fp32[e.call].base_bytes),
                "time_vs_fp32_users_call": median / statistics.median(reference.times),
            }
        )
    return records


def step_table(records: Sequence[dict]) -> str:
    rows = [
        [
            r["dtype"],
            r["call"],
            f"{r['step_seconds']['median']:.3f} ({r['step_seconds']['min']:.3f}-{r['step_seconds']['max']:.3f})",
            f"{r['time_vs_fp32_same_call']:.2f}",
            f"{r['time_vs_fp32_users_call']:.2f}",
            mib(r["base_bytes"]),
            mib(r["peak_bytes"]),
            f"{r['memory_vs_fp32_same_call']:.2f}",
        ]
        for r in records
    ]
    headers = [
        "base",
        "call",
        "s/step (min-max)",
        "time ÷ fp32",
        "time ÷ fp32 users' call",
        "base",
        "peak above base",
        "memory ÷ fp32",
    ]
    return markdown_table(headers, rows)


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


# ------------------------------------------------------------------------------------------ panel
@dataclass
class PanelRow:
    task: str
    seed: int
    dtype: str
    steps: int
    accuracy: float
    macro_f1: float
    dev_loss: float
    train_seconds: float
    seconds: float


def panel_rows(
    bases: dict[str, nn.Module],
    tokenizer,
    budget: Budget,
    seeds: Sequence[int],
    tasks: Sequence[str],
    data: Path,
    work: Path,
) -> list[PanelRow]:
    """softprompt's defaults on each task, seed and base dtype: trained, then scored once on dev."""
    rows = []
    for name in tasks:
        splits = task_splits(name, budget.dev_rows[name], (), budget, data, work)
        task = TASKS[name].classification(max_length=budget.max_length[name])
        dev, train = (
            encode_file(task, splits.dev, tokenizer),
            encode_file(task, splits.train[None], tokenizer),
        )
        for seed, (dtype, base) in ((s, item) for s in seeds for item in bases.items()):
            started = time.perf_counter()
            seeded = replace(budget, seed=seed)
            bench = Bench("causal", name, 0, dev, budget.steps[name], tokenizer.pad_token_id, seeded)
            set_seed(seed)
            config = softprompt_config(METHOD, task, splits.train[None], seeded, budget.steps[name])
            row = bench.trained(
                softprompt_contestant(config, base, tokenizer),
                train,
                "softprompt",
                METHOD,
                work / f"{name}-{dtype}-{seed}",
                started,
            )
            rows.append(
                PanelRow(
                    name,
                    seed,
                    dtype,
                    row.steps,
                    row.accuracy,
                    row.macro_f1,
                    row.dev_loss,
                    row.train_seconds,
                    row.seconds,
                )
            )
    return rows


def panel_summary(rows: Sequence[PanelRow]) -> list[dict]:
    """Per task: each dtype's mean and spread of accuracy over the seeds, the bf16 - fp32 difference
    (mean of the per-seed differences) and training time as a ratio to fp32."""
    out = []
    for task in dict.fromkeys(r.task for r in rows):
        by = {
            d: sorted((r for r in rows if r.task == task and r.dtype == d), key=lambda r: r.seed)
            for d in DTYPES
        }
        acc = {d: [r.accuracy for r in by[d]] for d in DTYPES}
        diffs = [b - f for f, b in zip(acc["float32"], acc["bfloat16"], strict=True)]
        out.append(
            {
                "task": task,
                "accuracy": {d: summary(acc[d]) for d in DTYPES},
                "mean_accuracy": {d: statistics.mean(acc[d]) for d in DTYPES},
                "seed_sd": {d: statistics.stdev(acc[d]) if len(acc[d]) > 1 else 0.0 for d in DTYPES},
                "bf16_minus_fp32": {"mean": statistics.mean(diffs), "values": diffs},
                "train_time_bf16_vs_fp32": sum(r.train_seconds for r in by["bfloat16"])
                / sum(r.train_seconds for r in by["float32"]),
            }
        )
    return out


def panel_table(rows: Sequence[PanelRow], summaries: Sequence[dict]) -> str:
    table = []
    for s in summaries:
        per_seed = {
            d: " / ".join(f"{r.accuracy:.1f}" for r in rows if r.task == s["task"] and r.dtype == d)
            for d in DTYPES
        }
        table.append(
            [
                s["task"],
                f"{s['mean_accuracy']['float32']:.1f} ± {s['seed_sd']['float32']:.1f} ({per_seed['float32']})",
                f"{s['mean_accuracy']['bfloat16']:.1f} ± {s['seed_sd']['bfloat16']:.1f} ({per_seed['bfloat16']})",
                f"{s['bf16_minus_fp32']['mean']:+.1f}",
                f"{s['train_time_bf16_vs_fp32']:.2f}",
            ]
        )
    headers = [
        "task",
        "fp32 base: accuracy (seeds)",
        "bf16 base: accuracy (seeds)",
        "bf16 − fp32",
        "train time ÷ fp32",
    ]
    return markdown_table(headers, table)


# ------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, DEFAULT_OUT, quick="tiny random models, a few rows (the test)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="panel tasks, comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    parser.add_argument("--skip-panel", action="store_true", help="only the step table")
    parser.add_argument("--skip-step", action="store_true", help="only the panel")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    quiet_libraries()
    machine = machine_info()
    started = time.perf_counter()
    budget, setup = (QUICK_PANEL, QUICK_STEP) if args.quick else (PANEL, StepSetup())
    seeds = [int(s) for s in args.seeds.split(",")][: 2 if args.quick else None]
    tasks = args.tasks.split(",")

    fp32, tokenizer = (quality_tiny_models() if args.quick else quality_real_models()).causal()
    fp32.requires_grad_(False)
    bases = {"float32": fp32, "bfloat16": copy.deepcopy(fp32).to(torch.bfloat16)}

    result: dict = {
        "date": machine["date"],
        "machine": machine,
        "auto_dtype_here": choose_dtype("auto").message(),
        "settings": {
            "quick": args.quick,
            "step": asdict(setup),
            "panel_budget": asdict(budget),
            "panel_method": METHOD,
            "seeds": seeds,
            "command": "python benchmarks/precision.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
        },
    }
    print(result["auto_dtype_here"], flush=True)
    if not args.skip_step:
        result["step"] = step_records(measure_steps(bases, setup))
        print("\nStep time and memory, bf16 vs fp32 base\n" + step_table(result["step"]), flush=True)
    if not args.skip_panel:
        with tempfile.TemporaryDirectory() as folder:
            rows = panel_rows(bases, tokenizer, budget, seeds, tasks, args.data, Path(folder))
        result["panel"] = [asdict(r) for r in rows]
        result["panel_summary"] = panel_summary(rows)
        print("\nDev accuracy, bf16 vs fp32 base\n" + panel_table(rows, result["panel_summary"]))
    result["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    path = write_json(args.out, result)
    print(f"\nwrote {path} ({result['elapsed_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
