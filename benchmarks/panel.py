"""The defaults panel (issue 14, point 1): softprompt's prompt-tuning defaults against the common peft
setups on seven classification and two table-to-text tasks, three seeds each, at one budget.

Every run trains SmolLM2-135M-Instruct (fp32, one shared frozen base) with prompt tuning on the same
seeded batches (``softprompt train``'s length-grouped order, batch 8) for the same number of steps, and
is scored once after its last step on the same dev rows (no best-by-dev pick for anyone):

* ``softprompt``: ``softprompt train``'s config with only ``prompt.method: prompt_tuning`` set — the
  rest is ``presets.DEFAULTS`` (20 tokens from the class labels, AdamW lr 1e-2 constant, clipping 1.0),
  the prompt and objective built by the library (label-word loss; target-token loss for generation);
* ``peft-text-3e-2`` ... ``peft-random-3e-3``: ``peft.PromptTuningConfig`` (20 tokens) with init TEXT
  (the label words, or a task description for generation) or RANDOM, AdamW lr 3e-2 or 3e-3 (weight
  decay 0.01) with linear decay to 0 — the setups peft's examples and users' scripts use — trained with
  the causal-LM loss of the answer (a plain loop on the library's ``core.step``);
* ``zero-shot``: the frozen model (classification only).

The defaults may be chosen on the ``tune`` tasks only (SST-2, BoolQ, RTE, the built-in example: what
they were measured on); the goal is read on the ``held-out`` ones (MR, CB, COPA, E2E, WebNLG): never
more than 1 point below the best peft setup on any task, and ahead on average.

Data (``--data``, the shared folder): SST-2 (GLUE), MR (rt-polarity, a seeded 1,000-row dev split),
RTE / BoolQ / CB / COPA (SuperGLUE: the FewGLUE 32-row train sets, official validation sets as dev),
the built-in example (support tickets, shipped with softprompt), E2E (the shared folder has no train
split: ``devset.csv`` trains, ``testset_w_refs.csv`` is scored) and WebNLG 2017 (train / dev XML).
Generation is scored by greedy decoding of each distinct source (BLEU, ROUGE-L: ``softprompt.metrics``).

Run:
    python benchmarks/panel.py --split held-out --seeds 0,1,2 --steps 150   # the goal, as the issue states it
    python benchmarks/panel.py --tasks mr,cb --seeds 0 --steps 40           # what fits a shared CPU
    python benchmarks/panel.py --quick                                       # tiny random GPT-2 (the test)
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would bury the tables
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common and quality, when run from anywhere

import peft  # noqa: E402
import torch  # noqa: E402
from _common import (  # noqa: E402
    PeftAnswerToken,
    benchmark_parser,
    encode_file,
    gpt2_tokenizer,
    machine_info,
    markdown_table,
    quiet_libraries,
    right_aligned,
    set_threads,
    tiny_llama,
    train_steps,
    write_json,
)
from accelerate.utils import set_seed  # noqa: E402
from quality import PEFT_RECIPE  # noqa: E402
from torch import nn  # noqa: E402

import softprompt  # noqa: E402
from softprompt.data import Encoded, load_rows  # noqa: E402
from softprompt.data.text import template_fields  # noqa: E402
from softprompt.train import load_config  # noqa: E402
from softprompt.train.build import make_objective, make_task, prompt_config  # noqa: E402
from softprompt.train.config import RunConfig, TrainSection  # noqa: E402
from softprompt.train.evaluate import evaluate_generation, evaluate_predictions  # noqa: E402
from softprompt.train.presets import DEFAULTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "panel.json"
EXAMPLE_DATA = ROOT / "src" / "softprompt" / "examples" / "data"
MR_DEV_ROWS = 1000
R = TypeVar("R")  # what a journal's lines are read back as


# ------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class PanelTask:
    """One task of the panel: its ``task:`` config section, where its rows come from, which split of
    the panel it belongs to, and the text peft's TEXT init starts from."""

    name: str
    split: str  # "tune" or "held-out"
    section: dict[str, Any]
    files: Callable[[Path, Path], tuple[Path, Path]]  # (data folder, work folder) -> (train, dev)
    init_text: str | None = None  # None: the label words

    @property
    def generation(self) -> bool:
        return self.section["kind"] == "generation"

    @property
    def metric(self) -> str:
        return "bleu" if self.generation else "accuracy"


def shared(train: str, dev: str) -> Callable[[Path, Path], tuple[Path, Path]]:
    return lambda data, work: (data / train, data / dev)


def mr_files(data: Path, work: Path) -> tuple[Path, Path]:
    """MR's two raw files as labelled rows, split by a fixed seed into train and a 1,000-row dev.

    Lines end at "\\n" only: ``splitlines`` would also cut at "\\x85", a character of the latin-1 text.
    """
    rows = [
        {"text": line.strip(), "label": label}
        for label, name in ((0, "rt-polarity.neg"), (1, "rt-polarity.pos"))
        for line in (data / "mr" / name).read_text(encoding="latin-1").split("\n")
        if line.strip()
    ]
    random.Random(0).shuffle(rows)
    return write_rows(rows[MR_DEV_ROWS:], work / "mr-train.jsonl"), write_rows(
        rows[:MR_DEV_ROWS], work / "mr-dev.jsonl"
    )


def webnlg_rows(folder: Path) -> list[dict[str, str]]:
    """WebNLG 2017 entries as rows: the triples linearised ("s | p | o ; ..."), one row per reference."""
    rows = []
    for path in sorted(folder.rglob("*.xml")):
        for entry in ET.parse(path).getroot().iter("entry"):
            triples = " ; ".join(t.text.strip() for t in entry.iter("mtriple"))
            rows += [{"triples": triples, "text": lex.text.strip()} for lex in entry.iter("lex") if lex.text]
    return rows


def webnlg_files(data: Path, work: Path) -> tuple[Path, Path]:
    root = data / "webnlg2017" / "webnlg_challenge_2017"
    return (
        write_rows(webnlg_rows(root / "train"), work / "webnlg-train.jsonl"),
        write_rows(webnlg_rows(root / "dev"), work / "webnlg-dev.jsonl"),
    )


def write_rows(rows: Sequence[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def classification(template: str, words: dict, max_length: int) -> dict[str, Any]:
    return {"kind": "classification", "template": template, "label_words": words, "max_length": max_length}


def generation(source: str, target: str) -> dict[str, Any]:
    return {
        "kind": "generation",
        "source_template": source,
        "target_template": target,
        "max_length": 192,
        "max_target_length": 64,
    }


REVIEW = {0: "negative", 1: "positive"}
TASKS: dict[str, PanelTask] = {
    t.name: t
    for t in [
        PanelTask(
            "sst2",
            "tune",
            classification("Review: {sentence}\nSentiment:", REVIEW, 96),
            shared("sst2/train.tsv", "sst2/dev.tsv"),
        ),
        PanelTask(
            "boolq",
            "tune",
            classification("{passage}\nQuestion: {question}?\nAnswer:", {"False": "no", "True": "yes"}, 256),
            shared("superglue/BoolQ/train.jsonl", "superglue/BoolQ/val.jsonl"),
        ),
        PanelTask(
            "rte",
            "tune",
            classification(
                "{premise}\nQuestion: {hypothesis} Yes or no?\nAnswer:",
                {"entailment": "yes", "not_entailment": "no"},
                256,
            ),
            shared("superglue/RTE/train.jsonl", "superglue/RTE/val.jsonl"),
        ),
        PanelTask(
            "example",
            "tune",
            classification(
                "Support ticket: {text}\nCategory:",
                {w: w for w in ("billing", "technical", "shipping", "account")},
                128,
            ),
            lambda data, work: (EXAMPLE_DATA / "train.jsonl", EXAMPLE_DATA / "dev.jsonl"),
        ),
        PanelTask("mr", "held-out", classification("Review: {text}\nSentiment:", REVIEW, 96), mr_files),
        PanelTask(
            "cb",
            "held-out",
            classification(
                "{premise}\nQuestion: {hypothesis} True, false or neither?\nAnswer:",
                {"entailment": "true", "contradiction": "false", "neutral": "neither"},
                256,
            ),
            shared("superglue/CB/train.jsonl", "superglue/CB/val.jsonl"),
        ),
        PanelTask(
            "copa",
            "held-out",
            classification(
                "{premise} What was the {question}?\nA: {choice1}\nB: {choice2}\nAnswer:",
                {0: "A", 1: "B"},
                128,
            ),
            shared("superglue/COPA/train.jsonl", "superglue/COPA/val.jsonl"),
        ),
        PanelTask(
            "e2e",
            "held-out",
            generation("Table: {mr}\nText:", " {ref}"),
            shared("e2e/devset.csv", "e2e/testset_w_refs.csv"),
            init_text="Describe the restaurant in one sentence:",
        ),
        PanelTask(
            "webnlg",
            "held-out",
            generation("Triples: {triples}\nText:", " {text}"),
            webnlg_files,
            init_text="Describe the facts in one sentence:",
        ),
    ]
}
SPLITS = {
    "tune": [n for n, t in TASKS.items() if t.split == "tune"],
    "held-out": [n for n, t in TASKS.items() if t.split == "held-out"],
}


def subset(source: Path, rows: int | None, seed: int, path: Path, by: str | None = None) -> Path:
    """A seeded ``rows`` of ``source`` as JSON lines (all of it when it has no more). With ``by``, ``rows``
    counts distinct values of that column (a source with all its references)."""
    data = load_rows(source)
    if rows is None:
        return source
    if by is None:
        if rows >= len(data):
            return source
        data.shuffle(seed=seed).select(range(rows)).to_json(path)
        return path
    keys = list(dict.fromkeys(data[by]))
    random.Random(seed).shuffle(keys)
    keep = set(keys[:rows])
    data.filter(lambda row: row[by] in keep).to_json(path)
    return path


# ------------------------------------------------------------------------------------------- setups
@dataclass(frozen=True)
class PeftSetup:
    """A common peft prompt-tuning setup: init and learning rate (AdamW, linear decay)."""

    init: str  # "TEXT" or "RANDOM"
    lr: float

    @property
    def name(self) -> str:
        return f"peft-{self.init.lower()}-{self.lr:.0e}".replace("e-0", "e-")


PEFT_SETUPS = {s.name: s for s in (PeftSetup(i, lr) for i in ("TEXT", "RANDOM") for lr in (3e-2, 3e-3))}
SETUPS = ["zero-shot", "softprompt", *PEFT_SETUPS]


class LabelsLoss(nn.Module):
    """A causal LM (peft-wrapped or bare) trained on the target tokens with its own loss (``labels``)."""

    padding_side = "right"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        input_ids, attention_mask = right_aligned(batch["input_ids"], batch["attention_mask"])
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=batch["labels"])
        return out.loss * self.count(batch)

    @staticmethod
    def count(batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"][:, 1:] != -100).sum())


@dataclass
class Budget:
    """Every setting that decides the numbers; all of it goes into the JSON."""

    steps: int = 150
    batch_size: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    dev_rows: int | None = 200  # classification dev rows (seeded); generation: distinct sources
    generation_dev_sources: int = 50
    max_new_tokens: int = 48
    train_rows: int | None = None  # a cap on every train set (--quick)
    eval_batch_size: int = 16
    max_length: int | None = (
        None  # a cap on every task's tokens per row (--quick: the tiny model's positions)
    )

    def section(self, task: PanelTask) -> dict[str, Any]:
        """The task's ``task:`` section within the length cap (a generation target keeps a quarter)."""
        if self.max_length is None:
            return task.section
        capped = {**task.section, "max_length": min(task.section["max_length"], self.max_length)}
        if task.generation:
            capped["max_target_length"] = min(task.section["max_target_length"], self.max_length // 4)
        return capped


QUICK = Budget(
    steps=3,
    batch_size=4,
    seeds=(0, 1),
    dev_rows=8,
    generation_dev_sources=3,
    max_new_tokens=6,
    train_rows=24,
    eval_batch_size=8,
    max_length=64,
)


@dataclass
class Run:
    """One trained (or zero-shot) run: its score on dev and what it cost."""

    task: str
    split: str
    setup: str
    seed: int
    metric: str
    score: float
    scores: dict[str, float]
    steps: int
    batch_size: int
    examples_seen: int
    train_rows: int
    train_seconds: float
    eval_seconds: float


def softprompt_config(
    task: PanelTask,
    train_file: Path,
    budget: Budget,
    seed: int,
    prompt: dict | None = None,
    preset: str | None = None,
) -> RunConfig:
    """A ``softprompt train`` config that sets only the method (and ``prompt``): the rest is the defaults.

    A generation task has no label words for the default text init: it gets the task description peft's
    TEXT init gets (the defaults alone are refused: ``prompt.init_text is needed``).
    """
    prompt = {"method": "prompt_tuning", **(prompt or {})}
    if task.init_text and prompt.get("init", DEFAULTS[prompt["method"]].prompt["init"]) == "text":
        prompt.setdefault("init_text", task.init_text)
    return load_config(
        None,
        base={
            "preset": preset,
            "prompt": prompt,
            "task": budget.section(task),
            "data": {"train": str(train_file)},
            "train": {"max_steps": budget.steps, "batch_size": budget.batch_size, "seed": seed},
        },
    )


@dataclass
class Bench:
    """What the runs of one task share: base, tokenizer, encoded rows, the budget."""

    task: PanelTask
    base: nn.Module
    tokenizer: Any
    tokenizer_dir: Path
    train_file: Path
    train: list[Encoded]
    dev: list[Encoded]
    budget: Budget
    runs: list[Run] = field(default_factory=list)
    journal: Path | None = None  # every finished run is appended here as a JSON line
    journaled: list[Run] = field(default_factory=list)  # the journal's runs from before this process

    def steps_of(self, setup: str) -> int:
        """The optimiser steps a run of ``setup`` takes: none for zero-shot, else the budget's."""
        return 0 if setup == "zero-shot" else self.budget.steps

    def once(self, setup: str, seed: int, train: Callable[[], Run]) -> Run:
        """``train()``, unless the journal already holds this run (same task, setup, seed, training rows,
        steps and batch): then that run, so a rerun of an interrupted command trains only what is left."""
        for run in self.journaled:
            if (run.task, run.setup, run.seed, run.train_rows, run.steps, run.batch_size) == (
                self.task.name,
                setup,
                seed,
                len(self.train),
                self.steps_of(setup),
                self.budget.batch_size,
            ):
                self.runs.append(run)
                print(f"  {run.task} {setup} seed {seed}: {run.metric} {run.score:.1f} (from the journal)")
                return run
        return train()

    def label_ids(self) -> list[int]:
        return make_task(softprompt_config(self.task, self.train_file, self.budget, 0).task).label_token_ids(
            self.tokenizer
        )

    def score(self, objective: nn.Module, generator: nn.Module) -> dict[str, float]:
        if self.task.generation:
            scores, _ = evaluate_generation(
                generator,
                self.tokenizer,
                self.dev,
                batch_size=self.budget.eval_batch_size,
                metrics=["bleu", "rouge"],
                max_new_tokens=self.budget.max_new_tokens,
            )
            return scores
        return evaluate_predictions(
            objective,
            self.dev,
            batch_size=self.budget.eval_batch_size,
            pad_token_id=self.tokenizer.pad_token_id,
            metrics=["accuracy"],
        )

    def record(
        self, setup: str, seed: int, scores: dict[str, float], train_seconds: float, started: float
    ) -> Run:
        steps = self.steps_of(setup)
        run = Run(
            task=self.task.name,
            split=self.task.split,
            setup=setup,
            seed=seed,
            metric=self.task.metric,
            score=scores[self.task.metric],
            scores=scores,
            steps=steps,
            batch_size=self.budget.batch_size,
            examples_seen=steps * self.budget.batch_size,
            train_rows=len(self.train),
            train_seconds=round(train_seconds, 1),
            eval_seconds=round(time.perf_counter() - started - train_seconds, 1),
        )
        self.runs.append(run)
        append_to_journal(self.journal, asdict(run))
        print(
            f"  {run.task} {run.setup} seed {seed}: {run.metric} {run.score:.1f} "
            f"({run.train_seconds:.0f} s training, {run.eval_seconds:.0f} s scoring)",
            flush=True,
        )
        return run

    def trained(
        self, setup: str, seed: int, objective: nn.Module, recipe: TrainSection, generator: nn.Module
    ) -> Run:
        started = time.perf_counter()
        seconds = train_steps(
            objective, recipe, self.train, steps=self.budget.steps, pad_token_id=self.tokenizer.pad_token_id
        )
        return self.record(setup, seed, self.score(objective, generator), seconds, started)

    def run_softprompt(
        self, setup: str, seed: int, prompt: dict | None = None, preset: str | None = None
    ) -> Run:
        """softprompt's defaults (or ``preset``; ``prompt`` over them): the prompt and objective
        ``softprompt train`` builds."""
        set_seed(seed)
        prompt = {"seed": seed, **(prompt or {})}
        config = softprompt_config(self.task, self.train_file, self.budget, seed, prompt, preset)
        task = make_task(config.task)
        model = softprompt.wrap(self.base, prompt_config(config, task), tokenizer=self.tokenizer)
        return self.trained(setup, seed, make_objective(model, task, self.tokenizer), config.train, model)

    def run_peft(self, setup: PeftSetup, seed: int) -> Run:
        set_seed(seed)
        label_words = "".join(" " + w for w in self.task.section.get("label_words", {}).values())
        options = (
            {
                "prompt_tuning_init": "TEXT",
                "prompt_tuning_init_text": self.task.init_text or label_words,
                "tokenizer_name_or_path": str(self.tokenizer_dir),
            }
            if setup.init == "TEXT"
            else {"prompt_tuning_init": "RANDOM"}
        )
        config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20, **options)
        model = peft.get_peft_model(self.base, config).eval()
        objective = LabelsLoss(model) if self.task.generation else PeftAnswerToken(model, self.label_ids())
        recipe = TrainSection(
            max_steps=self.budget.steps,
            batch_size=self.budget.batch_size,
            seed=seed,
            lr=setup.lr,
            **PEFT_RECIPE,
        )
        return self.trained(setup.name, seed, objective, recipe, PeftGenerator(model))

    def run_zero_shot(self) -> Run:
        from softprompt.train.build import bare_objective

        started = time.perf_counter()
        config = softprompt_config(self.task, self.train_file, self.budget, 0)
        task = make_task(config.task)
        model = softprompt.wrap(self.base, prompt_config(config, task), tokenizer=self.tokenizer)
        objective = bare_objective(make_objective(model, task, self.tokenizer))
        return self.record("zero-shot", 0, self.score(objective, objective.model), 0.0, started)


class PeftGenerator(nn.Module):
    """A peft model as ``evaluate_generation`` calls a prompted model: ``generate(input_ids, ...)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def base_model(self) -> nn.Module:
        return self.model.get_base_model()

    def generate(self, input_ids: torch.Tensor, **options: Any) -> torch.Tensor:
        return self.model.generate(input_ids=input_ids, **options)


# ---------------------------------------------------------------------------------------- the panel
def prepare(
    task: PanelTask,
    base: nn.Module,
    tokenizer: Any,
    tokenizer_dir: Path,
    budget: Budget,
    data: Path,
    work: Path,
) -> Bench:
    """The task's files (seeded subsets as the budget says) encoded once."""
    train_file, dev_file = task.files(data, work)
    train_file = subset(
        train_file, budget.train_rows, 0, work / f"{task.name}-train-{budget.train_rows}.jsonl"
    )
    by = template_fields(task.section["source_template"])[0] if task.generation else None  # E2E's "mr"
    rows = budget.generation_dev_sources if task.generation else budget.dev_rows
    dev_file = subset(dev_file, rows, 0, work / f"{task.name}-dev-cap.jsonl", by=by)
    config = softprompt_config(task, train_file, budget, 0)
    spec = make_task(config.task)
    train = encode_file(spec, train_file, tokenizer)
    dev = encode_file(spec, dev_file, tokenizer)
    return Bench(task, base, tokenizer, tokenizer_dir, train_file, train, dev, budget)


def load_base(quick: bool) -> tuple[nn.Module, Any]:
    """SmolLM2-135M-Instruct (fp32), or for ``--quick`` a tiny random Llama over GPT-2's tokenizer (peft's
    prompt-tuning ``generate`` fails on GPT-2 itself: its position ids run past the table)."""
    if not quick:
        from softprompt.hub import load_base_model

        return load_base_model("smollm2-135m-instruct", dtype=torch.float32)
    tokenizer = gpt2_tokenizer()
    return tiny_llama(vocab_size=len(tokenizer)), tokenizer


def benches(
    tasks: Sequence[str],
    budget: Budget,
    quick: bool,
    data: Path,
    journal: Path | None = None,
    sizes: Sequence[int | None] | None = None,
) -> Iterator[Bench]:
    """One shared base; each task (at each training-set size of ``sizes``, else the budget's) prepared,
    its finished runs appended to ``journal`` (and the runs it already holds not trained again)."""
    journaled = (
        [Run(**row) for row in read_journal(journal)] if journal is not None and journal.exists() else []
    )
    base, tokenizer = load_base(quick)
    base.requires_grad_(False).eval()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        tokenizer_dir = work / "tokenizer"  # peft's TEXT init loads the tokenizer from a folder
        tokenizer.save_pretrained(tokenizer_dir)
        for name in tasks:
            for size in sizes or [budget.train_rows]:
                sized = replace(budget, train_rows=size)
                bench = prepare(TASKS[name], base, tokenizer, tokenizer_dir, sized, data, work)
                bench.journal, bench.journaled = journal, journaled
                print(f"{name}: {len(bench.train)} train rows, {len(bench.dev)} dev rows", flush=True)
                yield bench


def run_panel(
    tasks: Sequence[str],
    setups: Sequence[str],
    budget: Budget,
    quick: bool,
    data: Path,
    journal: Path | None = None,
) -> list[Run]:
    runs: list[Run] = []
    for bench in benches(tasks, budget, quick, data, journal):
        if "zero-shot" in setups:
            bench.once("zero-shot", 0, bench.run_zero_shot)
        for seed in budget.seeds:
            if "softprompt" in setups:
                bench.once("softprompt", seed, partial(bench.run_softprompt, "softprompt", seed))
            for setup in setups:
                if setup in PEFT_SETUPS:
                    bench.once(setup, seed, partial(bench.run_peft, PEFT_SETUPS[setup], seed))
        runs += bench.runs
    return runs


# ------------------------------------------------------------------------------------------ summary
def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean with the standard deviation over seeds (0 for one seed) and every value."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": list(values),
    }


def summarise(runs: Sequence[Run]) -> dict[str, dict[str, dict]]:
    """task -> setup -> the spread of its score over seeds."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        out.setdefault(r.task, {}).setdefault(r.setup, []).append(r.score)
    return {task: {setup: spread(v) for setup, v in by.items()} for task, by in out.items()}


def goal(summary: dict[str, dict[str, dict]], split: Sequence[str]) -> dict[str, Any]:
    """softprompt's mean minus the best peft setup's mean, per task of ``split`` run; the goal's verdict."""
    gaps = {}
    for task in split:
        by = summary.get(task, {})
        peft_means = [s["mean"] for name, s in by.items() if name in PEFT_SETUPS]
        if "softprompt" in by and peft_means:
            gaps[task] = by["softprompt"]["mean"] - max(peft_means)
    mean = statistics.fmean(gaps.values()) if gaps else None
    return {
        "tasks": list(gaps),
        "softprompt_minus_best_peft": gaps,
        "mean": mean,
        "target": "every task >= -1.0 point, mean > 0",
        "met": bool(gaps) and min(gaps.values()) >= -1.0 and mean > 0,
    }


def format_spread(s: dict | None) -> str:
    return "-" if s is None else f"{s['mean']:.1f} ± {s['std']:.1f}"


def table(summary: dict[str, dict[str, dict]], setups: Sequence[str], runs: Sequence[Run]) -> str:
    metric = {r.task: r.metric for r in runs}
    split = {r.task: r.split for r in runs}
    rows = []
    for task, by in summary.items():
        peft_means = {n: s["mean"] for n, s in by.items() if n in PEFT_SETUPS}
        best = max(peft_means.values()) if peft_means else None
        gap = f"{by['softprompt']['mean'] - best:+.1f}" if best is not None and "softprompt" in by else "-"
        rows.append([task, split[task], metric[task], *[format_spread(by.get(s)) for s in setups], gap])
    return markdown_table(["task", "split", "metric", *setups, "softprompt − best peft"], rows)


def budget_table(runs: Sequence[Run]) -> str:
    seen: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        seen.setdefault((r.task, r.setup), []).append(r)
    rows = [
        [
            task,
            setup,
            len(rs),
            f"{rs[0].steps} × {rs[0].batch_size}",
            rs[0].examples_seen,
            rs[0].train_rows,
            f"{statistics.fmean(r.train_seconds for r in rs):.0f} s",
            f"{statistics.fmean(r.eval_seconds for r in rs):.0f} s",
        ]
        for (task, setup), rs in seen.items()
    ]
    return markdown_table(
        [
            "task",
            "setup",
            "seeds",
            "steps × batch",
            "examples seen",
            "train rows",
            "training (mean)",
            "scoring (mean)",
        ],
        rows,
    )


def names(text: str, known: Sequence[str], flag: str) -> list[str]:
    chosen = [n for n in text.split(",") if n]
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise SystemExit(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return chosen


def add_run_flags(
    parser, *, seeds: str = "0,1,2", dev_rows: int | None = Budget.dev_rows, generation: bool = True
) -> None:
    """The flags every reproduction script shares: seeds, steps, dev rows (and generation dev sources,
    for a script with generation tasks), and ``--journal`` (every finished run appended as a JSON line:
    a long run interrupted keeps its runs) / ``--from-journal`` (the tables and JSON from such a file,
    nothing trained). ``seeds`` and ``dev_rows`` are the script's defaults for a full run."""
    parser.add_argument("--seeds", default=seeds, help="comma-separated seeds (data order and init)")
    parser.add_argument(
        "--steps", type=int, help=f"optimiser steps per run (default {Budget.steps}; fewer with --quick)"
    )
    parser.add_argument("--dev-rows", type=int, help=f"classification dev rows (default {dev_rows})")
    if generation:
        parser.add_argument(
            "--dev-sources",
            type=int,
            help=f"generation dev sources (default {Budget.generation_dev_sources})",
        )
    parser.add_argument(
        "--journal",
        type=Path,
        help="append every finished run to this JSON-lines file; the runs it already holds are not "
        "trained again (rerun an interrupted command with the same journal to finish it)",
    )
    parser.add_argument("--from-journal", type=Path, help="report the runs of a journal; train nothing")


def budget_from(args) -> Budget:
    """The full budget (``--quick``: the tiny one, two seeds unless ``--seeds`` says) with the flags over it."""
    budget = QUICK if args.quick else Budget()
    changes: dict[str, Any] = {}
    if not args.quick or args.seeds != "0,1,2":
        changes["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    for flag, name in (
        ("steps", "steps"),
        ("dev_rows", "dev_rows"),
        ("dev_sources", "generation_dev_sources"),
    ):
        if getattr(args, flag) is not None:
            changes[name] = getattr(args, flag)
    return replace(budget, **changes)


def collect_runs(args, train: Callable[[Path | None], list[R]], row: Callable[..., R] = Run) -> list[R]:
    """The runs of ``--from-journal`` (each line's fields given to ``row``), or those ``train(journal)``
    makes."""
    if args.from_journal is not None:
        return [row(**line) for line in read_journal(args.from_journal)]
    return train(args.journal)


def read_journal(journal: Path) -> list[dict[str, Any]]:
    """The runs of a ``--journal`` file, one dict per JSON line."""
    lines = journal.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def append_to_journal(journal: Path | None, run: dict[str, Any]) -> None:
    """Append one finished run to ``--journal`` as a JSON line (nothing without a journal)."""
    if journal is not None:
        with journal.open("a", encoding="utf-8") as lines:
            lines.write(json.dumps(run) + "\n")


def write_report(
    script: str,
    args,
    argv: Sequence[str] | None,
    machine: dict,
    started: float,
    settings: dict,
    **sections: Any,
) -> dict:
    """The JSON of a reproduction script: the machine, its settings (with ``--quick``, the journal it was
    read from and the command), ``sections``; written to ``--out`` and returned."""
    command = f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "machine": machine,
        "elapsed_seconds": round(time.perf_counter() - started, 1),
        "settings": {
            **settings,
            "quick": args.quick,
            "from_journal": None if args.from_journal is None else str(args.from_journal),
            "command": command,
        },
        **sections,
    }
    path = write_json(args.out, result)
    print(f"\nwrote {path} ({result['elapsed_seconds']:.0f} s)")
    return result


def parse_args(argv: Sequence[str] | None = None):
    parser = benchmark_parser(__doc__, DEFAULT_OUT, "tiny random Llama, a few rows and steps (the test)")
    add_run_flags(parser)
    parser.add_argument(
        "--split",
        choices=["tune", "held-out", "all"],
        default="held-out",
        help="tune: " + ", ".join(SPLITS["tune"]) + "; held-out: " + ", ".join(SPLITS["held-out"]),
    )
    parser.add_argument("--tasks", help="comma-separated tasks (overrides --split): " + ", ".join(TASKS))
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated setups")
    return parser.parse_args(argv)


def configure(args) -> tuple[list[str], list[str], Budget]:
    tasks = (
        names(args.tasks, list(TASKS), "--tasks")
        if args.tasks
        else list(TASKS)
        if args.split == "all"
        else SPLITS[args.split]
    )
    return tasks, names(args.setups, SETUPS, "--setups"), budget_from(args)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    quiet_libraries()
    tasks, setups, budget = configure(args)
    machine = machine_info()
    started = time.perf_counter()
    runs = collect_runs(
        args, lambda journal: run_panel(tasks, setups, budget, args.quick, args.data, journal)
    )
    summary = summarise(runs)
    goals = {split: goal(summary, SPLITS[split]) for split in SPLITS}
    print("\n### Prompt tuning on the panel: dev score after a fixed budget (mean ± std over seeds)\n")
    print(table(summary, setups, runs))
    print("\n### Budget of every run\n")
    print(budget_table(runs))
    held = goals["held-out"]
    if held["tasks"]:
        print(
            f"\nheld-out goal ({held['target']}): "
            + ", ".join(f"{t} {g:+.1f}" for t, g in held["softprompt_minus_best_peft"].items())
            + f"; mean {held['mean']:+.1f} -> {'met' if held['met'] else 'not met'}"
        )
    settings = {
        "budget": asdict(budget),
        "tasks": tasks,
        "setups": setups,
        "splits": SPLITS,
        "task_sections": {n: TASKS[n].section for n in tasks},
        "softprompt_defaults": asdict(DEFAULTS["prompt_tuning"]),
        "peft_setups": {n: asdict(s) for n, s in PEFT_SETUPS.items()},
        "peft_recipe": PEFT_RECIPE,
    }
    return write_report(
        "panel.py",
        args,
        argv,
        machine,
        started,
        settings,
        summary=summary,
        goals=goals,
        runs=[asdict(r) for r in runs],
    )


if __name__ == "__main__":
    main()
