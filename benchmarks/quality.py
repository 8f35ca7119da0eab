"""Learning quality (issue 6): softprompt's defaults against peft's common setups, and an encoder's deep
prompts against full fine-tuning, at a fixed seed and a step budget that fits a CPU.

Every trained row of one task sees the same training batches in the same order (softprompt's seeded,
length-grouped batch order, batch 8, seed 0) for the same number of steps, and is scored once, after
its last step, on the same dev rows (no checkpoint picked on dev).

**SmolLM2-135M-Instruct**, classification by label words: each row is its template, and the class is
the label word whose first token scores highest at the position after it.

- ``zero-shot``: the frozen model without a prompt.
- ``softprompt``: each method with softprompt's per-method defaults (``presets.DEFAULTS``: nothing but
  the method is set), trained by the library (``softprompt.train.train``, one shared base model).
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
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # one progress bar per run would bury the tables

import datasets  # noqa: E402
import peft  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from _common import machine_info, markdown_table, set_threads, write_json  # noqa: E402
from torch import nn  # noqa: E402

import softprompt  # noqa: E402
from softprompt.data import ClassificationTask, Encoded, collate, encode_dataset, load_rows  # noqa: E402
from softprompt.data.batching import LengthGroupedSampler  # noqa: E402
from softprompt.methods import METHODS  # noqa: E402
from softprompt.metrics import compute_metrics  # noqa: E402
from softprompt.models.encoder import mean_pool  # noqa: E402
from softprompt.train import load_config, train  # noqa: E402
from softprompt.train.config import RunConfig, TrainSection  # noqa: E402
from softprompt.train.objectives import last_token_index  # noqa: E402
from softprompt.train.optim import make_optimizer, make_scheduler  # noqa: E402
from softprompt.train.presets import DEFAULTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
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
PROMPTED = ("deep_prompt", "deep_prompt_mean", "prompt_tuning")
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
    tokenizer = transformers.GPT2Tokenizer.from_pretrained(DATA / "tokenizers" / "gpt2")
    tokenizer.pad_token = tokenizer.eos_token

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


def encode(task: ClassificationTask, path: Path, tokenizer: Any) -> list[Encoded]:
    """The rows of ``path`` tokenized exactly as ``softprompt.train`` tokenizes them."""
    examples, _ = encode_dataset(task, load_rows(path), tokenizer, where=str(path))
    return examples


def training_batches(
    examples: Sequence[Encoded], budget: Budget, pad_token_id: int, padding_side: str
) -> Iterator[dict[str, torch.Tensor]]:
    """The batches ``softprompt.train`` draws, epoch after epoch: seeded, length-grouped, full batches."""
    sampler = LengthGroupedSampler(
        [len(ex.input_ids) for ex in examples], budget.batch_size, seed=budget.seed, drop_last=True
    )
    epoch = 0
    while True:
        for indices in sampler.epoch_batches(epoch):
            yield collate([examples[i] for i in indices], pad_token_id, padding_side)
        epoch += 1


# ---------------------------------------------------------------------------------- train and score
def fit_steps(
    loss_fn: Callable[[dict], torch.Tensor],
    params: list[nn.Parameter],
    recipe: TrainSection,
    batches: Iterator[dict],
    steps: int,
) -> float:
    """``steps`` optimiser steps with the recipe's optimiser, schedule and clipping; returns the seconds."""
    optimizer = make_optimizer(params, recipe)
    scheduler = make_scheduler(optimizer, recipe, steps)
    started = time.perf_counter()
    for batch in islice(batches, steps):
        loss_fn(batch).backward()
        if recipe.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


@torch.no_grad()
def evaluate(
    scores_fn: Callable[[dict], torch.Tensor], examples: Sequence[Encoded], batch_size: int, pad_token_id: int
) -> dict[str, float]:
    """Accuracy and macro-F1 (percentages) of the argmax of ``scores_fn`` (B, C), right-padded batches."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))  # little padding
    predicted: dict[int, int] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate([examples[i] for i in chunk], pad_token_id, "right")
        predicted.update(zip(chunk, scores_fn(batch).argmax(-1).tolist(), strict=True))
    return compute_metrics(
        METRICS, [predicted[i] for i in range(len(examples))], [ex.label for ex in examples]
    )


def answer_logits(model: nn.Module, head: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Whole-vocabulary logits (B, V) at each row's answer position, for a bare or a peft causal LM.

    Only the answer position is projected onto the vocabulary (peft's loss there is the same
    number); the rows are right-padded, so peft's virtual tokens sit right before each row's text.
    """
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        output_hidden_states=True,
        logits_to_keep=1,
    )
    hidden = out.hidden_states[-1]  # (B, P + T, H) after the final norm; P virtual tokens lead, or none
    offset = hidden.shape[1] - batch["input_ids"].shape[1]
    rows = torch.arange(hidden.shape[0])
    return head(hidden[rows, offset + last_token_index(batch["attention_mask"])])


def folder_bytes(path: Path) -> int:
    """Bytes of a file, or of every file in a folder (an adapter's weights and its config)."""
    return (
        path.stat().st_size
        if path.is_file()
        else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
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
    trainable_parameters: int
    base_parameters: int
    file_bytes: int
    steps: int
    train_seconds: float
    seconds: float


@dataclass
class CausalContext:
    """What every SmolLM2 row of one task shares."""

    task: Task
    budget: Budget
    base: nn.Module
    tokenizer: Any
    tokenizer_dir: Path
    dev_file: Path
    dev: list[Encoded]
    label_ids: torch.Tensor  # (C,) first token of each label word
    model_name: str
    work: Path

    @property
    def steps(self) -> int:
        return self.budget.steps[self.task.name]

    @property
    def max_length(self) -> int:
        return self.budget.max_length[self.task.name]

    @property
    def base_parameters(self) -> int:
        return sum(p.numel() for p in self.base.parameters())

    def row(self, train_rows: int, library: str, method: str, setup: str, scores: dict, **cost) -> Row:
        return Row(
            self.model_name,
            self.task.name,
            train_rows,
            library,
            method,
            setup,
            scores["accuracy"],
            scores["macro_f1"],
            base_parameters=self.base_parameters,
            steps=self.steps if library != "zero-shot" else 0,
            **cost,
        )


def zero_shot_row(ctx: CausalContext) -> Row:
    """The frozen model's dev scores without any prompt."""
    started = time.perf_counter()
    head = ctx.base.get_output_embeddings()
    scores = evaluate(
        lambda b: answer_logits(ctx.base, head, b)[:, ctx.label_ids],
        ctx.dev,
        ctx.budget.eval_batch_size,
        ctx.tokenizer.pad_token_id,
    )
    seconds = time.perf_counter() - started
    return ctx.row(
        0,
        "zero-shot",
        "-",
        "label words only",
        scores,
        trainable_parameters=0,
        file_bytes=0,
        train_seconds=0.0,
        seconds=seconds,
    )


def softprompt_row(ctx: CausalContext, method: str, train_file: Path, train_rows: int) -> Row:
    """``method`` with softprompt's defaults, trained and scored by ``softprompt.train.train``."""
    started = time.perf_counter()
    budget = ctx.budget
    raw = {
        "prompt": {"method": method},  # everything else: presets.DEFAULTS[method]
        "task": {
            "kind": "classification",
            "template": ctx.task.template,
            "label_words": ctx.task.label_words,
            "max_length": ctx.max_length,
        },
        "data": {"train": str(train_file), "dev": str(ctx.dev_file)},
        "train": {
            "max_steps": ctx.steps,
            "batch_size": budget.batch_size,
            "seed": budget.seed,
            "eval_every": None,  # scored once, after the last step, like every other row
            "log_every": ctx.steps,
        },
        "eval": {"batch_size": budget.eval_batch_size, "zero_shot": False},
        "output": {
            "dir": str(ctx.work / f"softprompt-{ctx.task.name}-{method}-{train_rows}"),
            "tensorboard": False,
            "plot": False,
            "overwrite": True,
        },
    }
    config = load_config(None, base=raw)
    summary = train(config, base=(ctx.base, ctx.tokenizer))
    return ctx.row(
        train_rows,
        "softprompt",
        method,
        describe_softprompt(config),
        summary.dev,
        trainable_parameters=summary.trainable_parameters,
        file_bytes=summary.adapter_bytes,
        train_seconds=summary.train_seconds,
        seconds=time.perf_counter() - started,
    )


def describe_softprompt(config: RunConfig) -> str:
    """The resolved defaults in a few words: "20 tokens, text init, adamw 0.01 constant"."""
    prompt, recipe = config.prompt, config.train
    parts = [f"{prompt.num_virtual_tokens} tokens", f"{prompt.init} init"]
    if getattr(prompt, "encoder", None):
        parts.append(f"{prompt.encoder.upper()} {prompt.encoder_hidden_size}")
    if getattr(prompt, "projection_hidden_size", None):
        parts.append(f"MLP {prompt.projection_hidden_size}")
    parts.append(f"{recipe.optimizer} {recipe.lr:g} {recipe.schedule}")
    return ", ".join(parts)


def peft_row(ctx: CausalContext, method: str, train: list[Encoded], train_rows: int) -> Row:
    """``method`` with peft's common setup (see ``PEFT_SETUPS``), trained on the same batches."""
    started = time.perf_counter()
    make_config, lr, setup = PEFT_SETUPS[method]
    init_text = " ".join(ctx.task.label_words.values())  # softprompt's text init starts from these too
    torch.manual_seed(ctx.budget.seed)
    model = peft.get_peft_model(ctx.base, make_config(str(ctx.tokenizer_dir), init_text)).eval()
    head = ctx.base.get_output_embeddings()
    targets = ctx.label_ids

    def loss(batch: dict) -> torch.Tensor:  # the causal-LM loss of the answer token
        return F.cross_entropy(answer_logits(model, head, batch), targets[batch["label"]])

    params = [p for p in model.parameters() if p.requires_grad]
    recipe = TrainSection(lr=lr, max_steps=ctx.steps, **PEFT_RECIPE)
    pad = ctx.tokenizer.pad_token_id
    seconds = fit_steps(loss, params, recipe, training_batches(train, ctx.budget, pad, "right"), ctx.steps)
    scores = evaluate(
        lambda b: answer_logits(model, head, b)[:, targets], ctx.dev, ctx.budget.eval_batch_size, pad
    )
    folder = ctx.work / f"peft-{ctx.task.name}-{method}-{train_rows}"
    model.save_pretrained(folder)
    return ctx.row(
        train_rows,
        "peft",
        method,
        f"{setup}, adamw {lr:g} linear",
        scores,
        trainable_parameters=sum(p.numel() for p in params),
        file_bytes=folder_bytes(folder),
        train_seconds=seconds,
        seconds=time.perf_counter() - started,
    )


def causal_rows(
    models: Models, budget: Budget, selection: Selection, splits: dict[str, Splits], work: Path
) -> list[Row]:
    """Zero-shot, softprompt and peft rows of every selected task on one shared SmolLM2."""
    base, tokenizer = models.causal()
    base.requires_grad_(False).eval()
    tokenizer_dir = work / "causal-tokenizer"  # peft's text init loads the tokenizer from a folder
    tokenizer.save_pretrained(tokenizer_dir)
    rows: list[Row] = []
    for name in selection.tasks:
        task = TASKS[name]
        classification = task.classification(max_length=budget.max_length[name])
        ctx = CausalContext(
            task,
            budget,
            base,
            tokenizer,
            tokenizer_dir,
            splits[name].dev,
            encode(classification, splits[name].dev, tokenizer),
            torch.tensor(classification.label_token_ids(tokenizer)),
            models.causal_name,
            work,
        )
        rows.append(report(zero_shot_row(ctx)))
        for size, train_file in splits[name].train.items():
            # the low-data column: prompt tuning only
            methods = (
                selection.methods if size is None else [m for m in selection.methods if m == "prompt_tuning"]
            )
            train = encode(classification, train_file, tokenizer)
            for method in methods:
                if "softprompt" in selection.libraries:
                    rows.append(report(softprompt_row(ctx, method, train_file, len(train))))
                if "peft" in selection.libraries:
                    rows.append(report(peft_row(ctx, method, train, len(train))))
    return rows


def report(row: Row) -> Row:
    """Print a finished row at once: a long run shows its progress."""
    print(
        f"  {row.model} {row.task} ({row.train_rows} rows) {row.library} {row.method}: "
        f"accuracy {row.accuracy:.1f}, {row.seconds:.0f} s",
        flush=True,
    )
    return row


# ------------------------------------------------------------------------------------------ encoder
@dataclass
class Contestant:
    """An encoder row's model: class scores (B, C) of a batch, what trains, how, and how it is saved."""

    scores: Callable[[dict], torch.Tensor]
    params: list[nn.Parameter]
    recipe: dict[str, Any]
    setup: str
    save: Callable[[Path], Path]


def _inputs(batch: dict) -> dict:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def prompt_config(method: str) -> tuple[Any, dict]:
    """softprompt's default prompt for an encoder row (deep prompts: prefix tuning, shortened) and its recipe."""
    library_method = "prompt_tuning" if method == "prompt_tuning" else "prefix_tuning"
    defaults = DEFAULTS[library_method]
    options = dict(defaults.prompt)
    if library_method == "prefix_tuning":
        options["num_virtual_tokens"] = DEEP_PROMPT_TOKENS  # the goal's < 0.1 % of the parameters
    if options.get("init") == "text":
        options["init_text"] = " ".join(TASKS["sst2"].label_words.values())
    return METHODS[library_method].config(**options), defaults.train


def prompted_contestant(base: nn.Module, tokenizer: Any, method: str) -> Contestant:
    """Deep prompts or prompt tuning with softprompt's defaults, read by the model's own classifier
    (``[CLS]`` through BERT's pooler, as peft and P-tuning v2 read it)."""
    config, recipe = prompt_config(method)
    model = softprompt.wrap(base, config, tokenizer=tokenizer)
    return Contestant(
        lambda b: model(**_inputs(b)).logits,
        [p for p in model.parameters() if p.requires_grad],
        recipe,
        f"{config.num_virtual_tokens} tokens, {config.init} init, CLS head, adamw {recipe['lr']:g} constant",
        lambda path: model.save(path.with_suffix(".safetensors")),
    )


def mean_pooled_contestant(base: nn.Module, tokenizer: Any, method: str) -> Contestant:
    """Deep prompts read by a new linear head over the mean of the real tokens' hidden states
    (``pooling="mean"``: the sentence embedding MiniLM was trained to give, as the linear probe)."""
    config, recipe = prompt_config(method)
    model = softprompt.wrap(base, config, tokenizer=tokenizer, pooling="mean")
    return Contestant(
        lambda b: model(**_inputs(b)).logits,
        [p for p in model.parameters() if p.requires_grad],
        recipe,
        f"{config.num_virtual_tokens} tokens, {config.init} init, mean-pooled head, adamw {recipe['lr']:g} constant",
        lambda path: model.save(path.with_suffix(".safetensors")),
    )


def full_finetuning_contestant(base: nn.Module, steps: int) -> Contestant:
    """Every weight trains: BERT's recipe (lr 5e-5, 10 % warm-up, linear decay, weight decay 0.01)."""
    base.requires_grad_(True)

    def save(path: Path) -> Path:
        base.save_pretrained(path)
        return path

    return Contestant(
        lambda b: base(**_inputs(b)).logits,
        list(base.parameters()),
        {"lr": 5e-5, "schedule": "linear", "warmup_steps": steps // 10, "weight_decay": 0.01},
        "all weights + head, adamw 5e-05 linear, 10 % warm-up",
        save,
    )


def linear_probe_contestant(base: nn.Module) -> Contestant:
    """A linear classifier on the frozen encoder's mean-pooled last hidden states."""
    from safetensors.torch import save_file

    backbone = base.base_model.requires_grad_(False)
    probe = nn.Linear(backbone.config.hidden_size, 2)

    def scores(batch: dict) -> torch.Tensor:
        with torch.no_grad():
            features = mean_pool(backbone(**_inputs(batch)).last_hidden_state, batch["attention_mask"])
        return probe(features)

    def save(path: Path) -> Path:
        save_file(probe.state_dict(), path.with_suffix(".safetensors"))
        return path.with_suffix(".safetensors")

    return Contestant(
        scores,
        list(probe.parameters()),
        {"lr": 1e-2, "schedule": "constant"},
        "mean-pooled, adamw 0.01 constant",
        save,
    )


def encoder_row(
    models: Models, method: str, train: list[Encoded], dev: list[Encoded], budget: Budget, work: Path
) -> Row:
    """One MiniLM row: build, train ``encoder_steps`` steps on SST-2, score on dev, save."""
    started = time.perf_counter()
    torch.manual_seed(budget.seed)  # the new head starts the same in every row
    base, tokenizer = models.encoder()
    base.eval()
    base_parameters = sum(p.numel() for p in base.parameters())
    if method == "deep_prompt_mean":
        contestant = mean_pooled_contestant(base, tokenizer, method)
    elif method in PROMPTED:
        contestant = prompted_contestant(base, tokenizer, method)
    elif method == "full_finetuning":
        contestant = full_finetuning_contestant(base, budget.encoder_steps)
    else:
        contestant = linear_probe_contestant(base)
    recipe = TrainSection(**{**contestant.recipe, "max_steps": budget.encoder_steps})
    pad = tokenizer.pad_token_id

    def loss(batch: dict) -> torch.Tensor:
        return F.cross_entropy(contestant.scores(batch), batch["label"])

    batches = training_batches(train, budget, pad, "right")
    seconds = fit_steps(loss, contestant.params, recipe, batches, budget.encoder_steps)
    scores = evaluate(contestant.scores, dev, budget.eval_batch_size, pad)
    saved = contestant.save(work / f"encoder-{method}-{len(train)}")
    return Row(
        models.encoder_name,
        "sst2",
        len(train),
        "softprompt" if method in PROMPTED else "transformers",
        method,
        contestant.setup,
        scores["accuracy"],
        scores["macro_f1"],
        trainable_parameters=sum(p.numel() for p in contestant.params),
        base_parameters=base_parameters,
        file_bytes=folder_bytes(saved),
        steps=budget.encoder_steps,
        train_seconds=seconds,
        seconds=time.perf_counter() - started,
    )


def encoder_rows(
    models: Models, budget: Budget, selection: Selection, splits: Splits, work: Path
) -> list[Row]:
    """Every selected encoder method on SST-2, at each training-set size."""
    _, tokenizer = models.encoder()
    task = TASKS["sst2"].classification("{sentence}", ENCODER_MAX_LENGTH)  # the sentence alone
    dev = encode(task, splits.dev, tokenizer)
    rows = []
    for train_file in splits.train.values():
        train = encode(task, train_file, tokenizer)
        for method in selection.encoder_methods:
            rows.append(report(encoder_row(models, method, train, dev, budget, work)))
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
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
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
