"""Budgeted search vs the defaults (issue 14, point 2): what ``softprompt train --search`` (successive
halving over learning rate x init on dev) gains over one run of the defaults, at 2x and 4x one run's steps.

* ``defaults`` — one run of the config as ``softprompt train`` runs it, with the method's measured
  defaults (prompt tuning: 20 tokens from the label words, AdamW lr 1e-2, constant), ``--steps`` steps of 8.
* ``search Nx`` — the same config with ``search: {budget: N}``: the method's grid (lr 3e-3, 1e-2, 3e-2,
  0.1 x init text, vocab, random: 12 trials; ``--lr`` / ``--init`` narrow it), eta 3, on the same rows.

The search picks its winner on dev, so its dev score is biased upward: every contestant is also scored
on held-out test rows that no choice saw (the built-in example: its dev file split in two, seeded; SST-2:
a seeded subset of GLUE's dev set for dev and of the test file for test). Every row states its budget:
the training steps it took (a search: the steps it spent over all trials) and its wall time. Tasks:
the built-in example (ticket routing, 4 classes, shipped with softprompt) and SST-2 (``--data``; skipped
when absent), SmolLM2-135M-Instruct (fp32).

Run:
    OMP_NUM_THREADS=1 python benchmarks/search.py --steps 150        # defaults vs search at 2x and 4x
    python benchmarks/search.py --seeds 0,1,2 --journal search.jsonl # three seeds; an interrupted run keeps
                                                                     # its finished contestants
    python benchmarks/search.py --from-journal search.jsonl          # the table and JSON of those, no training
    python benchmarks/search.py --quick                              # tiny random GPT-2, seconds (the test)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would bury the tables
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, when run from anywhere

from _common import (  # noqa: E402
    benchmark_parser,
    machine_info,
    markdown_table,
    quiet_libraries,
    set_threads,
)
from panel import add_run_flags, append_to_journal, collect_runs, write_report  # noqa: E402
from quality import tiny_models  # noqa: E402

from softprompt.cli import example_config_path  # noqa: E402
from softprompt.data import load_rows  # noqa: E402
from softprompt.train import load_config, train  # noqa: E402
from softprompt.train.search import search  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "search.json"
EXAMPLE_DATA = ROOT / "src" / "softprompt" / "examples" / "data"
STEPS, DEV_ROWS = 150, 100  # one run's steps (the budget unit) and the dev rows a search picks on
MODELS = {True: "tiny random GPT-2 (GPT-2's tokenizer)", False: "SmolLM2-135M-Instruct"}  # by --quick


@dataclass(frozen=True)
class Task:
    """A classification task: the config's task section and where its rows come from."""

    name: str
    task: dict[str, Any] | None  # None: the built-in example's own
    train: str  # files, relative to the data folder (the example: to EXAMPLE_DATA)
    dev: str
    test: str | None  # None: the dev file's other half


TASKS = {
    "example": Task("example", None, "train.jsonl", "dev.jsonl", None),
    "sst2": Task(
        "sst2",
        {
            "kind": "classification",
            "template": "Review: {sentence}\nSentiment:",
            "label_words": {0: "negative", 1: "positive"},
            "max_length": 96,
        },
        "sst2/train.tsv",
        "sst2/dev.tsv",
        "sst2/test.tsv",
    ),  # fmt: skip
}


def parse_args(argv: list[str] | None = None):
    parser = benchmark_parser(
        __doc__, DEFAULT_OUT, quick="a tiny random GPT-2 on a few rows of each task (seconds; the test)"
    )
    # --steps is one run's steps: the defaults' run, and the unit of a search's budget.
    add_run_flags(parser, seeds="0", dev_rows=DEV_ROWS, generation=False)
    parser.add_argument(
        "--budgets", type=float, nargs="+", default=[2.0, 4.0], help="search budgets, in runs"
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--train-rows", type=int, default=2000, help="training rows (seeded subset; 0: all)")
    parser.add_argument(
        "--test-rows", type=int, default=100, help="held-out rows every contestant is scored on"
    )
    parser.add_argument("--lr", type=float, nargs="+", default=None, help="the search's learning rates")
    parser.add_argument("--init", nargs="+", default=None, help="the search's inits")
    parser.add_argument("--eval-every", type=int, default=50, help="train.eval_every of every run")
    return parser.parse_args(argv)


def task_rows(task: Task, data: Path, args, seed: int) -> dict[str, Any] | None:
    """The train / validation / test rows (subsets seeded by ``seed``), or None when the task's files are
    absent."""
    folder = EXAMPLE_DATA if task.task is None else data
    if not (folder / task.train).is_file():
        return None
    rows = {}
    train = load_rows(folder / task.train).shuffle(seed=seed)
    rows["train"] = train.select(range(min(args.train_rows, len(train)))) if args.train_rows else train
    dev = load_rows(folder / task.dev).shuffle(seed=seed)
    if task.test is None:  # the dev file's two halves: dev, then test
        rows["validation"] = dev.select(range(min(args.dev_rows, len(dev) // 2)))
        rows["test"] = dev.select(range(len(dev) // 2, len(dev) // 2 + min(args.test_rows, len(dev) // 2)))
    else:
        rows["validation"] = dev.select(range(min(args.dev_rows, len(dev))))
        test = load_rows(folder / task.test).shuffle(seed=seed)
        rows["test"] = test.select(range(min(args.test_rows, len(test))))
    return rows


def run_config(task: Task, out: Path, args, seed: int, search_section: dict | None = None):
    overrides = [
        f"output.dir={out}", "output.plot=false", "train.report_to=[]", "eval.zero_shot=false",
        f"train.max_steps={args.steps}", f"train.eval_every={args.eval_every}", f"train.seed={seed}",
        f"train.batch_size={args.batch_size}", f"eval.batch_size={args.eval_batch_size}",
        "data.train=null", "data.dev=null",
    ]  # fmt: skip
    if task.task is not None:
        overrides.append("task=" + repr(task.task).replace("'", '"'))
    if search_section is not None:
        overrides.append("search=" + json.dumps(search_section))  # JSON is YAML
    return load_config(example_config_path(), overrides)


def contest(task: Task, rows: dict, base, args, work: Path, seed: int, journal: Path | None) -> list[dict]:
    """The defaults' run and a search per budget on one task and seed: their dev and test scores and
    budgets, each appended to ``journal`` when it finishes."""
    results = []
    started = time.perf_counter()
    config = run_config(task, work / f"{task.name}-{seed}-defaults", args, seed)
    one = train(config, base=base, data=rows)
    metric = config.selection_metric
    results.append(
        {"task": task.name, "seed": seed, "contestant": "defaults", "steps": one.steps, "dev": one.dev[metric],
         "test": one.test[metric], "seconds": time.perf_counter() - started,
         "setting": {"lr": config.train.lr, "init": config.prompt.init,
                     "num_virtual_tokens": config.prompt.num_virtual_tokens}},
    )  # fmt: skip
    append_to_journal(journal, results[-1])
    print(
        f"{task.name} seed {seed} defaults: dev {one.dev[metric]:.2f}, test {one.test[metric]:.2f}",
        flush=True,
    )
    for budget in args.budgets:
        started = time.perf_counter()
        section = {"budget": budget, "lr": args.lr, "init": args.init}
        config = run_config(task, work / f"{task.name}-{seed}-search-{budget:g}", args, seed, section)
        found = search(config, base=base, data=rows)
        winner = next(t for t in found.trials if t.name == found.winner)
        results.append(
            {"task": task.name, "seed": seed, "contestant": f"search {budget:g}x", "steps": found.plan.spent,
             "dev": found.run.dev[metric], "test": found.run.test[metric],
             "seconds": time.perf_counter() - started, "setting": winner.setting, "trials": len(found.trials),
             "rungs": [[rung.trials, rung.steps] for rung in found.plan.rungs],
             "winner_steps": found.run.steps},
        )  # fmt: skip
        append_to_journal(journal, results[-1])
        print(f"{task.name} seed {seed} search {budget:g}x: {found.winner}, dev {found.run.dev[metric]:.2f}, "
              f"test {found.run.test[metric]:.2f}", flush=True)  # fmt: skip
    return results


def run_contests(args, seeds: list[int], journal: Path | None) -> list[dict]:
    """Every task's contests at every seed on one base model; a task whose files are absent is skipped."""
    if args.quick:
        base = tiny_models().causal()
    else:
        from softprompt.hub import load_base_model

        base = load_base_model("smollm2-135m-instruct")
    results = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.tasks:
            for seed in seeds:
                rows = task_rows(TASKS[name], args.data, args, seed)
                if rows is None:
                    print(f"{name}: no data under {args.data}, skipped", flush=True)
                    break
                results += contest(TASKS[name], rows, base, args, Path(work), seed, journal)
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    quiet_libraries()
    args.steps = args.steps or (4 if args.quick else STEPS)
    args.dev_rows = args.dev_rows or (8 if args.quick else DEV_ROWS)
    if args.quick:
        args.train_rows, args.test_rows, args.eval_every = 32, 8, 2
        args.lr, args.init, args.budgets = args.lr or [0.01, 0.1], args.init or ["text", "vocab"], [2.0]
        args.batch_size, args.eval_batch_size = 4, 8
    else:
        args.batch_size, args.eval_batch_size = 8, 50
    seeds = [int(seed) for seed in args.seeds.split(",")]
    machine, started = machine_info(), time.perf_counter()
    results = collect_runs(args, lambda journal: run_contests(args, seeds, journal), row=dict)
    skipped = [name for name in args.tasks if not any(r["task"] == name for r in results)]
    headers = ["task", "seed", "contestant", "steps trained", "dev (picks)", "test (held out)", "winner",
               "wall time"]  # fmt: skip
    table = [
        [r["task"], r["seed"], r["contestant"], r["steps"], f"{r['dev']:.2f}", f"{r['test']:.2f}",
         f"lr {r['setting']['lr']:g}, {r['setting']['init']}" + (f", {r['winner_steps']} steps" if "trials" in r else ""),
         f"{r['seconds'] / 60:.1f} min"]
        for r in results
    ]  # fmt: skip
    model_name = MODELS[args.quick]
    print(
        f"\nDefaults vs search ({model_name}; one run = {args.steps} steps of {args.batch_size}; accuracy %)\n"
    )
    print(markdown_table(headers, table))
    settings = {
        "budget": {
            "one_run_steps": args.steps,
            "batch_size": args.batch_size,
            "search_budgets": args.budgets,
            "train_rows": args.train_rows,
            "dev_rows": args.dev_rows,
            "test_rows": args.test_rows,
            "eval_every": args.eval_every,
            "seeds": seeds,
        },
        "grid": {"lr": args.lr or "the method's grid", "init": args.init or "the method's grid"},
    }
    return write_report(
        "search.py",
        args,
        argv,
        machine,
        started,
        settings,
        model=model_name,
        results=results,
        skipped=skipped,
    )


if __name__ == "__main__":
    main()
