"""softprompt: parameter-efficient fine-tuning of frozen transformers with soft prompts.

Example:
    >>> import softprompt
    >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=20))
    >>> model(input_ids, labels=input_ids).loss.backward()
    >>> model.save("task.safetensors")
    >>> softprompt.load(base_model, "task.safetensors").generate(input_ids, max_new_tokens=20)
"""

from softprompt.api import load, wrap
from softprompt.encoder import EncoderSoftPromptModel
from softprompt.families import FAMILIES, UnsupportedModelError, model_shape
from softprompt.io import AdapterFileError
from softprompt.methods import PrefixTuningConfig, PromptTuningConfig, PTuningConfig, SoftPromptConfig
from softprompt.model import PromptedModel, SoftPromptModel
from softprompt.seq2seq import Seq2SeqSoftPromptModel

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "AdapterFileError",
    "EncoderSoftPromptModel",
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
