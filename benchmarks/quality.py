"""Learning quality (issue 6): softprompt's defaults against peft's common setups, and an encoder's deep
prompts against full fine-tuning, at a fixed seed and a step budget that fits a CPU.

Every row is an objective (``softprompt.train.objectives``' protocol) trained by the library's core,
``softprompt.train.core.step``, and scored by ``softprompt.train.evaluate``: every trained row of one
task sees the same training batches in the same order (``softprompt train``'s seeded, length-grouped
batch order, batch 8, seed 0) for the same number of steps, and is scored once, after its last step,
on the same dev rows (no checkpoint picked on dev). This file holds only the contestants, the budgets
and the tables.

**SmolLM2-135M-Instruct**, classification by label words: each row is its template, and the class is
the label word whose first token scores highest at the position after it.

- ``zero-shot``: the frozen model without a prompt.
- ``softprompt``: each method with softprompt's per-method defaults (``presets.DEFAULTS``: nothing but
  the method is set), built as ``softprompt train`` builds it (its config, prompt and objective; one
  shared base model).
- ``peft``: the same method, set up the common way: ``PromptTuningConfig`` (20 tokens, text init from
  the label words, lr 1e-3), ``PrefixTuningConfig`` (20 tokens, lr 1e-2), ``PromptEncoderConfig``
  (20 tokens, MLP 256, lr 1e-3); AdamW (torch's defaults, weight decay 0.01) with linear decay to 0,
  as in peft's examples; the causal-LM loss of the answer token (cross-entropy over the whole
  vocabulary); right padding, which keeps each row as it would be alone (peft places its virtual
  tokens before any left pads).

Tasks: SST-2 (GLUE), and RTE and BoolQ from SuperGLUE (their FewGLUE 32-example train sets, the
official validation sets as dev). A low-data column trains prompt tuning on seeded SST-2 subsets.

**all-MiniLM-L6-v2** on SST-2 (the sentence alone, a new linear head on every row): deep prompts
(softprompt prefix tuning in every encoder layer, 4 tokens) read by the model's own ``[CLS]`` head
or by a head over mean-pooled states, prompt tuning (20 tokens, text init), all with softprompt's
default optimiser settings; full fine-tuning of all weights (lr 5e-5, 10 %
warm-up, linear decay, weight decay 0.01: BERT's recipe); a linear probe on the frozen model's
mean-pooled features (lr 1e-2). All in eval mode (no dropout), as softprompt trains.

Run:
    python benchmarks/quality.py --threads 1            # the tables in RESULTS.md (45 minutes here)
    python benchmarks/quality.py --tasks sst2 --skip-encoder --low-data none   # SST-2 rows only
    python benchmarks/quality.py --quick                # tiny random models, seconds (the test)
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would bury the tables

import datasets  # noqa: E402
import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from _common import (  # noqa: E402
    SHARED_DATA,
    PeftAnswerToken,
    encode_file,
    gpt2_tokenizer,
    machine_info,
    markdown_table,
    right_aligned,
    set_threads,
    train_steps,
    write_json,
)
from accelerate.utils import set_seed  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

import softprompt  # noqa: E402
from softprompt.data import ClassificationTask, Encoded, load_rows  # noqa: E402
from softprompt.families import model_shape  # noqa: E402
from softprompt.models import SoftPromptModel  # noqa: E402
from softprompt.models.encoder import mean_pool  # noqa: E402
from softprompt.train import load_config  # noqa: E402
from softprompt.train.build import make_objective, make_task, model_options, prompt_config  # noqa: E402
from softprompt.train.config import RunConfig, TrainSection  # noqa: E402
from softprompt.train.evaluate import evaluate_predictions  # noqa: E402
from softprompt.train.objectives import ClassificationObjective, HeadClassificationObjective  # noqa: E402
from softprompt.train.presets import DEFAULTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "quality.json"
METRICS = ["accuracy", "macro_f1"]


# ------------------------------------------------------------------------------------------ what runs
@dataclass(frozen=True)
class Task:
    """A classification task: a template ending where the answer goes, one label word per label value."""

    name: str
    template: str
    label_words: dict[str | int, str]
    train: str  # file under the data folder
    dev: str
    max_length: int  # longer rows keep their end (the question and the answer position)

    def classification(
        self, template: str | None = None, max_length: int | None = None
    ) -> ClassificationTask:
        return ClassificationTask(
            template or self.template, "label", self.label_words, max_length or self.max_length
        )


TASKS = {
    "sst2": Task(
        "sst2",
        "Review: {sentence}\nSentiment:",
        {0: "negative", 1: "positive"},
        "sst2/train.tsv",
        "sst2/dev.tsv",
        96,
    ),
    "rte": Task(
        "rte",
        "{premise}\nQuestion: {hypothesis} Yes or no?\nAnswer:",
        {"entailment": "yes", "not_entailment": "no"},
        "superglue/RTE/train.jsonl",
        "superglue/RTE/val.jsonl",
        256,
    ),
    "boolq": Task(
        "boolq",
        "{passage}\nQuestion: {question}?\nAnswer:",
        {"False": "no", "True": "yes"},  # the JSON booleans, matched by their text
        "superglue/BoolQ/train.jsonl",
        "superglue/BoolQ/val.jsonl",
        256,
    ),
}
CAUSAL_METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning")
ENCODER_METHODS = ("deep_prompt", "deep_prompt_mean", "prompt_tuning", "full_finetuning", "linear_probe")
LIBRARIES = ("softprompt", "peft")

# peft's common setup per method: (config given the tokenizer folder and the init text, lr, description).
PEFT_SETUPS: dict[str, tuple[Callable[[str, str], peft.PeftConfig], float, str]] = {
    "prompt_tuning": (
        lambda tokenizer_dir, text: peft.PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=20,
            prompt_tuning_init="TEXT",
            prompt_tuning_init_text=text,
            tokenizer_name_or_path=tokenizer_dir,
        ),
        1e-3,
        "20 tokens, text init",
    ),
    "prefix_tuning": (
        lambda tokenizer_dir, text: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20),
        1e-2,
        "20 tokens, N(0, 1) init",
    ),
    "p_tuning": (
        lambda tokenizer_dir, text: peft.PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=20, encoder_hidden_size=256
        ),
        1e-3,
        "20 tokens, MLP 256",
    ),
}
# AdamW as torch defines it (weight decay 0.01), linear decay to 0, no clipping: peft's examples.
PEFT_RECIPE = {"optimizer": "adamw", "schedule": "linear", "weight_decay": 0.01, "max_grad_norm": None}

DEEP_PROMPT_TOKENS = 4  # 6 layers x 2 x 384 x 4 = 18,432 numbers: with the head < 0.1 % of MiniLM
ENCODER_MAX_LENGTH = 128


@dataclass(frozen=True)
class Budget:
    """Every setting that decides the numbers; all of it goes into the JSON."""

    steps: dict[str, int]  # SmolLM2 optimiser steps per task
    dev_rows: dict[str, int | None]  # a seeded dev subset per task; None: the whole dev set
    max_length: dict[str, int]  # SmolLM2 tokens per row per task
    low_data: tuple[int, ...]  # SmolLM2 SST-2 training rows of the low-data column (besides all of them)
    encoder_steps: int
    encoder_low_data: tuple[int, ...]
    encoder_dev_rows: int | None = None
    train_rows: int | None = None  # cap on every training set (only --quick sets it)
    batch_size: int = 8
    eval_batch_size: int = 32
    seed: int = 0


# Sized to finish within an hour on one thread of this machine while other jobs share its two cores
# (RESULTS.md): SmolLM2 costs ~1.5-3 s a step on SST-2, ~6-8 s on RTE and ~11-14 s on BoolQ, and
# scoring a dev row 0.1-0.6 s (peft's prompt tuning and P-tuning add 20 tokens to every row).
FULL = Budget(
    steps={"sst2": 50, "rte": 12, "boolq": 6},
    dev_rows={"sst2": 300, "rte": 150, "boolq": 100},
    max_length={"sst2": 96, "rte": 256, "boolq": 160},
    low_data=(32,),
    encoder_steps=150,
    encoder_low_data=(32, 256),
)
QUICK = Budget(
    steps={"sst2": 3, "rte": 2, "boolq": 2},
    dev_rows={"sst2": 12, "rte": 8, "boolq": 8},
    max_length={"sst2": 48, "rte": 64, "boolq": 64},
    low_data=(8,),
    encoder_steps=3,
    encoder_low_data=(8,),
    encoder_dev_rows=12,
    train_rows=32,
    batch_size=4,
    eval_batch_size=8,
)


@dataclass
class Selection:
    """Which rows to run (command-line flags)."""

    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    methods: list[str] = field(default_factory=lambda: list(CAUSAL_METHODS))
    libraries: list[str] = field(default_factory=lambda: list(LIBRARIES))
    encoder_methods: list[str] = field(default_factory=lambda: list(ENCODER_METHODS))
    causal: bool = True
    encoder: bool = True


# ------------------------------------------------------------------------------------------ models
@dataclass
class Models:
    """The base models with their tokenizers; the encoder is built afresh (a new head) for every row."""

    causal: Callable[[], tuple[nn.Module, Any]]
    encoder: Callable[[], tuple[nn.Module, Any]]
    causal_name: str
    encoder_name: str


def real_models() -> Models:
    """SmolLM2-135M-Instruct (fp32) and all-MiniLM-L6-v2 with a new 2-way classification head."""
    from softprompt.hub import load_base_model

    return Models(
        lambda: load_base_model("smollm2-135m-instruct"),
        lambda: load_base_model("all-minilm-l6-v2", head="sequence-classification", num_labels=2),
        "SmolLM2-135M-Instruct",
        "all-MiniLM-L6-v2",
    )


def tiny_models() -> Models:
    """Random 2-layer GPT-2 and BERT sharing GPT-2's tokenizer (``--quick``: seconds, no weights needed)."""
    tokenizer = gpt2_tokenizer()

    def gpt2() -> tuple[nn.Module, Any]:
        torch.manual_seed(0)
        config = transformers.GPT2Config(
            vocab_size=len(tokenizer), n_embd=16, n_layer=2, n_head=2, n_positions=128
        )
        return transformers.GPT2LMHeadModel(config).eval(), tokenizer

    def bert() -> tuple[nn.Module, Any]:
        config = transformers.BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=160,
            num_labels=2,
        )
        return transformers.BertForSequenceClassification(config).eval(), tokenizer

    return Models(gpt2, bert, "tiny random GPT-2", "tiny random BERT")


# -------------------------------------------------------------------------------------------- data
@dataclass
class Splits:
    """A task's files: the dev rows, and training files by their number of rows (``None``: all rows)."""

    dev: Path
    train: dict[int | None, Path]


def subset_file(source: Path, rows: int | None, seed: int, path: Path) -> Path:
    """``rows`` rows of ``source`` drawn with ``seed``, as JSON lines at ``path``; ``source`` when it has no more."""
    data = load_rows(source)
    if rows is None or rows >= len(data):
        return source
    data.shuffle(seed=seed).select(range(rows)).to_json(path)
    return path


def task_splits(
    name: str, dev_rows: int | None, sizes: Sequence[int], budget: Budget, data: Path, work: Path
) -> Splits:
    """A task's files, written once: a seeded dev subset, all training rows and seeded training subsets."""
    task, seed = TASKS[name], budget.seed
    dev = subset_file(data / task.dev, dev_rows, seed, work / f"{name}-dev-{dev_rows}.jsonl")
    train = {
        size: subset_file(
            data / task.train, size or budget.train_rows, seed, work / f"{name}-train-{size}.jsonl"
        )
        for size in [None, *sizes]
    }
    return Splits(dev, train)


# ------------------------------------------------------------------------------------- contestants
@dataclass
class Contestant:
    """What one row trains: an objective (the protocol of ``softprompt.train.objectives``), the optimiser
    recipe it trains with, the setup in a few words, and how what a user keeps is saved (-> its path)."""

    objective: nn.Module
    recipe: TrainSection
    setup: str
    save: Callable[[Path], Path]

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.objective.parameters() if p.requires_grad)


def recipe(budget: Budget, steps: int, **settings: Any) -> TrainSection:
    """The optimiser recipe of a row that is not softprompt's: ``settings`` over ``TrainSection``'s
    defaults, for ``steps`` steps on the budget's batches."""
    return TrainSection(max_steps=steps, batch_size=budget.batch_size, seed=budget.seed, **settings)


def softprompt_config(
    method: str,
    task: ClassificationTask,
    train_file: Path,
    budget: Budget,
    steps: int,
    *,
    prompt: dict[str, Any] | None = None,
    pooling: str = "model",
) -> RunConfig:
    """A ``softprompt train`` config that sets only ``method`` (and ``prompt``): the rest of the prompt
    and the optimiser are softprompt's per-method defaults (``presets.DEFAULTS``), resolved by the library."""
    return load_config(
        None,
        base={
            "model": {"pooling": pooling},
            "prompt": {"method": method, **(prompt or {})},
            "task": {
                "kind": "classification",
                "template": task.template,
                "label_column": task.label_column,
                "label_words": task.label_words,
                "max_length": task.max_length,
            },
            "data": {"train": str(train_file)},
            "train": {"max_steps": steps, "batch_size": budget.batch_size, "seed": budget.seed},
        },
    )


def softprompt_contestant(
    config: RunConfig, base: nn.Module, tokenizer: Any, readout: str | None = None
) -> Contestant:
    """The prompt and objective ``softprompt train`` builds from ``config``, on ``base``."""
    task = make_task(config.task)
    model = softprompt.wrap(
        base, prompt_config(config, task), tokenizer=tokenizer, **model_options(config, base)
    )
    return Contestant(
        make_objective(model, task, tokenizer),
        config.train,
        describe_softprompt(config, readout),
        lambda path: model.save(path.with_suffix(".safetensors")),
    )


def describe_softprompt(config: RunConfig, readout: str | None = None) -> str:
    """The resolved defaults in a few words: "20 tokens, text init, adamw 0.01 constant"."""
    prompt, train = config.prompt, config.train
    parts = [f"{prompt.num_virtual_tokens} tokens", f"{prompt.init} init"]
    if getattr(prompt, "encoder", None):
        parts.append(f"{prompt.encoder.upper()} {prompt.encoder_hidden_size}")
    if getattr(prompt, "projection_hidden_size", None):
        parts.append(f"MLP {prompt.projection_hidden_size}")
    if readout:
        parts.append(readout)
    parts.append(f"{train.optimizer} {train.lr:g} {train.schedule}")
    return ", ".join(parts)


def peft_contestant(
    method: str,
    base: nn.Module,
    tokenizer_dir: Path,
    task: ClassificationTask,
    label_ids: list[int],
    budget: Budget,
    steps: int,
) -> Contestant:
    """``method`` with peft's common setup (``PEFT_SETUPS``), trained with the answer token's causal-LM loss."""
    make_config, lr, setup = PEFT_SETUPS[method]
    init_text = " ".join(task.label_words.values())  # softprompt's text init starts from these too
    model = peft.get_peft_model(base, make_config(str(tokenizer_dir), init_text)).eval()

    def save(path: Path) -> Path:
        model.save_pretrained(path)
        return path

    return Contestant(
        PeftAnswerToken(model, label_ids),
        recipe(budget, steps, lr=lr, **PEFT_RECIPE),
        f"{setup}, adamw {lr:g} linear",
        save,
    )


class BareClassifier(HeadClassificationObjective):
    """A ``transformers`` sequence classifier as it is (full fine-tuning): its own logits (B, C).

    Right padding: a bare BERT counts absolute positions from column 0.
    """

    padding_side = "right"

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return super().scores(*right_aligned(input_ids, attention_mask))


class LinearProbe(HeadClassificationObjective):
    """A new linear classifier (B, H) -> (B, C) on the frozen encoder's mean-pooled last hidden states."""

    padding_side = "right"

    def __init__(self, base: nn.Module) -> None:
        super().__init__(base.requires_grad_(False))
        self.probe = nn.Linear(base.config.hidden_size, base.config.num_labels)

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        input_ids, attention_mask = right_aligned(input_ids, attention_mask)
        with torch.no_grad():  # nothing below the probe trains
            hidden = self.model.base_model(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
        return self.probe(mean_pool(hidden, attention_mask))  # (B, T, H) -> (B, H) -> (B, C)


def full_finetuning_contestant(base: nn.Module, budget: Budget, steps: int) -> Contestant:
    """Every weight trains: BERT's recipe (lr 5e-5, 10 % warm-up, linear decay, weight decay 0.01)."""

    def save(path: Path) -> Path:
        base.save_pretrained(path)
        return path

    return Contestant(
        BareClassifier(base.requires_grad_(True)),
        recipe(budget, steps, lr=5e-5, schedule="linear", warmup_steps=steps // 10, weight_decay=0.01),
        "all weights + head, adamw 5e-05 linear, 10 % warm-up",
        save,
    )


def linear_probe_contestant(base: nn.Module, budget: Budget, steps: int) -> Contestant:
    """A linear classifier on the frozen encoder's mean-pooled features (lr 1e-2, constant)."""
    objective = LinearProbe(base)

    def save(path: Path) -> Path:
        save_file(objective.probe.state_dict(), path.with_suffix(".safetensors"))
        return path.with_suffix(".safetensors")

    return Contestant(
        objective,
        recipe(budget, steps, lr=1e-2, schedule="constant"),
        "mean-pooled, adamw 0.01 constant",
        save,
    )


# ------------------------------------------------------------------------------------------- rows
@dataclass
class Row:
    """One trained (or zero-shot) model's dev scores and what it costs."""

    model: str
    task: str
    train_rows: int
    library: str
    method: str
    setup: str
    accuracy: float
    macro_f1: float
    dev_loss: float
    trainable_parameters: int
    base_parameters: int
    file_bytes: int
    steps: int
    train_seconds: float
    seconds: float


def folder_bytes(path: Path) -> int:
    """Bytes of a file, or of every file in a folder (an adapter's weights and its config)."""
    return (
        path.stat().st_size
        if path.is_file()
        else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    )


@dataclass
class Bench:
    """What the rows of one model and task share: the model's size, the dev rows, the step budget."""

    model: str
    task: str
    base_parameters: int
    dev: list[Encoded]
    steps: int
    pad_token_id: int
    budget: Budget

    def zero_shot(self, objective: nn.Module) -> Row:
        """The frozen model's row: ``objective`` scored on dev without training."""
        started = time.perf_counter()
        scores = self.score(objective)
        return self.row("zero-shot", "-", "label words only", scores, 0, 0, 0, 0.0, started)

    def trained(
        self,
        contestant: Contestant,
        train: Sequence[Encoded],
        library: str,
        method: str,
        path: Path,
        started: float,
    ) -> Row:
        """Train ``contestant`` ``steps`` steps on ``train``, score it once on dev, save it at ``path``;
        the row's ``seconds`` count from ``started`` (building, training, scoring, saving)."""
        seconds = train_steps(
            contestant.objective, contestant.recipe, train, steps=self.steps, pad_token_id=self.pad_token_id
        )
        scores = self.score(contestant.objective)
        saved = contestant.save(path)
        return self.row(
            library,
            method,
            contestant.setup,
            scores,
            len(train),
            contestant.trainable_parameters,
            folder_bytes(saved),
            seconds,
            started,
        )

    def score(self, objective: nn.Module) -> dict[str, float]:
        """Dev accuracy, macro-F1 and loss, as ``softprompt train`` scores a classifier."""
        return evaluate_predictions(
            objective,
            self.dev,
            batch_size=self.budget.eval_batch_size,
            pad_token_id=self.pad_token_id,
            metrics=METRICS,
        )

    def row(
        self,
        library: str,
        method: str,
        setup: str,
        scores: dict[str, float],
        train_rows: int,
        trainable: int,
        file_bytes: int,
        train_seconds: float,
        started: float,
    ) -> Row:
        row = Row(
            model=self.model,
            task=self.task,
            train_rows=train_rows,
            library=library,
            method=method,
            setup=setup,
            accuracy=scores["accuracy"],
            macro_f1=scores["macro_f1"],
            dev_loss=scores["loss"],
            trainable_parameters=trainable,
            base_parameters=self.base_parameters,
            file_bytes=file_bytes,
            steps=0 if library == "zero-shot" else self.steps,
            train_seconds=train_seconds,
            seconds=time.perf_counter() - started,
        )
        print(  # at once: a long run shows its progress
            f"  {row.model} {row.task} ({row.train_rows} rows) {row.library} {row.method}: "
            f"accuracy {row.accuracy:.1f}, {row.seconds:.0f} s",
            flush=True,
        )
        return row


def causal_rows(
    models: Models, budget: Budget, selection: Selection, splits: dict[str, Splits], work: Path
) -> list[Row]:
    """Zero-shot, softprompt and peft rows of every selected task on one shared SmolLM2."""
    base, tokenizer = models.causal()
    base.requires_grad_(False).eval()
    tokenizer_dir = work / "causal-tokenizer"  # peft's text init loads the tokenizer from a folder
    tokenizer.save_pretrained(tokenizer_dir)
    base_parameters = sum(p.numel() for p in base.parameters())
    rows: list[Row] = []
    for name in selection.tasks:
        task, steps = TASKS[name].classification(max_length=budget.max_length[name]), budget.steps[name]
        label_ids = task.label_token_ids(tokenizer)
        dev = encode_file(task, splits[name].dev, tokenizer)
        bench = Bench(models.causal_name, name, base_parameters, dev, steps, tokenizer.pad_token_id, budget)
        bare = SoftPromptModel(base, None, model_shape(base))  # the frozen model without a prompt
        rows.append(bench.zero_shot(ClassificationObjective(bare, label_ids)))
        for size, train_file in splits[name].train.items():
            train = encode_file(task, train_file, tokenizer)
            # the low-data column: prompt tuning only
            methods = [m for m in selection.methods if size is None or m == "prompt_tuning"]
            for method, library in itertools.product(methods, selection.libraries):
                started = time.perf_counter()
                set_seed(budget.seed)  # every row's prompt starts the same, whatever ran before it
                if library == "softprompt":
                    config = softprompt_config(method, task, train_file, budget, steps)
                    contestant = softprompt_contestant(config, base, tokenizer)
                else:
                    contestant = peft_contestant(method, base, tokenizer_dir, task, label_ids, budget, steps)
                path = work / f"{library}-{name}-{method}-{len(train)}"
                rows.append(bench.trained(contestant, train, library, method, path, started))
    return rows


# ------------------------------------------------------------------------------------------ encoder
# A MiniLM row's softprompt prompt: (library method, options beside the defaults, model.pooling, readout).
ENCODER_PROMPTS: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "deep_prompt": ("prefix_tuning", {"num_virtual_tokens": DEEP_PROMPT_TOKENS}, "model", "CLS head"),
    "deep_prompt_mean": (
        "prefix_tuning",
        {"num_virtual_tokens": DEEP_PROMPT_TOKENS},
        "mean",
        "mean-pooled head",
    ),
    "prompt_tuning": ("prompt_tuning", {}, "model", "CLS head"),
}


def encoder_rows(
    models: Models, budget: Budget, selection: Selection, splits: Splits, work: Path
) -> list[Row]:
    """Every selected encoder method on SST-2, at each training-set size; a new model (and head) per row."""
    base, tokenizer = models.encoder()
    task = TASKS["sst2"].classification("{sentence}", ENCODER_MAX_LENGTH)  # the sentence alone
    dev = encode_file(task, splits.dev, tokenizer)
    base_parameters, steps = sum(p.numel() for p in base.parameters()), budget.encoder_steps
    bench = Bench(models.encoder_name, "sst2", base_parameters, dev, steps, tokenizer.pad_token_id, budget)
    rows = []
    for train_file in splits.train.values():
        train = encode_file(task, train_file, tokenizer)
        for method in selection.encoder_methods:
            started = time.perf_counter()
            set_seed(budget.seed)  # the new head (and prompt) start the same in every row
            base, tokenizer = models.encoder()
            base.eval()
            if method in ENCODER_PROMPTS:
                library_method, prompt, pooling, readout = ENCODER_PROMPTS[method]
                config = softprompt_config(
                    library_method, task, train_file, budget, steps, prompt=prompt, pooling=pooling
                )
                contestant = softprompt_contestant(config, base, tokenizer, readout)
            elif method == "full_finetuning":
                contestant = full_finetuning_contestant(base, budget, steps)
            else:
                contestant = linear_probe_contestant(base, budget, steps)
            library = "softprompt" if method in ENCODER_PROMPTS else "transformers"
            path = work / f"encoder-{method}-{len(train)}"
            rows.append(bench.trained(contestant, train, library, method, path, started))
    return rows


# ------------------------------------------------------------------------------------ goals, tables
def main_rows(rows: Sequence[Row], model: str) -> list[Row]:
    """The rows trained on all of a task's training rows (not the low-data column)."""
    largest: dict[str, int] = {}
    for r in rows:
        if r.model == model:
            largest[r.task] = max(largest.get(r.task, 0), r.train_rows)
    return [r for r in rows if r.model == model and r.train_rows in (0, largest[r.task])]


def check_goals(rows: Sequence[Row], models: Models) -> list[dict]:
    """Issue 6's two quality goals, measured on the main (all-training-rows) rows."""
    goals = []
    causal = {(r.task, r.method, r.library): r for r in main_rows(rows, models.causal_name)}
    gaps = [
        causal[(task, method, "softprompt")].accuracy - causal[(task, method, "peft")].accuracy
        for task, method, library in causal
        if library == "softprompt" and (task, method, "peft") in causal
    ]
    if gaps:
        mean = sum(gaps) / len(gaps)
        goals.append(
            {
                "goal": "softprompt defaults beat the peft setups on average (accuracy points)",
                "target": ">= +3.0",
                "measured": round(mean, 2),
                "pairs": len(gaps),
                "met": mean >= 3.0,
            }
        )
    encoder = {r.method: r for r in main_rows(rows, models.encoder_name)}
    for method, readout in (
        ("deep_prompt", "the model's CLS head"),
        ("deep_prompt_mean", "a mean-pooled head"),
    ):
        if method not in encoder or "full_finetuning" not in encoder:
            continue
        deep, full = encoder[method], encoder["full_finetuning"]
        share = 100 * deep.trainable_parameters / deep.base_parameters
        gap = deep.accuracy - full.accuracy
        goals.append(
            {
                "goal": f"MiniLM deep prompts ({readout}) within 2 points of full fine-tuning with < 0.1 % "
                "trainable parameters",
                "target": "gap >= -2.0, share < 0.1 %",
                "measured": f"gap {gap:+.2f}, share {share:.3f} %",
                "met": gap >= -2.0 and share < 0.1,
            }
        )
    return goals


def size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.1f} MiB"


def tables(rows: Sequence[Row], goals: Sequence[dict], models: Models) -> str:
    """The markdown tables RESULTS.md shows."""
    out = []
    causal = main_rows(rows, models.causal_name)
    if causal:
        out += [
            f"### {models.causal_name}: dev accuracy after a fixed budget",
            "",
            markdown_table(
                [
                    "task",
                    "library",
                    "method",
                    "setup",
                    "accuracy",
                    "macro-F1",
                    "trainable",
                    "file",
                    "steps",
                    "time",
                ],
                [
                    [
                        r.task,
                        r.library,
                        r.method,
                        r.setup,
                        f"{r.accuracy:.1f}",
                        f"{r.macro_f1:.1f}",
                        f"{r.trainable_parameters:,}",
                        size(r.file_bytes),
                        r.steps,
                        f"{r.seconds:.0f} s",
                    ]
                    for r in causal
                ],
            ),
            "",
            comparison_table(causal),
            "",
        ]
    low = [
        r for r in rows if r.model == models.causal_name and r.method == "prompt_tuning" and r.task == "sst2"
    ]
    if len({r.train_rows for r in low}) > 1:
        out += [
            f"### {models.causal_name}, SST-2 prompt tuning by training rows",
            "",
            by_rows_table(low, "library"),
            "",
        ]
    encoder = [r for r in rows if r.model == models.encoder_name]
    if encoder:
        out += [
            f"### {models.encoder_name} on SST-2, by training rows",
            "",
            by_rows_table(encoder, "method"),
            "",
        ]
    if goals:
        out += [
            "### Goals",
            "",
            markdown_table(
                ["goal", "target", "measured", "met"],
                [[g["goal"], g["target"], g["measured"], "yes" if g["met"] else "no"] for g in goals],
            ),
        ]
    return "\n".join(out)


def comparison_table(rows: Sequence[Row]) -> str:
    """softprompt vs peft accuracy per method and task, with the difference."""
    by = {(r.task, r.method, r.library): r.accuracy for r in rows}
    tasks = list(dict.fromkeys(r.task for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows if r.library != "zero-shot"))
    body = []
    for method in methods:
        cells, gaps = [method], []
        for task in tasks:
            sp, pf = by.get((task, method, "softprompt")), by.get((task, method, "peft"))
            cells.append(" / ".join("-" if v is None else f"{v:.1f}" for v in (sp, pf)))
            if sp is not None and pf is not None:
                gaps.append(sp - pf)
        cells.append(f"{sum(gaps) / len(gaps):+.1f}" if gaps else "-")
        body.append(cells)
    zero = [
        "zero-shot",
        *[f"{by[(t, '-', 'zero-shot')]:.1f}" if (t, "-", "zero-shot") in by else "-" for t in tasks],
        "",
    ]
    headers = ["method (softprompt / peft)", *tasks, "mean difference"]
    return markdown_table(headers, [zero, *body])


def by_rows_table(rows: Sequence[Row], key: str) -> str:
    """Accuracy by number of training rows, one line per ``key`` (and setup), with size and share."""
    sizes = sorted({r.train_rows for r in rows})
    lines: dict[tuple, dict[int, float]] = {}
    costs: dict[tuple, Row] = {}
    for r in rows:
        line = (r.library, r.method) if key == "library" else (r.method,)
        lines.setdefault(line, {})[r.train_rows] = r.accuracy
        costs[line] = r
    body = []
    for line, scores in lines.items():
        r = costs[line]
        share = 100 * r.trainable_parameters / r.base_parameters
        body.append(
            [
                *line,
                r.setup,
                f"{r.trainable_parameters:,} ({share:.3g} %)",
                size(r.file_bytes),
                *[f"{scores[s]:.1f}" if s in scores else "-" for s in sizes],
            ]
        )
    keys = ["library", "method"] if key == "library" else ["method"]
    return markdown_table([*keys, "setup", "trainable", "file", *[f"{s:,} rows" for s in sizes]], body)


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Learning quality: softprompt defaults vs peft on SmolLM2 (SST-2, RTE, BoolQ), "
        "MiniLM deep prompts vs full fine-tuning, and a low-data column; tables + JSON.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny random models, a few rows and steps (the test)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON goes")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared data folder")
    parser.add_argument("--tasks", default=",".join(TASKS), help="SmolLM2 tasks, comma-separated")
    parser.add_argument("--methods", default=",".join(CAUSAL_METHODS), help="SmolLM2 methods")
    parser.add_argument("--libraries", default=",".join(LIBRARIES), help="softprompt and/or peft")
    parser.add_argument("--encoder-methods", default=",".join(ENCODER_METHODS), help="MiniLM rows")
    parser.add_argument("--skip-causal", action="store_true", help="no SmolLM2 rows")
    parser.add_argument("--skip-encoder", action="store_true", help="no MiniLM rows")
    parser.add_argument(
        "--low-data", help="SST-2 training-row counts besides all (both models), e.g. 32,256; 'none' for none"
    )
    parser.add_argument(
        "--steps", type=int, help="SmolLM2 steps for every task (default: the budget's per task)"
    )
    parser.add_argument("--encoder-steps", type=int, help="MiniLM steps (default: the budget's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data order, subsets and inits")
    return parser.parse_args(argv)


def _names(text: str, known: Sequence[str], flag: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return names


def configure(args: argparse.Namespace) -> tuple[Budget, Selection]:
    """The budget (full or quick, with the flags' overrides) and the selected rows."""
    budget = QUICK if args.quick else FULL
    changes: dict[str, Any] = {"seed": args.seed}
    if args.steps is not None:
        changes["steps"] = dict.fromkeys(budget.steps, args.steps)
    if args.encoder_steps is not None:
        changes["encoder_steps"] = args.encoder_steps
    if args.low_data is not None:
        sizes = () if args.low_data == "none" else tuple(int(n) for n in args.low_data.split(","))
        changes["low_data"] = changes["encoder_low_data"] = sizes
    selection = Selection(
        tasks=_names(args.tasks, list(TASKS), "--tasks"),
        methods=_names(args.methods, CAUSAL_METHODS, "--methods"),
        libraries=_names(args.libraries, LIBRARIES, "--libraries"),
        encoder_methods=_names(args.encoder_methods, ENCODER_METHODS, "--encoder-methods"),
        causal=not args.skip_causal,
        encoder=not args.skip_encoder,
    )
    return replace(budget, **changes), selection


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    budget, selection = configure(args)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    machine = machine_info()
    started = time.perf_counter()
    models = tiny_models() if args.quick else real_models()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if selection.causal:
            splits = {
                name: task_splits(
                    name,
                    budget.dev_rows[name],
                    budget.low_data if name == "sst2" else (),
                    budget,
                    args.data,
                    work,
                )
                for name in selection.tasks
            }
            rows += causal_rows(models, budget, selection, splits, work)
        if selection.encoder:
            sst2 = task_splits(
                "sst2", budget.encoder_dev_rows, budget.encoder_low_data, budget, args.data, work
            )
            rows += encoder_rows(models, budget, selection, sst2, work)
    goals = check_goals(rows, models)
    print()
    print(tables(rows, goals, models))
    result = {
        "date": machine["date"],
        "machine": machine,
        "elapsed_seconds": round(time.perf_counter() - started, 1),
        "models": {"causal": models.causal_name, "encoder": models.encoder_name},
        "settings": {
            "budget": asdict(budget),
            "selection": asdict(selection),
            "tasks": {name: asdict(task) for name, task in TASKS.items()},
            "softprompt_defaults": {name: asdict(preset) for name, preset in DEFAULTS.items()},
            "peft_setups": {name: {"lr": lr, "setup": setup} for name, (_, lr, setup) in PEFT_SETUPS.items()},
            "peft_recipe": PEFT_RECIPE,
            "deep_prompt_tokens": DEEP_PROMPT_TOKENS,
            "encoder_max_length": ENCODER_MAX_LENGTH,
            "quick": args.quick,
            "command": "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        },
        "rows": [asdict(r) for r in rows],
        "goals": goals,
    }
    path = write_json(args.out, result)
    print(f"\nwrote {path} ({result['elapsed_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
