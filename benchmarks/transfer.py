"""Transfer between tasks in low data (issue 14, point 3): a target task's prompt trained from scratch,
from a source prompt that SPoT's similarity score picks, and from a multitask (MPT) shared prompt.

**SmolLM2-135M-Instruct**, prompt tuning, classification by label words. Every contestant of a
(target, training rows, seed) sees the same batches for the same steps with softprompt's defaults
(``presets.DEFAULTS["prompt_tuning"]``: 20 tokens, AdamW lr 1e-2, constant) and is scored once, after
its last step, on the same dev rows:

- ``zero-shot``: the frozen model without a prompt;
- ``scratch``: softprompt's default init (the target's label words' embeddings, Lester's class-label init);
- ``spot``: ``init: file`` from the source prompt ranked first by :func:`softprompt.transfer.rank_sources`
  (the target's prompt trained ``spot_steps`` from its default init, then the cosine of its
  average-pooled tokens with each source's);
- ``mpt``: ``init: file`` from the shared prompt of a multitask prompt trained on all the sources at
  once (:class:`softprompt.transfer.MultitaskObjective`, rank-1 task factors, examples-proportional
  mixing, as many steps as the single-source prompts took together).

Sources (trained first, ``source_steps`` each on ``source_rows`` rows): SST-2 (GLUE) and MR
(Pang & Lee's rt-polarity). Targets: RTE (GLUE's train/dev, seeded subsets of 32 and 128 rows) and
CB (SuperGLUE; its FewGLUE train set has 32 rows). A target row longer than ``max_length`` keeps its
end (the question and the answer position).

Run:
    python benchmarks/transfer.py --threads 1           # the RESULTS.md table (budget FULL)
    python benchmarks/transfer.py --small               # one seed, fewer steps and dev rows (~45 min here)
    python benchmarks/transfer.py --quick               # a tiny random GPT-2, seconds (the test)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would bury the tables

import torch  # noqa: E402
from _common import (  # noqa: E402
    SHARED_DATA,
    encode_file,
    machine_info,
    markdown_table,
    quiet_libraries,
    set_threads,
    train_steps,
    write_json,
)
from quality import Task, real_models, softprompt_config, softprompt_contestant, tiny_models  # noqa: E402

import softprompt  # noqa: E402
from softprompt.methods import MultitaskPromptTuningConfig  # noqa: E402
from softprompt.train.config import TrainSection  # noqa: E402
from softprompt.train.evaluate import evaluate_predictions  # noqa: E402
from softprompt.train.objectives import ClassificationObjective  # noqa: E402
from softprompt.transfer import MultitaskObjective, multitask_batches, rank_sources  # noqa: E402
from softprompt.transfer import train_steps as train_batches  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "transfer.json"
SENTIMENT = "Review: {sentence}\nSentiment:"
MR_FILE = "mr.jsonl"  # written into the work folder from the two rt-polarity files
MR_DEV_ROWS = 500  # the last rows of the shuffled MR set are its dev rows

SOURCES = {
    "sst2": Task("sst2", SENTIMENT, {0: "negative", 1: "positive"}, "sst2/train.tsv", "sst2/dev.tsv", 96),
    "mr": Task("mr", SENTIMENT, {0: "negative", 1: "positive"}, MR_FILE, MR_FILE, 96),
}
TARGETS = {
    "rte": Task(
        "rte",
        "{sentence1}\nQuestion: {sentence2} Yes or no?\nAnswer:",
        {0: "yes", 1: "no"},  # GLUE: 0 = entailment
        "rte/train.tsv",
        "rte/dev.tsv",
        256,
    ),
    "cb": Task(
        "cb",
        "{premise}\nQuestion: {hypothesis} Yes, no, or maybe?\nAnswer:",
        {"entailment": "yes", "contradiction": "no", "neutral": "maybe"},
        "superglue/CB/train.jsonl",
        "superglue/CB/val.jsonl",
        256,
    ),
}
CONTESTANTS = ("scratch", "spot", "mpt")


@dataclass(frozen=True)
class Budget:
    """Every setting that decides the numbers; all of it goes into the JSON."""

    sizes: dict[str, tuple[int, ...]]  # training rows per target
    target_steps: int
    spot_steps: int  # the target's brief training before SPoT's similarity
    source_steps: int
    source_rows: int
    dev_rows: dict[str, int | None]  # a seeded dev subset per task (sources too); None: all
    max_length: int  # target tokens per row
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 8
    eval_batch_size: int = 16
    seed: int = 0  # the run's seed (set per run; quality.softprompt_config reads it)


# SmolLM2 on one thread of this 2-core machine shared with other jobs: ~1.5-3 s a step on SST-2 rows,
# ~4-8 s on RTE/CB rows of up to 256 tokens, 0.1-0.6 s to score a dev row.
FULL = Budget(
    sizes={"rte": (32, 128), "cb": (32,)},
    target_steps=60,
    spot_steps=15,
    source_steps=100,
    source_rows=4000,
    dev_rows={"rte": None, "cb": None, "sst2": 300, "mr": 300},
    max_length=256,
)
SMALL = Budget(
    sizes={"rte": (32, 128), "cb": (32,)},
    target_steps=20,
    spot_steps=4,
    source_steps=30,
    source_rows=500,
    dev_rows={"rte": 80, "cb": None, "sst2": 100, "mr": 100},
    max_length=128,
    seeds=(0,),
)
QUICK = Budget(
    sizes={"rte": (8, 16), "cb": (8,)},
    target_steps=2,
    spot_steps=1,
    source_steps=2,
    source_rows=16,
    dev_rows={"rte": 8, "cb": 8, "sst2": 8, "mr": 8},
    max_length=64,
    seeds=(0, 1),
    batch_size=4,
    eval_batch_size=8,
)


# -------------------------------------------------------------------------------------------- data
def write_mr(data: Path, work: Path) -> Path:
    """MR's two rt-polarity files as one shuffled JSON-lines file (``sentence``, ``label`` 1 = positive)."""
    rows = []
    for label, name in ((1, "rt-polarity.pos"), (0, "rt-polarity.neg")):
        text = (data / "mr" / name).read_text(encoding="utf-8", errors="replace")
        rows += [{"sentence": line.strip(), "label": label} for line in text.split("\n") if line.strip()]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
    path = work / MR_FILE
    path.write_text("".join(json.dumps(rows[i]) + "\n" for i in order), encoding="utf-8")
    return path


def source_splits(name: str, task: Task, tokenizer, budget: Budget, data: Path):
    """A source's training rows and dev rows (MR: the first rows of its shuffled file, and its last)."""
    classification = task.classification()
    if name == "mr":
        everything = encode_file(classification, data / task.train, tokenizer)
        dev = everything[-MR_DEV_ROWS:][: budget.dev_rows[name]]
        return everything[: min(budget.source_rows, len(everything) - MR_DEV_ROWS)], dev
    train = encode_file(classification, data / task.train, tokenizer, budget.source_rows)
    return train, encode_file(classification, data / task.dev, tokenizer, budget.dev_rows[name])


# ----------------------------------------------------------------------------------------- running
def accuracy(objective, dev, budget: Budget, pad_token_id: int) -> float:
    scores = evaluate_predictions(
        objective, dev, batch_size=budget.eval_batch_size, pad_token_id=pad_token_id, metrics=["accuracy"]
    )
    return scores["accuracy"]  # in %


def train_sources(base, tokenizer, budget: Budget, data: Path, work: Path) -> dict:
    """Each source's prompt (softprompt's defaults) and the multitask prompt over all of them, saved."""
    pad = tokenizer.pad_token_id
    splits = {name: source_splits(name, task, tokenizer, budget, data) for name, task in SOURCES.items()}
    results = {"sources": {}, "paths": {}}
    for name, task in SOURCES.items():
        train, dev = splits[name]
        config = softprompt_config(
            "prompt_tuning", task.classification(), data / task.train, budget, budget.source_steps
        )
        contestant = softprompt_contestant(config, base, tokenizer)
        seconds = train_steps(
            contestant.objective, contestant.recipe, train, steps=budget.source_steps, pad_token_id=pad
        )
        results["paths"][name] = str(contestant.save(work / name))
        results["sources"][name] = {
            "dev_accuracy": accuracy(contestant.objective, dev, budget, pad),
            "train_seconds": seconds,
            "steps": budget.source_steps,
        }
        print(f"source {name}: dev accuracy {results['sources'][name]['dev_accuracy']:.1f} ({seconds:.0f} s)")

    tasks = tuple(SOURCES)
    config = MultitaskPromptTuningConfig(num_virtual_tokens=20, tasks=tasks, init="vocab", seed=budget.seed)
    model = softprompt.wrap(base, config)
    labels = {name: task.classification().label_token_ids(tokenizer) for name, task in SOURCES.items()}
    objective = MultitaskObjective(model, labels)
    batches = multitask_batches(
        {name: splits[name][0] for name in tasks}, tasks, budget.batch_size, pad, seed=budget.seed
    )
    steps = budget.source_steps * len(tasks)
    recipe = TrainSection(lr=1e-2, batch_size=budget.batch_size, seed=budget.seed)
    started = time.perf_counter()
    train_batches(objective, batches, recipe, steps)
    seconds = time.perf_counter() - started
    results["paths"]["mpt"] = str(model.save(work / "mpt.safetensors"))
    mpt = {"train_seconds": seconds, "steps": steps}
    for name in tasks:  # each source task's own composed prompt, scored on its dev rows
        alone = softprompt.SoftPromptModel(base, model.prompt.task(name), model.shape)
        mpt[f"{name}_dev_accuracy"] = accuracy(
            ClassificationObjective(alone, labels[name]), splits[name][1], budget, pad
        )
    results["sources"]["mpt"] = mpt
    print(f"mpt over {', '.join(tasks)}: {mpt} ({seconds:.0f} s)")
    return results


def run_target(
    name: str, size: int, seed: int, base, tokenizer, budget: Budget, data: Path, paths: dict
) -> dict:
    """Every contestant on one (target, rows, seed): SPoT's scores, then each contestant's dev accuracy."""
    task, pad = TARGETS[name], tokenizer.pad_token_id
    budget = replace(budget, seed=seed)
    classification = task.classification(max_length=budget.max_length)
    train = encode_file(classification, data / task.train, tokenizer, size, seed)
    dev = encode_file(classification, data / task.dev, tokenizer, budget.dev_rows[name], 0)

    def contestant(prompt: dict | None = None):
        config = softprompt_config(
            "prompt_tuning", classification, data / task.train, budget, budget.target_steps, prompt=prompt
        )
        return softprompt_contestant(config, base, tokenizer)

    scratch = contestant()
    sources = [paths[source] for source in SOURCES]
    ranked = rank_sources(
        scratch.objective, train, sources, pad_token_id=pad, steps=budget.spot_steps, recipe=scratch.recipe
    )
    chosen = next(source for source in SOURCES if paths[source] == ranked[0][0])
    row = {
        "target": name,
        "rows": size,
        "seed": seed,
        "spot_scores": {
            source: score for source in SOURCES for path, score in ranked if path == paths[source]
        },
        "spot_source": chosen,
        "zero_shot": accuracy(scratch.objective.without_prompt(), dev, budget, pad),
    }
    inits = {
        "scratch": None,
        "spot": {"init": "file", "init_file": paths[chosen]},
        "mpt": {"init": "file", "init_file": paths["mpt"]},
    }
    for label, init in inits.items():
        trained = scratch if init is None else contestant(init)
        seconds = train_steps(
            trained.objective, trained.recipe, train, steps=budget.target_steps, pad_token_id=pad
        )
        row[label] = accuracy(trained.objective, dev, budget, pad)
        row[f"{label}_train_seconds"] = seconds
    print(
        f"{name} {size} rows seed {seed}: zero-shot {row['zero_shot']:.1f}, "
        + ", ".join(f"{label} {row[label]:.1f}" for label in CONTESTANTS)
        + f" (SPoT picked {chosen}: {row['spot_scores']})"
    )
    return row


# ------------------------------------------------------------------------------------------ tables
def mean_spread(values: Sequence[float], digits: int = 1) -> str:
    """``mean ± half the range`` over seeds."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"


def table(runs: list[dict]) -> str:
    settings = sorted(
        {(r["target"], r["rows"]) for r in runs}, key=lambda s: (list(TARGETS).index(s[0]), s[1])
    )
    rows = []
    for target, size in settings:
        group = [r for r in runs if (r["target"], r["rows"]) == (target, size)]
        picks = sorted({r["spot_source"] for r in group})
        rows.append(
            [target, size, len(group), mean_spread([r["zero_shot"] for r in group])]
            + [mean_spread([r[c] for r in group]) for c in CONTESTANTS]
            + ["/".join(picks), mean_spread([r["spot_scores"][p] for r in group for p in picks], 3)]
        )
    headers = [
        "target",
        "train rows",
        "seeds",
        "zero-shot",
        "scratch",
        "spot",
        "mpt",
        "SPoT's pick",
        "its score",
    ]
    return markdown_table(headers, rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="a tiny random GPT-2, a few rows and steps (the test)"
    )
    parser.add_argument(
        "--small", action="store_true", help="the SMALL budget (one seed, fewer steps and dev rows)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON goes")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared data folder")
    parser.add_argument("--targets", default=",".join(TARGETS), help="target tasks, comma-separated")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the budget's)")
    parser.add_argument("--steps", type=int, help="target steps (default: the budget's)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    set_threads(args.threads)
    quiet_libraries()
    budget = QUICK if args.quick else SMALL if args.small else FULL
    if args.seeds:
        budget = replace(budget, seeds=tuple(int(s) for s in args.seeds.split(",")))
    if args.steps:
        budget = replace(budget, target_steps=args.steps)
    targets = [t for t in args.targets.split(",") if t]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise SystemExit(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    if not args.data.is_dir():
        print(f"skipped: no shared data at {args.data}")
        return
    models = tiny_models() if args.quick else real_models()
    base, tokenizer = models.causal()
    base = base.eval().requires_grad_(False)
    info = machine_info()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        data.mkdir()
        for entry in args.data.iterdir():  # the shared data plus MR as one file, side by side
            (data / entry.name).symlink_to(entry)
        write_mr(args.data, data)
        sources = train_sources(base, tokenizer, budget, data, work)
        runs = [
            run_target(target, size, seed, base, tokenizer, budget, data, sources["paths"])
            for target in targets
            for size in budget.sizes[target]
            for seed in budget.seeds
        ]
    print()
    print(f"Low-data transfer on {models.causal_name} (dev accuracy %, mean ± half-range over seeds)")
    print(table(runs))
    sources.pop("paths")
    write_json(
        args.out,
        {
            "machine": info,
            "model": models.causal_name,
            "budget": asdict(budget),
            "wall_seconds": time.perf_counter() - started,
            "sources": sources["sources"],
            "runs": runs,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
