"""P-tuning (Liu et al. 2021, arXiv 2103.10385): virtual tokens produced by a prompt encoder.

The encoder (an MLP, or a bi-LSTM followed by an MLP) reparameterises ``P`` trainable input vectors
during training; for saving and inference it is folded into plain embeddings.

Unlike the paper, the encoder is residual and its last layer starts at zero, so training starts
exactly at the init (``vocab``/``text``) instead of at a random point: soft prompts are sensitive
to their start, and this keeps the robust inits of prompt tuning.

Examples:
    >>> config = PTuningConfig(num_virtual_tokens=20, encoder="lstm", encoder_hidden_size=256)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from softprompt.methods.base import SoftPrompt, VirtualTokens
from softprompt.methods.prompt_tuning import PromptTuning, PromptTuningConfig, initial_embeddings

EncoderKind = Literal["mlp", "lstm"]


@dataclass(frozen=True)
class PTuningConfig(PromptTuningConfig):
    """P-tuning choices: those of prompt tuning plus the prompt encoder.

    Attributes:
        encoder: ``mlp`` (Linear-ReLU-Linear-ReLU-Linear) or ``lstm`` (2-layer bi-LSTM, then an MLP).
        encoder_hidden_size: hidden width of the encoder.
    """

    method: ClassVar[str] = "p_tuning"
    encoder: EncoderKind = "mlp"
    encoder_hidden_size: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder not in EncoderKind.__args__:
            raise ValueError(f"encoder must be one of {EncoderKind.__args__}, got {self.encoder!r}")


class PromptEncoder(SoftPrompt):
    """``embeddings + encoder(embeddings)``: (P, E) -> (P, E)."""

    def __init__(self, config: PTuningConfig, embeddings: torch.Tensor) -> None:
        super().__init__(config)
        width, hidden = embeddings.shape[-1], config.encoder_hidden_size
        self.embeddings = nn.Parameter(embeddings)
        if config.encoder == "lstm":
            self.lstm = nn.LSTM(width, hidden, num_layers=2, bidirectional=True, batch_first=True)
            mlp_in = 2 * hidden
        else:
            self.lstm = None
            mlp_in = width
        self.mlp = nn.Sequential(
            nn.Linear(mlp_in, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, width),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self) -> VirtualTokens:
        x = self.embeddings
        if self.lstm is not None:
            x = self.lstm(x[None])[0][0]  # (P, E) -> (P, 2 * hidden)
        return VirtualTokens(self.embeddings + self.mlp(x))


class PTuning(PromptTuning):
    """P-tuning: saved folded, as the embeddings its encoder produces; reloads as plain embeddings."""

    config = PTuningConfig
    peft_type = "P_TUNING"

    def build(self, config, model, shape, tokenizer=None) -> SoftPrompt:
        return PromptEncoder(config, initial_embeddings(config, model, shape, tokenizer))

    def peft_fields(self, config: PTuningConfig) -> dict:
        # peft rebuilds its encoder from these; the folded table is what it loads for inference.
        return {
            "encoder_hidden_size": config.encoder_hidden_size,
            "encoder_reparameterization_type": config.encoder.upper(),
            "encoder_num_layers": 2,
        }


METHOD = PTuning()
