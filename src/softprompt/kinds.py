"""The one registry of model kinds: what softprompt does with each shape of model.

A **kind** is the shape of a transformer: a ``causal`` decoder, a ``seq2seq`` encoder-decoder, or an
``encoder``. A **head** is what a model *class* does (``causal-lm``, ``seq2seq-lm``,
``sequence-classification``, ``token-classification``, ``features``), read from the
``transformers`` ``AutoModelFor...`` mapping the class belongs to.

For each kind, one entry says: the model class that adapts it, the heads it adapts, the head a
training run loads, the training objective for each task kind, whether a task bank serves it,
whether the bare model has a zero-shot score, and the attention sites a prefix can fill. Each head
says how to load it (its ``AutoModelFor...`` class) and its ``peft`` task type. Every choice
elsewhere in softprompt is a lookup here.

Model classes and objectives are named by import path and resolved on first use, as
``transformers``' own auto mappings do: this module sits below everything it names.

Examples:
    >>> kind = KINDS["causal"]
    >>> kind.model_class.__name__, kind.run_head, kind.serves_bank
    ('SoftPromptModel', 'causal-lm', True)
    >>> HEADS["sequence-classification"].peft_task_type
    'SEQ_CLS'
    >>> kind.objective("generation").__name__
    'GenerationObjective'
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn
from transformers.models.auto import modeling_auto

ModelKind = Literal["causal", "seq2seq", "encoder"]
ModelHead = Literal["causal-lm", "seq2seq-lm", "sequence-classification", "token-classification", "features"]
# The places a key/value prefix can enter: a causal decoder's self-attention, encoder
# self-attention, an encoder-decoder's decoder self-attention, and its cross-attention.
Site = Literal["self", "encoder", "decoder", "cross"]
# What a training run does with its data (the ``task.kind`` of a run config).
TaskKind = Literal[
    "classification", "multi_label", "regression", "token_classification", "multiple_choice", "generation"
]
# What each task kind needs of a model, for the message that refuses it on a kind that lacks it.
TASK_NEEDS: dict[TaskKind, str] = {
    "classification": "label words or a classifier head",
    "multi_label": "a classifier head with one sigmoid output per label",
    "regression": "a head with one output",
    "token_classification": "a token-classification head",
    "multiple_choice": "a language model's likelihood of each choice after the context",
    "generation": "a decoder that writes text",
}


@functools.cache
def _resolve(path: str) -> Any:
    """``"package.module:Name"`` -> the object (imported on first use)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Head:
    """What a model class does, as ``transformers`` and ``peft`` name it.

    Attributes:
        auto_class: the ``transformers`` class that loads a model with this head.
        mapping: the ``modeling_auto`` table of model types -> class names with this head.
        peft_task_type: ``peft``'s ``task_type`` for adapters of such models.
    """

    auto_class: str
    mapping: str
    peft_task_type: str

    def load_class(self) -> type:
        import transformers

        return getattr(transformers, self.auto_class)

    def class_names(self, model_type: str) -> frozenset[str]:
        """The classes this head's mapping names for ``model_type``."""
        return _as_names(getattr(modeling_auto, self.mapping).get(model_type, ()))

    def all_class_names(self) -> frozenset[str]:
        """Every class this head's mapping names, under any model type (cached: it runs at every wrap)."""
        return _table_class_names(self.mapping)


HEADS: dict[ModelHead, Head] = {
    "causal-lm": Head("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "CAUSAL_LM"),
    "seq2seq-lm": Head(
        "AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "SEQ_2_SEQ_LM"
    ),
    "sequence-classification": Head(
        "AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "SEQ_CLS"
    ),
    "token-classification": Head(
        "AutoModelForTokenClassification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "TOKEN_CLS"
    ),
    "features": Head("AutoModel", "MODEL_MAPPING_NAMES", "FEATURE_EXTRACTION"),
}


@dataclass(frozen=True)
class Kind:
    """What softprompt does with one kind of model.

    Attributes:
        label: the kind in words, for messages.
        sites: the attention sites a full prefix fills, in the order files store them.
        model_path: the :class:`~softprompt.models.PromptedModel` subclass that adapts this kind.
        heads: the heads this kind's model class adapts.
        run_head: the head ``softprompt train`` loads the base model with (``task_heads`` can
            name another for a task kind).
        objective_paths: the training objective for each task kind a run can have.
        task_heads: the head a run of a task kind loads instead of ``run_head``.
        serves_bank: whether a :class:`~softprompt.bank.TaskBank` serves models of this kind.
        zero_shot: whether the bare model scores a task by itself (an encoder's new head cannot).
    """

    label: str
    sites: tuple[Site, ...]
    model_path: str
    heads: tuple[ModelHead, ...]
    run_head: ModelHead
    objective_paths: dict[TaskKind, str] = field(default_factory=dict)
    task_heads: dict[TaskKind, ModelHead] = field(default_factory=dict)
    serves_bank: bool = False
    zero_shot: bool = False

    @property
    def model_class(self) -> type:
        return _resolve(self.model_path)

    def objective(self, task: str) -> type:
        """The objective class for a run's ``task.kind``; raises with the reason and the kinds that train it."""
        if task not in self.objective_paths:
            where = [kind.label for kind in KINDS.values() if task in kind.objective_paths]
            need = f"{TASK_NEEDS[task]} ({' and '.join(where)} have it)" if task in TASK_NEEDS else "unknown"
            raise ValueError(
                f"{self.label} cannot train a {task} task: it needs {need}; {self.label} train "
                f"{', '.join(self.objective_paths)}"
            )
        return _resolve(self.objective_paths[task])

    def head_for(self, task: str) -> ModelHead:
        """The head a run of ``task`` loads the base model with."""
        return self.task_heads.get(task, self.run_head)


_OBJECTIVES = "softprompt.train.objectives"

KINDS: dict[ModelKind, Kind] = {
    "causal": Kind(
        label="causal LMs",
        sites=("self",),
        model_path="softprompt.models.causal:SoftPromptModel",
        # Classifiers: softprompt pools each row's last real token by the mask itself (a model's own
        # pooling reads pad ids, which a prompt in front or a left pad breaks) and trains the new head.
        heads=("causal-lm", "sequence-classification", "token-classification"),
        run_head="causal-lm",
        objective_paths={
            "classification": f"{_OBJECTIVES}:ClassificationObjective",
            "multiple_choice": f"{_OBJECTIVES}:MultipleChoiceObjective",
            "generation": f"{_OBJECTIVES}:GenerationObjective",
            # Tasks without label words train a new head, as on encoders.
            "multi_label": f"{_OBJECTIVES}:MultiLabelObjective",
            "regression": f"{_OBJECTIVES}:RegressionObjective",
            "token_classification": f"{_OBJECTIVES}:TokenClassificationObjective",
        },
        task_heads={
            "multi_label": "sequence-classification",
            "regression": "sequence-classification",
            "token_classification": "token-classification",
        },
        serves_bank=True,
        zero_shot=True,
    ),
    "seq2seq": Kind(
        label="encoder-decoders",
        sites=("encoder", "decoder", "cross"),
        model_path="softprompt.models.seq2seq:Seq2SeqSoftPromptModel",
        heads=("seq2seq-lm",),
        run_head="seq2seq-lm",
        objective_paths={
            "classification": f"{_OBJECTIVES}:Seq2SeqClassificationObjective",
            "generation": f"{_OBJECTIVES}:Seq2SeqGenerationObjective",
        },
        serves_bank=True,
        zero_shot=True,
    ),
    "encoder": Kind(
        label="encoders",
        sites=("encoder",),
        model_path="softprompt.models.encoder:EncoderSoftPromptModel",
        heads=("sequence-classification", "token-classification", "features"),
        # A run trains a new head: one output per class, per label, one for a number, or per tag.
        run_head="sequence-classification",
        objective_paths={
            "classification": f"{_OBJECTIVES}:HeadClassificationObjective",
            "multi_label": f"{_OBJECTIVES}:MultiLabelObjective",
            "regression": f"{_OBJECTIVES}:RegressionObjective",
            "token_classification": f"{_OBJECTIVES}:TokenClassificationObjective",
        },
        task_heads={"token_classification": "token-classification"},
    ),
}


def head_of(model: nn.Module) -> ModelHead | None:
    """What ``model``'s class does, from the ``AutoModelFor...`` mapping it is in (or derives from).

    Examples:
        >>> import transformers as T
        >>> head_of(T.GPT2LMHeadModel(T.GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=16)))
        'causal-lm'
    """
    model_type = model.config.model_type
    classes = {cls.__name__ for cls in type(model).__mro__}
    for name, head in HEADS.items():
        if classes & head.class_names(model_type):
            return name
    # A class mapped under another model type than its config's (Emu3ForCausalLM sits under "emu3",
    # its config is "emu3_text_model"): the mapping still says what it does.
    for name, head in HEADS.items():
        if classes & head.all_class_names():
            return name
    # A class in no mapping (remote code): a model that generates is an LM of its config's shape.
    if not classes & _mapped_class_names() and _generates(model):
        return "seq2seq-lm" if getattr(model.config, "is_encoder_decoder", False) else "causal-lm"
    return None


def _generates(model: nn.Module) -> bool:
    can_generate = getattr(model, "can_generate", None)
    return callable(can_generate) and bool(can_generate())


def _as_names(entry: str | tuple[str, ...]) -> frozenset[str]:
    """A mapping's entry for one model type (one class name, or several) as a set of names."""
    return frozenset([entry] if isinstance(entry, str) else entry)


@functools.cache
def _table_class_names(table_name: str) -> frozenset[str]:
    """Every class name in one ``modeling_auto`` ``..._MAPPING_NAMES`` table, under any model type."""
    return frozenset().union(*map(_as_names, getattr(modeling_auto, table_name).values()))


@functools.cache
def _mapped_class_names() -> frozenset[str]:
    """Every class name in any of ``transformers``' ``..._MAPPING_NAMES`` tables."""
    tables = [
        name
        for name in dir(modeling_auto)
        if name.endswith("_MAPPING_NAMES") and isinstance(getattr(modeling_auto, name), dict)
    ]
    return frozenset().union(*map(_table_class_names, tables))


def supported_heads(kind: ModelKind) -> str:
    """The heads a kind adapts with their loading classes, for messages."""
    return "; ".join(f"{name} ({HEADS[name].auto_class})" for name in KINDS[kind].heads)
