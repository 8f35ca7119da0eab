"""TRL's trainers (``SFTTrainer``...) with a softprompt causal LM: pass ``for_trl(model)``.

TRL computes the loss with a fused LM head that skips the model's ``forward``: it runs
``model.base_model(...)`` for the backbone's ``last_hidden_state`` and projects it with
``model.get_output_embeddings()`` — ``transformers``' convention that ``base_model`` is the
backbone. In softprompt, ``model.base_model`` is the whole frozen model without the prompt (what
the library and its users rely on), so TRL would train nothing or fail. :func:`for_trl` gives TRL
a view of the same model in which ``base_model`` is the *prompted* backbone: the hidden states of
the caller's tokens with the prompt in place. Everything else — parameters, ``state_dict``
(checkpoints hold the prompt only), ``config``, ``save_pretrained``... — is the wrapped model's,
so the prompt TRL trains is ``model.prompt``.

Soft prompts need one prompt per sequence: packed batches are refused (``packing=False``).

Examples:
    >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4))
    >>> view = for_trl(model)
    >>> view.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.shape
    torch.Size([2, 5, 32])
    >>> view.prompt is model.prompt, sorted(view.state_dict())
    (True, ['_extra_state', 'prompt.embeddings'])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPast

from softprompt.families import UnsupportedModelError
from softprompt.models.base import refuse_packed
from softprompt.models.causal import SoftPromptModel


class PromptedBackbone(nn.Module):
    """``base_model`` as ``transformers`` code expects it: the backbone — here with the prompt in front."""

    def __init__(self, model: SoftPromptModel) -> None:
        super().__init__()
        # Not a registered child: its parameters belong to the view's one registered model.
        object.__setattr__(self, "_model", model)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """The caller's tokens' last hidden states (B, T, H), each row after its prompt."""
        refuse_packed(kwargs)
        kwargs.pop("use_cache", None)  # the prompt's cache is softprompt's own
        hidden = self._model.hidden_states(
            input_ids, attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs
        )
        return BaseModelOutputWithPast(last_hidden_state=hidden)


class TRLView(nn.Module):
    """A :class:`~softprompt.models.SoftPromptModel` seen the way TRL sees a causal LM (see the module)."""

    def __init__(self, model: SoftPromptModel) -> None:
        super().__init__()
        self.prompted = model
        object.__setattr__(self, "base_model", PromptedBackbone(model))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ):
        """The wrapped model's forward (logits and loss of the caller's tokens)."""
        return self.prompted(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The wrapped model's (the prompt and the adapter record), under the same names."""
        return self.prompted.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.prompted.load_state_dict(state_dict, strict=strict, assign=assign)

    def __getattr__(self, name: str) -> Any:
        # Everything else TRL and Trainer read (config, generation_config, embeddings, checkpointing,
        # tags, save_pretrained...) is the wrapped model's, as peft's PeftModel forwards to its model.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "prompted":
                raise
            return getattr(self.prompted, name)


def for_trl(model: SoftPromptModel) -> TRLView:
    """The view of ``model`` to hand to TRL's trainers: ``SFTTrainer(model=for_trl(model), ...)``."""
    if not isinstance(model, SoftPromptModel):
        raise UnsupportedModelError(
            f"TRL's trainers train causal LMs; this is a {type(model).__name__} of a "
            f"{type(model.base_model).__name__}"
        )
    return TRLView(model)


__all__ = ["PromptedBackbone", "TRLView", "for_trl"]
