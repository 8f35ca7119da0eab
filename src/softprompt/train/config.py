"""The run config: a YAML file validated by pydantic, with a docstring under every field.

Sections: ``model`` (the frozen base), ``prompt`` (the method and its options — the fields of the
method's config dataclass, so a new method needs no change here), ``task`` (classification by
label words, or generation), ``data``, ``train``, ``eval`` and ``output``; and ``preset``, a
paper recipe that fills whatever ``prompt`` and ``train`` leave out (without one, softprompt's
measured defaults for the method do; see :mod:`presets`).

Relative paths inside a config file (data files, ``prompt.init_file``) are relative to that file;
paths given with ``--set`` and ``output.dir`` are relative to the current folder. Every error names
its key: ``train.lr: Input should be a valid number``.

Examples:
    >>> from softprompt.cli import example_config_path         # the built-in example's config
    >>> config = load_config(example_config_path(), ["train.max_steps=100"])
    >>> config.train.optimizer, config.train.max_steps, config.prompt.num_virtual_tokens
    ('adamw', 100, 20)
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from softprompt.data import (
    SUPPORTED_FORMATS,
    ClassificationTask,
    GenerationTask,
    MultiLabelTask,
    MultipleChoiceTask,
    RegressionTask,
    TextFormat,
    TokenClassificationTask,
)
from softprompt.methods import METHODS, SoftPromptConfig
from softprompt.metrics import ROUGE_TYPES
from softprompt.train.presets import PRESETS, apply_preset

# Keys whose relative paths are resolved against the config file's folder.
FILE_KEYS = (
    ("data", "train"),
    ("data", "dev"),
    ("data", "test"),
    ("data", "data_files"),
    ("prompt", "init_file"),
)


class ConfigError(ValueError):
    """A run config that does not load or validate; each line of the message names a key."""


class Section(BaseModel):
    """A config section: unknown keys are errors, field docstrings are the documentation."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


# ---------------------------------------------------------------------------------------- model
class ModelSection(Section):
    name_or_path: str = "smollm2-135m-instruct"
    """The frozen model: a built-in alias (smollm2-135m-instruct, all-minilm-l6-v2), a local folder, or
    a hub name. Causal LMs classify by label words; encoders (BERT...) through a new classifier head."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Dtype of the frozen model; the prompt, a new head and the optimiser state always train in float32.
    "auto": bfloat16 where the hardware computes it natively (CUDA GPUs with bf16, CPUs with AVX-512
    BF16 or AMX), float32 elsewhere and for encoders whose new head trains (see softprompt.precision)."""

    quantization: Literal["int8", "nf4"] | None = None
    """Store the frozen model's linear layers in 8 bits ("int8") or 4 bits ("nf4", QLoRA's format) with
    bitsandbytes (softprompt.quantization); null keeps them in model.dtype. Needs `pip install bitsandbytes`."""

    pooling: Literal["model", "mean"] = "model"
    """Encoders only: read the sequence at the first position with the model's own head ("model"),
    or the mean of the tokens with a new linear head ("mean": for mean-pooling sentence encoders)."""


# --------------------------------------------------------------------------------------- prompt
class PromptSectionBase(Section):
    """The method's own config fields; ``to_config`` builds the method's config dataclass."""

    def to_config(self) -> SoftPromptConfig:
        """The method's config dataclass (its own checks run here)."""
        options = self.model_dump(exclude={"method"})
        return METHODS[self.method].config(**options)

    @field_validator("init_file", check_fields=False)
    @classmethod
    def _file_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).exists():
            raise ValueError(f"file not found: {value}")
        return value

    @model_validator(mode="after")
    def _check(self):
        checked = self
        # init "text" without init_text is allowed here: a classification task fills in its labels.
        if getattr(self, "init", None) == "text" and not getattr(self, "init_text", None):
            checked = self.model_copy(update={"init_text": "label words"})
        checked.to_config()
        return self


def _attribute_docs(cls: type) -> dict[str, str]:
    """Field descriptions from the ``Attributes:`` sections of a dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        text = klass.__doc__ or ""
        if "Attributes:" not in text:
            continue
        section = text.split("Attributes:", 1)[1]
        for match in re.finditer(r"^\s+(\w+): (.*(?:\n\s{12,}.*)*)", section, re.MULTILINE):
            docs[match.group(1)] = " ".join(match.group(2).split())
    return docs


def _prompt_section(name: str, config_cls: type[SoftPromptConfig]) -> type[PromptSectionBase]:
    hints = typing.get_type_hints(config_cls)
    docs = _attribute_docs(config_cls)
    fields: dict[str, Any] = {
        "method": (Literal[name], Field(description=f"The method: one of {', '.join(METHODS)}.")),
    }
    for f in dataclasses.fields(config_cls):
        fields[f.name] = (hints[f.name], Field(default=f.default, description=docs.get(f.name)))
    camel = "".join(part.title() for part in name.split("_"))
    return create_model(f"{camel}Section", __base__=PromptSectionBase, **fields)


PROMPT_SECTIONS: dict[str, type[PromptSectionBase]] = {
    name: _prompt_section(name, method.config) for name, method in METHODS.items()
}
PromptSection = Annotated[
    typing.Union[tuple(PROMPT_SECTIONS.values())],  # noqa: UP007 (a runtime tuple of classes)
    Field(discriminator="method"),
]


# ----------------------------------------------------------------------------------------- task
class TextTaskSection(Section):
    """Options of tasks whose text a language model reads: plain, or in the tokenizer's chat template."""

    chat_template: bool = False
    """Give the template's text to the model as a user's message in the tokenizer's chat template (as
    instruct models were tuned), and the answer (label word, target) as the assistant's reply."""

    system_message: str | None = None
    """With chat_template: a system message before the user's; null: the template's own default."""

    @model_validator(mode="after")
    def _check_format(self):
        self.text_format()  # system_message without chat_template is refused here
        return self

    def text_format(self) -> TextFormat:
        """The data layer's :class:`~softprompt.data.TextFormat` of these options."""
        return TextFormat(chat=self.chat_template, system_message=self.system_message)


class ClassificationSection(TextTaskSection):
    kind: Literal["classification"]
    """Classify: by label words on causal LMs and encoder-decoders (the loss and the prediction use
    only the label words' logits), by a new classifier head with one output per class on encoders."""

    template: str
    """Turns a row into text ending where the answer goes, e.g. "Review: {sentence}\\nSentiment:"."""

    label_column: str = "label"
    """The column holding each row's label value."""

    label_words: dict[str | int, str] | list[str]
    """Label value -> label word ({0: negative, 1: positive}), or a list of words for labels 0..n-1.
    Each word's first token scores its class (with a leading space after plain text, as written at
    the start of a chat reply); encoders use the classes' order (and the words as the text init of
    input-space prompts)."""

    max_length: int = Field(256, gt=0)
    """Longest input in tokens; longer rows keep their end (where the answer goes), with a warning."""

    metrics: list[Literal["accuracy", "macro_f1", "micro_f1"]] = ["accuracy", "macro_f1"]
    """Dev/test scores to report (percentages)."""

    def to_task(self) -> ClassificationTask:
        """The data layer's task for this section."""
        return ClassificationTask(
            self.template, self.label_column, self.label_words, self.max_length, self.text_format()
        )


class MultiLabelSection(Section):
    kind: Literal["multi_label"]
    """Any number of labels per row, one sigmoid output per label of a new classifier head (encoders, causal LMs)."""

    template: str
    """Turns a row into the text the encoder reads, e.g. "{text}"."""

    label_column: str = "labels"
    """The column holding each row's labels: a list of label names (or indices into labels)."""

    labels: list[str | int]
    """The label names, in the head's output order; they also init text prompts ("init: text")."""

    max_length: int = Field(256, gt=0)
    """Longest input in tokens; longer rows keep their start, with a warning."""

    metrics: list[Literal["micro_f1", "macro_f1", "accuracy"]] = ["micro_f1", "macro_f1", "accuracy"]
    """Dev/test scores to report (percentages): F1 over all (row, label) decisions, the mean of the
    labels' F1, and the share of rows whose label set is exactly right."""

    def to_task(self) -> MultiLabelTask:
        """The data layer's task for this section."""
        return MultiLabelTask(self.template, self.label_column, self.labels, self.max_length)


class RegressionSection(Section):
    kind: Literal["regression"]
    """A number per row, the single output of a new head (encoders, causal LMs), trained on the squared error."""

    template: str
    """Turns a row into the text the encoder reads, e.g. "{sentence1} | {sentence2}"."""

    label_column: str = "label"
    """The column holding each row's number."""

    max_length: int = Field(256, gt=0)
    """Longest input in tokens; longer rows keep their start, with a warning."""

    metrics: list[Literal["pearson", "spearman", "mse"]] = ["pearson", "spearman", "mse"]
    """Dev/test scores to report: correlations x 100 (as GLUE's STS-B), and the mean squared error
    (the best adapter has the least of it when it picks)."""

    def to_task(self) -> RegressionTask:
        """The data layer's task for this section."""
        return RegressionTask(self.template, self.label_column, self.max_length)


class TokenClassificationSection(Section):
    kind: Literal["token_classification"]
    """A tag per word (named entities, parts of speech) from a new token-classification head
    (encoders, causal LMs), scored on each word's first token."""

    tokens_column: str = "tokens"
    """The column of each row's words (a list), as CoNLL-style data sets hold them."""

    tags_column: str = "tags"
    """The column of each row's tags: a list of tag names, or of indices into tags."""

    tags: list[str]
    """The tag names in the head's output order, e.g. [O, B-PER, I-PER, B-LOC, I-LOC] (BIO for entity_f1)."""

    max_length: int = Field(256, gt=0)
    """Longest input in tokens; longer rows keep their start (later words go untagged), with a warning."""

    metrics: list[Literal["entity_f1", "token_accuracy"]] = ["entity_f1", "token_accuracy"]
    """Dev/test scores to report (percentages): F1 of the BIO entity spans, and tags right per word."""

    def to_task(self) -> TokenClassificationTask:
        """The data layer's task for this section."""
        return TokenClassificationTask(self.tokens_column, self.tags_column, self.tags, self.max_length)


class MultipleChoiceSection(TextTaskSection):
    kind: Literal["multiple_choice"]
    """Pick one of several answers by the log-likelihood of each after the context (causal LMs); the
    loss is the cross-entropy over the row's choice scores."""

    template: str
    """Turns a row into the context before each choice, e.g. "Question: {question}\\nAnswer:"."""

    choices_column: str | None = None
    """The column holding each row's choices as a list (or give choice_columns)."""

    choice_columns: list[str] | None = None
    """One column per choice (e.g. PIQA's [sol1, sol2]), instead of choices_column."""

    choice_template: str = " {choice}"
    """Turns a choice into its text after the context (a leading space continues it)."""

    label_column: str = "label"
    """The column holding the index (0, 1, ...) of each row's right choice."""

    max_length: int = Field(256, gt=1)
    """Longest context + choice in tokens; longer contexts keep their end, with a warning."""

    score: Literal["mean", "sum"] = "mean"
    """A choice's score: the mean of its tokens' log-likelihoods (fair to long choices), or the sum."""

    metrics: list[Literal["accuracy"]] = ["accuracy"]
    """Dev/test scores to report (percentages)."""

    @model_validator(mode="after")
    def _one_way_to_the_choices(self):
        if (self.choices_column is None) == (self.choice_columns is None):
            raise ValueError(
                "give the choices either as choices_column (a list per row) or as choice_columns"
            )
        return self

    def to_task(self) -> MultipleChoiceTask:
        """The data layer's task for this section."""
        return MultipleChoiceTask(
            self.template, self.label_column, self.choices_column, self.choice_columns, self.choice_template,
            self.max_length, self.score, self.text_format(),
        )  # fmt: skip


class GenerationSection(TextTaskSection):
    kind: Literal["generation"]
    """Generate a target text from a source text; the loss covers the target tokens only."""

    source_template: str
    """Turns a row into the source text, e.g. "Table: {mr}\\nText:"."""

    target_template: str
    """Turns a row into the target text, e.g. " {ref}" (a leading space continues the source)."""

    max_length: int = Field(256, gt=1)
    """Longest source + target in tokens; longer sources keep their end, with a warning."""

    max_target_length: int = Field(64, gt=0)
    """Longest target in tokens (end-of-text included); also the default max_new_tokens."""

    metrics: list[Literal["bleu", "rouge", "exact_match"]] = ["bleu", "rouge"]
    """Dev/test scores to report (percentages); rouge gives rouge1, rouge2 and rougeL."""

    max_new_tokens: int | None = Field(None, gt=0)
    """Tokens to generate at evaluation; default: max_target_length."""

    num_beams: int = Field(1, gt=0)
    """Beam width at evaluation; 1 is greedy decoding."""

    def to_task(self) -> GenerationTask:
        """The data layer's task for this section."""
        return GenerationTask(
            self.source_template,
            self.target_template,
            self.max_length,
            self.max_target_length,
            self.text_format(),
        )


TASK_SECTIONS: dict[str, type[Section]] = {
    section.model_fields["kind"].annotation.__args__[0]: section
    for section in (
        ClassificationSection, MultiLabelSection, RegressionSection, TokenClassificationSection,
        MultipleChoiceSection, GenerationSection,
    )
}  # fmt: skip
TaskSection = Annotated[typing.Union[tuple(TASK_SECTIONS.values())], Field(discriminator="kind")]  # noqa: UP007


def parse_task(raw: dict[str, Any]) -> TaskSection:
    """A task section from its JSON form — ``RunConfig.task.model_dump(mode="json")``, what a run stores
    as ``model.task`` and so in the adapter file's record — validated as a config's ``task`` is.

    Raises:
        ConfigError: the dict is not a valid task section (each line names its key).

    Examples:
        >>> task = parse_task({"kind": "regression", "template": "{text}", "label_column": "score"})
        >>> task.kind, task.metrics
        ('regression', ['pearson', 'spearman', 'mse'])
    """
    try:
        return TypeAdapter(TaskSection).validate_python(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, section="task")) from None


# ----------------------------------------------------------------------------------------- data
class DataSection(Section):
    format: Literal["jsonl", "json", "csv", "tsv"] | None = None
    """Read local files as this format whatever their extension."""

    train: str | None = None
    """Training rows: a .jsonl/.json/.csv/.tsv file, a folder written by save_to_disk, a hub data set
    name (with subset, revision: needs network or its cache), or a datasets builder name (json, csv,
    parquet, text...) with data_files. Required, unless the Python API is given the rows (train(data=))."""

    dev: str | None = None
    """Rows to evaluate on during training (best adapter, early stopping) and at the end; as train."""

    test: str | None = None
    """Rows to evaluate on once, at the end, with the best adapter; as train."""

    subset: str | None = None
    """The configuration (subset) of a hub data set, e.g. sst2 of glue."""

    revision: str | None = None
    """The branch, tag or commit of a hub data set."""

    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    """Files for a builder name or a hub data set, as datasets.load_dataset takes them: a path or glob,
    a list, or {split name: paths} (relative paths are relative to the config file)."""

    train_split: str = "train"
    """Split of a hub data set, builder, DatasetDict or saved DatasetDict used for training."""

    dev_split: str = "validation"
    """Split used as dev."""

    test_split: str = "test"
    """Split used as test."""

    streaming: bool = False
    """Stream the training rows (encoded as they are read, in a seeded shuffle buffer of 1,000 rows)
    instead of loading them all: for data sets larger than memory. Needs train.max_steps (a stream
    has no length for train.epochs); dev and test rows are still loaded whole."""

    train_limit: int | None = Field(None, gt=0)
    """Use only the first N training rows."""

    dev_limit: int | None = Field(None, gt=0)
    """Use only the first N dev rows."""

    test_limit: int | None = Field(None, gt=0)
    """Use only the first N test rows."""

    rename: dict[str, str] = {}
    """Rename columns before the templates see them: {source column: name used in templates}."""

    @field_validator("train", "dev", "test")
    @classmethod
    def _file_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        path = Path(value)
        local = path.suffix.lower().lstrip(".") in SUPPORTED_FORMATS or info.data.get("format") is not None
        if local and not path.is_file():
            raise ValueError(f"file not found: {value}")
        return value


# ---------------------------------------------------------------------------------------- train
class TrainSection(Section):
    optimizer: Literal["adafactor", "adamw"] = "adamw"
    """adafactor (Lester et al.: no parameter scaling, no relative step) or adamw."""

    lr: float = Field(1e-2, gt=0)
    """Peak learning rate."""

    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule after warm-up: constant, linear decay to 0, or cosine decay to 0."""

    warmup_steps: int = Field(0, ge=0)
    """Steps of linear warm-up from 0 to lr."""

    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay of the trainable parameters."""

    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the gradient's global norm to this; null turns clipping off."""

    max_steps: int = Field(300, gt=0)
    """Optimiser steps to train for (ignored when epochs is set)."""

    epochs: float | None = Field(None, gt=0)
    """Train this many passes over the training rows instead of max_steps."""

    batch_size: int = Field(8, gt=0)
    """Rows per optimiser step, over all processes (the global batch)."""

    micro_batch_size: int | None = Field(None, gt=0)
    """Rows per forward pass in each process (gradients accumulate); default: the whole share."""

    group_by_length: bool = True
    """Batch rows of similar length together (less padding, faster), in a seeded random order."""

    eval_every: int | None = Field(50, gt=0)
    """Evaluate on dev every N steps (and at the end); null: only at the end."""

    save_every: int | None = Field(None, gt=0)
    """Write a resumable checkpoint every N steps; default: at every evaluation."""

    early_stopping_patience: int | None = Field(None, gt=0)
    """Stop after this many evaluations without a better dev score; null never stops early."""

    best_metric: str | None = None
    """The dev score that picks the best adapter and early stopping (highest wins; least for loss and
    mse); default: the task's first metric."""

    log_every: int = Field(10, gt=0)
    """Log the mean training loss every N steps."""

    seed: int = 0
    """Seed of the data order and of every random number the run draws."""

    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Autocast the frozen model's compute (accelerate); the prompt keeps float32 weights."""

    gradient_checkpointing: bool = False
    """Recompute the frozen layers' activations in backward: less memory, ~30 % slower."""

    cpu: bool = False
    """Train on the CPU even when a GPU is available."""

    report_to: list[str] = ["tensorboard"]
    """Experiment trackers that get the config, losses and scores, through accelerate's tracker
    interface: tensorboard (into <dir>/tensorboard/<project>), wandb, mlflow, comet_ml, aim, clearml, dvclive,
    trackio, swanlab, or a tracker registered with accelerate.tracking.register_tracker_class; [] for
    none. Each needs its package and reads its own settings (e.g. WANDB_MODE=offline, MLFLOW_TRACKING_URI)."""

    project: str = "softprompt"
    """The trackers' project (W&B project, MLflow experiment, TensorBoard run name); W&B and MLflow
    runs are named after the run folder."""

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, names: list[str]) -> list[str]:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        unknown = [name for name in names if name not in LOGGER_TYPE_TO_CLASS]
        if unknown:
            raise ValueError(
                f"unknown tracker {', '.join(unknown)}; choose from {sorted(LOGGER_TYPE_TO_CLASS)}"
            )
        return list(dict.fromkeys(names))


class EvalSection(Section):
    batch_size: int = Field(32, gt=0)
    """Rows per evaluation batch."""

    zero_shot: bool = True
    """Also score the frozen model without any prompt before training, to compare against."""


class OutputSection(Section):
    dir: str | None = None
    """The run folder (relative to the current folder); default: runs/<config file name>."""

    save_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Dtype of the saved adapter's tensors."""

    overwrite: bool = False
    """Allow a new run in a folder that holds an earlier run's checkpoint (without --resume); the
    earlier run's files are removed only once the new run's config and data have loaded."""

    plot: bool = True
    """Draw the loss and dev-score curves into <dir>/curves.png."""

    push_to_hub: str | None = None
    """A Hub repo id ("user/name", created if needed) a finished run uploads its best adapter and model
    card to; --push-to-hub on the command line wins."""


# --------------------------------------------------------------------------------------- search
# The grid a search tries where the search section leaves a list out, per method: learning rates around
# the measured default (presets.DEFAULTS), and the three inits of Lester et al. §3.2 (class labels,
# sampled vocabulary, random). "text" is left out of tasks that have no words to start from. A method
# without a grid of its own (multitask prompt tuning: prompt-tuning prompts) gets prompt tuning's.
SEARCH_LRS: dict[str, list[float]] = {
    "prompt_tuning": [3e-3, 1e-2, 3e-2, 1e-1],
    "prefix_tuning": [1e-3, 3e-3, 1e-2, 3e-2],
    "p_tuning": [1e-3, 3e-3, 1e-2, 3e-2],
}
SEARCH_INITS = ["text", "vocab", "random"]
PROMPT_SEARCH_KEYS = ("num_virtual_tokens", "init")  # a trial's prompt settings; "lr" is a train setting


class SearchSection(Section):
    """A budgeted search (softprompt.train.search): learning rate x init x prompt length by successive
    halving on dev. All settings train a short rung, the best 1/eta by the dev score train on, ...
    until one is left; it becomes the run's adapter and its setting the run folder's config.yaml."""

    lr: list[Annotated[float, Field(gt=0)]] | None = Field(None, min_length=1)
    """Learning rates to try; null: the method's grid (prompt tuning 3e-3, 1e-2, 3e-2, 0.1; prefix tuning and
    P-tuning 1e-3, 3e-3, 1e-2, 3e-2)."""

    init: list[str] | None = Field(None, min_length=1)
    """Inits to try (the method's init choices); null: text (the labels' words; only where the task has
    words or prompt.init_text is set), vocab and random."""

    num_virtual_tokens: list[Annotated[int, Field(gt=0)]] | None = Field(None, min_length=1)
    """Prompt lengths to try; null: prompt.num_virtual_tokens alone."""

    budget: float = Field(4.0, gt=0)
    """Training steps of the whole search, as a multiple of one run's train.max_steps (4: four runs' worth),
    split evenly over the rungs; the search prints the split before it starts."""

    eta: int = Field(3, ge=2)
    """After each rung the best 1/eta of the trials (by the dev score of train.best_metric) go on."""

    @field_validator("lr", "init", "num_virtual_tokens")
    @classmethod
    def _distinct(cls, values: list | None) -> list | None:
        if values is not None and len(set(values)) < len(values):
            raise ValueError(f"each value once, got {values}")
        return values


# ------------------------------------------------------------------------------------------ run
class RunConfig(Section):
    """A whole training run."""

    preset: Literal[tuple(PRESETS)] | None = None  # type: ignore[valid-type]
    """A paper recipe filling what prompt and train leave out (lester, li-liang, p-tuning); null: softprompt's
    measured defaults for prompt.method."""

    model: ModelSection = ModelSection()
    """The frozen base model."""

    prompt: PromptSection
    """The soft prompt: method (prompt_tuning, prefix_tuning, p_tuning) and its options."""

    task: TaskSection
    """What the prompt learns: classification by label words, or generation."""

    data: DataSection = DataSection()
    """Where the rows come from."""

    train: TrainSection = TrainSection()
    """The optimiser and the loop."""

    eval: EvalSection = EvalSection()
    """Evaluation settings."""

    output: OutputSection = OutputSection()
    """What the run writes, and where."""

    search: SearchSection | None = None
    """Search learning rate x init (x prompt length) within a budget instead of training one setting
    (`softprompt train --search` adds this section with its defaults); null trains the config as it is."""

    @model_validator(mode="after")
    def _check_run(self):
        names = [*self.metric_names(), "loss"]
        if self.train.best_metric is not None and self.train.best_metric not in names:
            raise ValueError(f"train.best_metric {self.train.best_metric!r} is not one of the task's {names}")
        worded = ("classification", "multi_label")
        if self.prompt.init == "text" and not self.prompt.init_text and self.task.kind not in worded:
            raise ValueError(
                "prompt.init_text is needed for init 'text' (classification and multi-label tasks default it to "
                "their labels' words; else choose init: vocab)"
            )
        if self.data.streaming and self.train.epochs is not None:
            raise ValueError("data.streaming: a stream has no length for train.epochs; set train.max_steps")
        if self.search is not None:
            self._check_search()
        return self

    def _check_search(self) -> None:
        """Every trial's prompt section validates, and the budget gives each trial a step per rung."""
        from softprompt.train.search import plan_rungs  # search runs configs: it imports this module

        if self.train.epochs is not None:
            raise ValueError("search: one run's budget is train.max_steps; set it instead of train.epochs")
        choices = typing.get_args(type(self.prompt).model_fields["init"].annotation)
        worded = self.task.kind in ("classification", "multi_label") or bool(self.prompt.init_text)
        for init in self.search.init or ():
            if init not in choices:
                raise ValueError(
                    f"search.init: {init!r} is not an init of {self.prompt.method}: {list(choices)}"
                )
            if init == "text" and not worded:
                raise ValueError(
                    "search.init: 'text' needs prompt.init_text on this task (or leave 'text' out)"
                )
        for setting in self.search_settings():
            prompt = {key: setting[key] for key in PROMPT_SEARCH_KEYS}
            try:
                type(self.prompt).model_validate({**self.prompt.model_dump(), **prompt})
            except ValidationError as err:
                message = err.errors()[0]["msg"].removeprefix("Value error, ")
                raise ValueError(
                    f"search: the prompt of the trial {setting} is not valid: {message}"
                ) from None
        try:
            plan_rungs(len(self.search_settings()), self.train.max_steps, self.search.budget, self.search.eta,
                       self.train.eval_every)  # fmt: skip
        except ValueError as err:
            raise ValueError(f"search.budget: {err}") from None

    def search_settings(self) -> list[dict[str, Any]]:
        """The prompt and train settings the search tries, in trial order (prompt length, then init, then
        learning rate); the search section's lists, or the method's grid where it leaves one out."""
        search = self.search or SearchSection()
        worded = self.task.kind in ("classification", "multi_label") or bool(self.prompt.init_text)
        inits = search.init or [init for init in SEARCH_INITS if worded or init != "text"]
        return [
            {"num_virtual_tokens": length, "init": init, "lr": lr}
            for length in search.num_virtual_tokens or [self.prompt.num_virtual_tokens]
            for init in inits
            for lr in search.lr or SEARCH_LRS.get(self.prompt.method, SEARCH_LRS["prompt_tuning"])
        ]

    def metric_names(self) -> list[str]:
        """The names of the scores evaluation reports ("rouge" gives three)."""
        names: list[str] = []
        for metric in self.task.metrics:
            names.extend(ROUGE_TYPES if metric == "rouge" else [metric])
        return names

    @property
    def selection_metric(self) -> str:
        """The dev score that picks the best adapter."""
        return self.train.best_metric or self.metric_names()[0]

    def to_yaml(self) -> str:
        """The resolved config as YAML: what the run folder keeps next to the adapter."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# -------------------------------------------------------------------------------------- loading
def load_config(
    path: str | Path | None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Read a YAML config, apply ``key=value`` overrides and the preset, and validate.

    Args:
        path: the YAML file; ``None`` starts from ``base`` (or an empty config).
        overrides: ``"train.lr=0.1"``-style settings; values are parsed as YAML (numbers, lists, null).
        base: a raw config dict to start from instead of a file (its paths must be absolute).

    Raises:
        ConfigError: the file is missing or not YAML, or a key is unknown, mistyped or invalid.

    Examples:
        >>> from softprompt.cli import example_config_path
        >>> config = load_config(example_config_path(), ["train.lr=0.1", "data.dev_limit=100"])
        >>> config.train.lr, config.data.dev_limit
        (0.1, 100)
        >>> try:
        ...     load_config(example_config_path(), ["train.lr=fast"])
        ... except ConfigError as err:                           # names the key, the problem, the value
        ...     print(str(err).splitlines()[-1].strip())
        train.lr: Input should be a valid number, unable to parse string as a number (got 'fast')
    """
    raw = dict(base or {})
    if path is not None:
        raw = _read_yaml(Path(path))
        _resolve_files(raw, Path(path).resolve().parent)
    for item in overrides:
        _apply_override(raw, item)
    if isinstance(raw.get("output"), dict) or "output" not in raw:
        output = raw.setdefault("output", {})
        if output.get("dir") is None:
            output["dir"] = str(Path("runs") / (Path(path).stem if path is not None else "run"))
        output["dir"] = str(Path(output["dir"]).expanduser().resolve())
    try:
        return RunConfig.model_validate(apply_preset(raw))
    except ValidationError as err:
        raise ConfigError(format_errors(err, path)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model, prompt, task, ...)")
    return raw


def _resolve_files(raw: dict[str, Any], folder: Path) -> None:
    """Make relative file paths in the file absolute, against the config file's folder."""
    for section, key in FILE_KEYS:
        if isinstance(raw.get(section), dict) and key in raw[section]:
            raw[section][key] = _resolved(raw[section][key], folder)


def _resolved(value: Any, folder: Path) -> Any:
    """``value`` with its local paths made absolute against ``folder``: a path, or the paths inside the
    lists and mappings ``data_files`` takes; hub and builder names stay as they are."""
    if isinstance(value, str):
        return str((folder / value).expanduser().resolve()) if _is_local_path(value, folder) else value
    if isinstance(value, list):
        return [_resolved(item, folder) for item in value]
    if isinstance(value, dict):
        return {name: _resolved(item, folder) for name, item in value.items()}
    return value


def _is_local_path(value: str, folder: Path) -> bool:
    """A path (not a hub name): it has a file extension, a folder part, or exists next to the config."""
    path = Path(value).expanduser()
    return path.suffix != "" or value.startswith((".", "/", "~")) or (folder / path).exists()


def _apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b=value`` in the nested dict; a path value is made absolute against the current folder."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=0.1")
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    if tuple(parts) in FILE_KEYS:
        value = _resolved(value, Path.cwd())
    node[parts[-1]] = value


def format_errors(err: ValidationError, path: str | Path | None = None, *, section: str | None = None) -> str:
    """One line per bad key: ``train.lr: Input should be a valid number (got 'fast')``; ``section``
    names the section ``err`` is about when it validated one section alone."""
    lines: dict[str, list[str]] = {}
    for error in err.errors():
        loc = [
            *([section] if section else []),
            *(str(part) for part in error["loc"] if not _is_union_tag(part)),
        ]
        key = ".".join(loc) or "config"
        if error["type"] == "extra_forbidden":
            message = "unknown key" + _suggestion(loc, ((section,) if section else ()) + tuple(error["loc"]))
        elif error["type"] == "missing":
            message = "missing (required)"
        else:
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] != "value_error" and not isinstance(error.get("input"), dict | type(None)):
                message += f" (got {error['input']!r})"
        if message not in lines.setdefault(key, []):
            lines[key].append(message)
    where = f"{path}: " if path is not None else ""
    body = "\n".join(f"  {key}: {' | '.join(messages)}" for key, messages in lines.items())
    return f"{where}invalid config\n{body}"


def _is_union_tag(part: Any) -> bool:
    """Discriminator tags and union-member names that pydantic puts inside error locations."""
    text = str(part)
    return text in METHODS or text in TASK_SECTIONS or "[" in text


def _suggestion(loc: list[str], raw_loc: tuple) -> str:
    """', known keys: ...' for the section of an unknown key, with a close match first."""
    section = _section_class(raw_loc[:-1])
    if section is None:
        return ""
    known = list(section.model_fields)
    close = difflib.get_close_matches(loc[-1], known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; known keys: {', '.join(known)}"


def _section_class(raw_loc: tuple) -> type[BaseModel] | None:
    if not raw_loc:
        return RunConfig
    head = raw_loc[0]
    if head == "prompt":
        return PROMPT_SECTIONS.get(str(raw_loc[1])) if len(raw_loc) > 1 else None
    if head == "task":
        tag = str(raw_loc[1]) if len(raw_loc) > 1 else ""
        return TASK_SECTIONS.get(tag)
    field = RunConfig.model_fields.get(str(head))
    annotation = field.annotation if field else None
    optional = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if len(optional) == 1:  # an optional section (search: SearchSection | None)
        annotation = optional[0]
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
