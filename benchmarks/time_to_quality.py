"""Time to quality (issue 15): the training wall time until SST-2 dev accuracy reaches a target, for
softprompt's defaults against peft's common setup, in one run — the figure a user pays.

* ``softprompt`` — what ``softprompt train`` does with nothing but the method set: prompt tuning with
  softprompt's defaults (``presets.DEFAULTS``), the base in the dtype ``model.dtype: auto`` picks on this
  machine (bf16 where the hardware computes it natively), the label-word objective (logits of the label
  words at the answer position only).
* ``peft`` — prompt tuning set up the common way (``benchmarks/quality.py``'s ``PEFT_SETUPS``: 20 tokens,
  text init from the label words, AdamW lr 1e-3 with linear decay over the step budget, the causal-LM
  loss of the answer token), on the fp32 base.

Both train on the same seeded SST-2 rows in ``softprompt train``'s batch order (batch 8) and are scored
every ``--every`` steps on the same seeded dev rows, as ``softprompt train`` scores a classifier. The
contestants train in turns (``--every`` steps each), so a slow spell of the shared machine hits both.
Time to quality is the training wall time (evaluation excluded; it is reported beside it) up to the first
evaluation at or above ``--target``. A contestant that never reaches it within ``--max-steps`` gets no
time; the ratio is then a bound (softprompt's time over peft's whole budget).

Run:
    python benchmarks/time_to_quality.py --threads 1     # the table in docs/performance.md
    python benchmarks/time_to_quality.py --quick         # tiny random GPT-2, seconds (the test)
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would bury the tables
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common and quality, when run from anywhere

from _common import (  # noqa: E402
    benchmark_parser,
    encode_file,
    machine_info,
    markdown_table,
    quiet_libraries,
    set_threads,
    training_steps,
    write_json,
)
from accelerate.utils import set_seed  # noqa: E402
from quality import (  # noqa: E402
    FULL,
    QUICK,
    TASKS,
    Bench,
    Contestant,
    peft_contestant,
    real_models,
    softprompt_config,
    softprompt_contestant,
    task_splits,
    tiny_models,
)
from torch import nn  # noqa: E402

from softprompt.precision import choose_dtype  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "time_to_quality.json"
METHOD = "prompt_tuning"
TASK = "sst2"


@dataclass
class Race:
    """One contestant's run: its steps, the evaluations along the way and when it reached the target."""

    name: str
    setup: str
    dtype: str
    contestant: Contestant
    steps: Iterator[float] = field(repr=False)
    done: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    curve: list[dict] = field(default_factory=list)
    reached_at: dict | None = None

    def train(self, count: int) -> None:
        """``count`` more optimiser steps (fewer when the budget ends), timed."""
        started = time.perf_counter()
        for _ in range(count):
            if next(self.steps, None) is None:
                break
            self.done += 1
        self.train_seconds += time.perf_counter() - started

    def evaluate(self, bench: Bench, target: float) -> None:
        started = time.perf_counter()
        scores = bench.score(self.contestant.objective)
        self.eval_seconds += time.perf_counter() - started
        point = {"step": self.done, "train_seconds": self.train_seconds, "accuracy": scores["accuracy"]}
        self.curve.append(point)
        if self.reached_at is None and self.done > 0 and scores["accuracy"] >= target:  # trained to it
            self.reached_at = point
        print(
            f"  {self.name} step {self.done}: accuracy {scores['accuracy']:.1f}, {self.train_seconds:.0f} s",
            flush=True,
        )


def race(races: Sequence[Race], bench: Bench, *, every: int, max_steps: int, target: float) -> None:
    """Train the contestants in turns, ``every`` steps each, until each reached ``target`` or its budget."""
    for race_ in races:
        race_.evaluate(bench, target)  # step 0: where each starts
    while any(r.reached_at is None and r.done < max_steps for r in races):
        for race_ in races:
            if race_.reached_at is None and race_.done < max_steps:
                race_.train(every)
                race_.evaluate(bench, target)


def summary_of(races: Sequence[Race], target: float) -> dict:
    ours, theirs = races
    budget = theirs.train_seconds  # peft's whole training time when it never reaches the target
    if ours.reached_at is not None and theirs.reached_at is not None:
        ratio, bound = ours.reached_at["train_seconds"] / theirs.reached_at["train_seconds"], "="
    elif ours.reached_at is not None:
        ratio, bound = ours.reached_at["train_seconds"] / budget, "<"  # peft would need longer still
    else:
        ratio, bound = None, None
    return {"target": target, "softprompt_vs_peft_time": ratio, "relation": bound, "goal": 0.5}


def table(races: Sequence[Race], result: dict) -> str:
    rows = []
    for r in races:
        reached = r.reached_at
        rows.append(
            [
                r.name,
                r.setup,
                r.dtype,
                f"{reached['train_seconds']:.0f} s at step {reached['step']}"
                if reached
                else f"not within {r.done} steps",
                f"{max(p['accuracy'] for p in r.curve):.1f}",
                f"{r.train_seconds / max(r.done, 1):.2f}",
                f"{r.eval_seconds:.0f} s",
            ]
        )
    headers = [
        "contestant",
        "setup",
        "base",
        f"time to {result['target']:g} %",
        "best accuracy",
        "s/step",
        "eval time",
    ]
    ratio = result["softprompt_vs_peft_time"]
    verdict = (
        f"softprompt ÷ peft time to {result['target']:g} %: {result['relation'] if result['relation'] != '=' else ''}"
        f"{ratio:.2f} (goal ≤ {result['goal']})"
        if ratio is not None
        else "softprompt did not reach the target"
    )
    return markdown_table(headers, rows) + "\n\n" + verdict


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, DEFAULT_OUT, quick="tiny random GPT-2, a few rows (the test)")
    parser.add_argument("--target", type=float, default=82.0, help="dev accuracy to reach (%%)")
    parser.add_argument("--every", type=int, default=10, help="steps between evaluations")
    parser.add_argument("--max-steps", type=int, default=100, help="each contestant's step budget")
    parser.add_argument(
        "--train-rows", type=int, default=2000, help="a seeded subset of SST-2's training rows"
    )
    parser.add_argument("--dev-rows", type=int, default=200, help="a seeded subset of SST-2's dev rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rows, the batch order and the inits")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    quiet_libraries()
    machine = machine_info()
    started = time.perf_counter()
    if args.quick:
        budget, every, max_steps = QUICK, 2, 4
        dev_rows, train_rows = QUICK.dev_rows[TASK], QUICK.train_rows
    else:
        budget, every, max_steps, dev_rows, train_rows = (
            FULL,
            args.every,
            args.max_steps,
            args.dev_rows,
            args.train_rows,
        )
    budget = replace(budget, seed=args.seed, train_rows=train_rows, dev_rows={TASK: dev_rows})
    choice = choose_dtype("auto")
    print(choice.message(), flush=True)

    models = tiny_models() if args.quick else real_models()
    fp32, tokenizer = models.causal()
    fp32.requires_grad_(False)
    ours_base: nn.Module = fp32 if choice.name == "float32" else copy.deepcopy(fp32).to(choice.dtype)
    task = TASKS[TASK].classification(max_length=budget.max_length[TASK])
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        splits = task_splits(TASK, dev_rows, (), budget, args.data, work)
        train = encode_file(task, splits.train[None], tokenizer)
        dev = encode_file(task, splits.dev, tokenizer)
        tokenizer_dir = work / "tokenizer"  # peft's text init loads the tokenizer from a folder
        tokenizer.save_pretrained(tokenizer_dir)
        bench = Bench(models.causal_name, TASK, 0, dev, max_steps, tokenizer.pad_token_id, budget)

        set_seed(args.seed)
        config = softprompt_config(METHOD, task, splits.train[None], budget, max_steps)
        ours = softprompt_contestant(config, ours_base, tokenizer)
        set_seed(args.seed)
        theirs = peft_contestant(
            METHOD, fp32, tokenizer_dir, task, task.label_token_ids(tokenizer), budget, max_steps
        )
        races = [
            Race(
                name,
                c.setup,
                dtype,
                c,
                training_steps(c.objective, c.recipe, train, max_steps, tokenizer.pad_token_id),
            )
            for name, c, dtype in (("softprompt", ours, choice.name), ("peft", theirs, "float32"))
        ]
        race(races, bench, every=every, max_steps=max_steps, target=args.target)

    result = summary_of(races, args.target)
    print("\nTime to quality, SST-2\n" + table(races, result))
    payload = {
        "date": machine["date"],
        "machine": machine,
        "model": models.causal_name,
        "base_dtype_auto": choice.message(),
        "settings": {
            "quick": args.quick,
            "target": args.target,
            "every": every,
            "max_steps": max_steps,
            "train_rows": len(train),
            "dev_rows": len(dev),
            "batch_size": budget.batch_size,
            "seed": args.seed,
            "command": "python benchmarks/time_to_quality.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
        },
        "contestants": [
            {
                "name": r.name,
                "setup": r.setup,
                "dtype": r.dtype,
                "steps": r.done,
                "train_seconds": r.train_seconds,
                "eval_seconds": r.eval_seconds,
                "reached_at": r.reached_at,
                "curve": r.curve,
            }
            for r in races
        ],
        "result": result,
        "elapsed_seconds": round(time.perf_counter() - started, 1),
    }
    path = write_json(args.out, payload)
    print(f"\nwrote {path} ({payload['elapsed_seconds']:.0f} s)")
    return payload


if __name__ == "__main__":
    main()
