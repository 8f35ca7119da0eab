"""Data for training and evaluation: load rows, encode them for a task, batch them.

Examples:
    >>> from softprompt.data import ClassificationTask, encode_dataset, load_rows, make_dataloader
    >>> rows = load_rows("sst2/train.tsv")  # doctest: +SKIP
    >>> task = ClassificationTask("Review: {sentence}\\nSentiment:", "label", ["negative", "positive"], 128)
    >>> examples, n_truncated = encode_dataset(task, rows, tokenizer)  # doctest: +SKIP
    >>> loader = make_dataloader(examples, 8, tokenizer.pad_token_id, "right", seed=0)  # doctest: +SKIP
"""

from softprompt.data.batching import LengthGroupedSampler, collate, make_dataloader
from softprompt.data.sources import SUPPORTED_FORMATS, load_rows, require_columns
from softprompt.data.tasks import (
    IGNORE_INDEX,
    ClassificationTask,
    Encoded,
    GenerationTask,
    Task,
    encode_dataset,
)
from softprompt.data.text import TextFormat, format_template, template_fields

__all__ = [
    "IGNORE_INDEX",
    "SUPPORTED_FORMATS",
    "ClassificationTask",
    "Encoded",
    "GenerationTask",
    "LengthGroupedSampler",
    "Task",
    "TextFormat",
    "collate",
    "encode_dataset",
    "format_template",
    "load_rows",
    "make_dataloader",
    "require_columns",
    "template_fields",
]
