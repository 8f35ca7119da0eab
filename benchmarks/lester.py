"""Lester et al. 2021 at small scale (issue 14, point 4): prompt tuning's initialisation — class labels vs
sampled vocabulary vs random — and prompt length 1 / 5 / 20 / 100, on SmolLM2-135M-Instruct.

The paper (arXiv 2104.08691, §3.2 and Figure 3) finds class-label init best and random init worst,
with the gap closing as the model grows, and a prompt of ~20 tokens enough (1 token far behind; 100
no better than 20 for larger models). Here every run is ``softprompt train``'s prompt tuning with only
``init`` and ``num_virtual_tokens`` changed (``text``: the class labels' words repeated to fill the
prompt; ``vocab``: embeddings of tokens sampled from the 5,000 most frequent — the paper's "sampled
vocabulary"; ``random``: uniform in ±0.5), the rest of the recipe softprompt's defaults (AdamW lr 1e-2
constant) or the paper's (``--preset lester``: Adafactor lr 0.3). Data, batches, budget and scoring are
``benchmarks/panel.py``'s (the same seeded batches for every run of a seed, scored once after the last
step).

``--grid cross`` (the default) runs every init at 20 tokens and every length with class-label init
(6 settings); ``--grid full`` runs all 12.

Run:
    python benchmarks/lester.py --tasks sst2,cb --seeds 0,1,2 --steps 150 --grid full   # the claim in full
    python benchmarks/lester.py --quick                                                 # the test
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # panel and _common, when run from anywhere


from _common import (  # noqa: E402
    benchmark_parser,
    machine_info,
    markdown_table,
    quiet_libraries,
    set_threads,
)
from panel import (  # noqa: E402
    TASKS,
    Budget,
    Run,
    add_run_flags,
    benches,
    budget_from,
    collect_runs,
    format_spread,
    names,
    spread,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "lester.json"
INITS = {"text": "class labels", "vocab": "sampled vocabulary", "random": "random uniform"}
LENGTHS = (1, 5, 20, 100)
CROSS_LENGTH, CROSS_INIT = 20, "text"


def settings(grid: str, inits: Sequence[str], lengths: Sequence[int]) -> list[tuple[str, int]]:
    """(init, length) pairs to run: the whole grid, or the cross through (class labels, 20 tokens)."""
    if grid == "full":
        return [(i, n) for i in inits for n in lengths]
    cross = [(i, CROSS_LENGTH) for i in inits] + [(CROSS_INIT, n) for n in lengths]
    return list(dict.fromkeys(cross))


def run_grid(
    tasks: Sequence[str],
    pairs: Sequence[tuple[str, int]],
    budget: Budget,
    preset: str | None,
    quick: bool,
    data: Path,
    journal: Path | None = None,
) -> list[Run]:
    runs: list[Run] = []
    for bench in benches(tasks, budget, quick, data, journal):
        for seed in budget.seeds:
            for init, length in pairs:
                prompt = {"init": init, "num_virtual_tokens": length}
                setup = f"{init}-{length}"
                bench.once(setup, seed, partial(bench.run_softprompt, setup, seed, prompt, preset=preset))
        runs += bench.runs
    return runs


def table(runs: Sequence[Run], inits: Sequence[str], lengths: Sequence[int]) -> str:
    """One line per task and init, a column per prompt length: mean ± std over seeds."""
    scores: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        scores.setdefault((r.task, r.setup), []).append(r.score)
    rows = []
    for task in dict.fromkeys(r.task for r in runs):
        for init in inits:
            cells = [
                format_spread(spread(scores[(task, f"{init}-{n}")]))
                if (task, f"{init}-{n}") in scores
                else ""
                for n in lengths
            ]
            if any(cells):
                rows.append([task, f"{init} ({INITS[init]})", *cells])
    return markdown_table(["task", "init", *[f"{n} tokens" for n in lengths]], rows)


def parse_args(argv: Sequence[str] | None = None):
    parser = benchmark_parser(__doc__, DEFAULT_OUT, "tiny random Llama, a few rows and steps (the test)")
    add_run_flags(parser)
    parser.add_argument("--tasks", default="sst2", help="comma-separated classification tasks of the panel")
    parser.add_argument("--inits", default=",".join(INITS), help="comma-separated inits")
    parser.add_argument(
        "--lengths", default=",".join(map(str, LENGTHS)), help="comma-separated prompt lengths"
    )
    parser.add_argument(
        "--grid", choices=["cross", "full"], default="cross", help="which (init, length) pairs"
    )
    parser.add_argument(
        "--preset", choices=["lester"], help="the paper's recipe instead of softprompt's defaults"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    quiet_libraries()
    tasks = names(args.tasks, [n for n, t in TASKS.items() if not t.generation], "--tasks")
    inits = names(args.inits, list(INITS), "--inits")
    lengths = [int(n) for n in args.lengths.split(",")]
    budget = budget_from(args)
    pairs = settings(args.grid, inits, lengths)
    machine, started = machine_info(), time.perf_counter()
    runs = collect_runs(
        args, lambda journal: run_grid(tasks, pairs, budget, args.preset, args.quick, args.data, journal)
    )
    recipe = (
        "the paper's (Adafactor lr 0.3 constant)" if args.preset else "softprompt's defaults (AdamW lr 1e-2)"
    )
    print(f"\n### Prompt tuning by init and length, recipe {recipe}: dev accuracy (mean ± std over seeds)\n")
    print(table(runs, inits, lengths))
    each = runs[0] if runs else None
    if each is not None:
        print(
            f"\nbudget of every run: {each.steps} steps × {each.batch_size} = {each.examples_seen} examples seen; "
            f"mean training {sum(r.train_seconds for r in runs) / len(runs):.0f} s per run"
        )
    recorded = {
        "budget": asdict(budget),
        "tasks": tasks,
        "pairs": pairs,
        "grid": args.grid,
        "preset": args.preset,
    }
    return write_report("lester.py", args, argv, machine, started, recorded, runs=[asdict(r) for r in runs])


if __name__ == "__main__":
    main()
