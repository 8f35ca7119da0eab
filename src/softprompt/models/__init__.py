"""The three model shapes side by side: each a :class:`PromptedModel` for one kind (see :mod:`softprompt.kinds`)."""

from softprompt.models.base import PromptedModel
from softprompt.models.causal import SoftPromptModel
from softprompt.models.encoder import EncoderSoftPromptModel
from softprompt.models.seq2seq import Seq2SeqSoftPromptModel

__all__ = ["EncoderSoftPromptModel", "PromptedModel", "Seq2SeqSoftPromptModel", "SoftPromptModel"]
