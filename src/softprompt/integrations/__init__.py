"""softprompt with the Hugging Face tools users already run (see ``docs/huggingface.md``).

A :class:`~softprompt.models.PromptedModel` already shows these tools what they read from a
``PreTrainedModel`` (``config``, ``device``, ``generation_config``, a ``state_dict`` of what trains,
``save_pretrained`` / ``push_to_hub``...). The modules here add what a property cannot:

* :mod:`~softprompt.integrations.trainer` — ``SaveAdapterCallback``: softprompt's file in each
  ``Trainer`` checkpoint;
* :mod:`~softprompt.integrations.trl` — ``for_trl(model)``: the view TRL's fused-loss trainers need;
* :mod:`~softprompt.integrations.streaming` — streamers that skip the virtual tokens' stand-ins.
"""
