"""Data for training and evaluation: load rows, encode them for a task, batch them.

Examples:
    >>> from softprompt.data import ClassificationTask, encode_dataset, load_rows, make_dataloader
    >>> path = tmp_dir / "train.jsonl"
    >>> _ = path.write_text('{"text": "a gem", "label": 1}\\n{"text": "dull film", "label": 0}\\n')
    >>> task = ClassificationTask("review {text} sentiment", "label", ["negative", "positive"], 16)
    >>> examples, n_truncated = encode_dataset(task, load_rows(path), tokenizer)
    >>> loader = make_dataloader(examples, 2, tokenizer.pad_token_id, "left", seed=0)
    >>> batch = next(iter(loader))
    >>> batch["input_ids"].shape, sorted(batch["label"].tolist())
    (torch.Size([2, 4]), [0, 1])
"""

from softprompt.data.batching import ExampleBatches, LengthGroupedSampler, collate, make_dataloader
from softprompt.data.head_tasks import MultiLabelTask, RegressionTask, TokenClassificationTask
from softprompt.data.sources import SUPPORTED_FORMATS, DataError, Rows, first_rows, load_rows, require_columns
from softprompt.data.streams import StreamBatches, StreamedExamples
from softprompt.data.tasks import (
    IGNORE_INDEX,
    ClassificationTask,
    Encoded,
    GenerationTask,
    MultipleChoiceTask,
    Task,
    encode_dataset,
)
from softprompt.data.text import TextFormat, format_template, template_fields

__all__ = [
    "IGNORE_INDEX",
    "SUPPORTED_FORMATS",
    "ClassificationTask",
    "DataError",
    "Encoded",
    "ExampleBatches",
    "GenerationTask",
    "LengthGroupedSampler",
    "MultiLabelTask",
    "MultipleChoiceTask",
    "RegressionTask",
    "Rows",
    "StreamBatches",
    "StreamedExamples",
    "Task",
    "TextFormat",
    "TokenClassificationTask",
    "collate",
    "encode_dataset",
    "first_rows",
    "format_template",
    "load_rows",
    "make_dataloader",
    "require_columns",
    "template_fields",
]
