"""softprompt: parameter-efficient fine-tuning of frozen transformers with soft prompts.

Examples:
    >>> import softprompt
    >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=20))
    >>> model(input_ids, labels=input_ids).loss.backward()
    >>> path = model.save(tmp_dir / "task.safetensors")
    >>> softprompt.load(base_model, path).generate(input_ids, max_new_tokens=3).shape
    torch.Size([2, 8])
"""

from softprompt.api import load, wrap
from softprompt.families import FAMILIES, UnsupportedModelError, model_shape
from softprompt.files.adapter import AdapterFileError
from softprompt.methods import (
    MultitaskPromptTuningConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    PTuningConfig,
    SoftPromptConfig,
)
from softprompt.models import EncoderSoftPromptModel, PromptedModel, Seq2SeqSoftPromptModel, SoftPromptModel

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "AdapterFileError",
    "EncoderSoftPromptModel",
    "MultitaskPromptTuningConfig",
    "PTuningConfig",
    "PrefixTuningConfig",
    "PromptedModel",
    "PromptTuningConfig",
    "SoftPromptConfig",
    "Seq2SeqSoftPromptModel",
    "SoftPromptModel",
    "UnsupportedModelError",
    "load",
    "model_shape",
    "wrap",
]
