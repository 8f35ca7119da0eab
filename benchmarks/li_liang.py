"""Li & Liang 2021 at small scale (issue 14, point 4): prefix tuning vs full fine-tuning of the same model on
table-to-text (E2E, WebNLG), with LoRA through peft as the peer users ask about; all the training data
(capped, stated) and low data (50 / 100 / 500 examples).

The paper (arXiv 2101.00190, Table 1 and Figure 3) finds prefix tuning (0.1 % of the parameters) close
to full fine-tuning with all the data and ahead of it in low data. Here, on SmolLM2-135M-Instruct (fp32):

* ``prefix``: softprompt's prefix tuning with its defaults (``presets.DEFAULTS``: 10 tokens from real
  tokens' keys/values, AdamW lr 3e-3 constant), or the paper's recipe (``--preset li-liang``: MLP 512,
  lr 8e-5 linear — meant for thousands of steps);
* ``full``: every weight of the same model trained with its own causal-LM loss on the target tokens
  (AdamW lr 5e-5, linear decay, weight decay 0.0 — the paper's fine-tuning recipe), a fresh copy per run;
* ``lora``: ``peft.LoraConfig`` r 8, alpha 16, dropout 0 on ``q_proj``/``v_proj`` (peft's defaults for
  Llama), AdamW lr 5e-4 with linear decay.

Every run of one (task, size, seed) sees the same seeded batches (batch 8) for the same number of steps
(small sets repeat epochs) and is scored once after its last step by greedy decoding of each distinct
dev source: BLEU (sacrebleu) and ROUGE-L (rouge-score) through ``softprompt.metrics``, against all of the
source's references. Data and task templates are ``benchmarks/panel.py``'s (E2E trains on the shared
``devset.csv`` — the folder has no train split — and is scored on ``testset_w_refs.csv``).

Run:
    python benchmarks/li_liang.py --seeds 0,1,2 --steps 300                   # the claim, as stated
    python benchmarks/li_liang.py --tasks e2e --sizes 50,500 --seeds 0 --steps 30   # what fits a shared CPU
    python benchmarks/li_liang.py --quick                                     # the test
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # panel and _common, when run from anywhere

import peft  # noqa: E402
from _common import (  # noqa: E402
    benchmark_parser,
    machine_info,
    markdown_table,
    quiet_libraries,
    set_threads,
)
from accelerate.utils import set_seed  # noqa: E402
from panel import (  # noqa: E402
    QUICK,
    TASKS,
    Bench,
    Budget,
    LabelsLoss,
    PeftGenerator,
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

from softprompt.train.config import TrainSection  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "li_liang.json"
METHODS = ("prefix", "full", "lora")
SIZES = (50, 100, 500)
FULL_ROWS = 4000  # "all the data", capped: E2E's shared split has 4,672 rows, WebNLG's train ~18,000
LINEAR = {"optimizer": "adamw", "schedule": "linear", "weight_decay": 0.0, "max_grad_norm": 1.0}
FULL_LR, LORA_LR = 5e-5, 5e-4


def recipe(budget: Budget, seed: int, lr: float) -> TrainSection:
    return TrainSection(max_steps=budget.steps, batch_size=budget.batch_size, seed=seed, lr=lr, **LINEAR)


def run_full(bench: Bench, seed: int) -> Run:
    """Every weight of a fresh copy of the base trains."""
    set_seed(seed)
    model = copy.deepcopy(bench.base).requires_grad_(True)
    return bench.trained("full", seed, LabelsLoss(model), recipe(bench.budget, seed, FULL_LR), model)


def run_lora(bench: Bench, seed: int) -> Run:
    set_seed(seed)
    config = peft.LoraConfig(
        task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]
    )
    model = peft.get_peft_model(bench.base, config).eval()
    try:
        return bench.trained(
            "lora", seed, LabelsLoss(model), recipe(bench.budget, seed, LORA_LR), PeftGenerator(model)
        )
    finally:
        model.unload()  # LoRA wrapped the base's layers in place: the next run gets it bare


def run_prefix(bench: Bench, seed: int, preset: str | None) -> Run:
    return bench.run_softprompt("prefix", seed, {"method": "prefix_tuning"}, preset=preset)


def run_all(
    tasks: Sequence[str],
    sizes: Sequence[int | None],
    methods: Sequence[str],
    budget: Budget,
    preset: str | None,
    quick: bool,
    data: Path,
    journal: Path | None = None,
) -> list[Run]:
    runs: list[Run] = []
    runners = {"prefix": partial(run_prefix, preset=preset), "full": run_full, "lora": run_lora}
    for bench in benches(tasks, budget, quick, data, journal, sizes):
        for seed in budget.seeds:
            for method in methods:
                bench.once(method, seed, partial(runners[method], bench, seed))
        runs += bench.runs
    return runs


def table(runs: Sequence[Run], methods: Sequence[str]) -> str:
    """One line per task, training-set size and method: BLEU and ROUGE-L, mean ± std over seeds."""
    by: dict[tuple[str, int, str], list[Run]] = {}
    for r in runs:
        by.setdefault((r.task, r.train_rows, r.setup), []).append(r)
    rows = []
    for (task, size, method), rs in by.items():
        rows.append(
            [
                task,
                f"{size:,}",
                method,
                format_spread(spread([r.scores["bleu"] for r in rs])),
                format_spread(spread([r.scores["rougeL"] for r in rs])),
                len(rs),
                f"{rs[0].steps} × {rs[0].batch_size}",
                f"{sum(r.train_seconds for r in rs) / len(rs):.0f} s",
            ]
        )
    return markdown_table(
        ["task", "train rows", "method", "BLEU", "ROUGE-L", "seeds", "steps × batch", "training (mean)"], rows
    )


def parse_args(argv: Sequence[str] | None = None):
    parser = benchmark_parser(__doc__, DEFAULT_OUT, "tiny random Llama, a few rows and steps (the test)")
    add_run_flags(parser)
    parser.add_argument("--tasks", default="e2e,webnlg", help="comma-separated: e2e, webnlg")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: " + ", ".join(METHODS))
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, SIZES)) + ",full",
        help=f"training rows per run; 'full' = all rows, capped at {FULL_ROWS:,}",
    )
    parser.add_argument(
        "--preset", choices=["li-liang"], help="the paper's prefix recipe instead of the defaults"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    quiet_libraries()
    tasks = names(args.tasks, [n for n, t in TASKS.items() if t.generation], "--tasks")
    methods = names(args.methods, METHODS, "--methods")
    full_rows = QUICK.train_rows if args.quick else FULL_ROWS
    sizes = [full_rows if s == "full" else int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes = [full_rows // 3, full_rows]  # one low-data size and "all" the quick rows
    budget = budget_from(args)
    machine, started = machine_info(), time.perf_counter()
    runs = collect_runs(
        args,
        lambda journal: run_all(
            tasks, list(dict.fromkeys(sizes)), methods, budget, args.preset, args.quick, args.data, journal
        ),
    )
    print("\n### Table-to-text: dev BLEU and ROUGE-L after a fixed budget (mean ± std over seeds)\n")
    print(table(runs, methods))
    settings = {
        "budget": asdict(budget),
        "tasks": tasks,
        "methods": methods,
        "sizes": sizes,
        "full_rows_cap": full_rows,
        "preset": args.preset,
        "full_finetuning": {"lr": FULL_LR, **LINEAR},
        "lora": {
            "r": 8,
            "lora_alpha": 16,
            "target_modules": ["q_proj", "v_proj"],
            "lr": LORA_LR,
            **LINEAR,
        },
    }
    return write_report("li_liang.py", args, argv, machine, started, settings, runs=[asdict(r) for r in runs])


if __name__ == "__main__":
    main()
