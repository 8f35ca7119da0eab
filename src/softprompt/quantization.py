"""A quantized frozen base: the base model's linear layers in 8 or 4 bits, the prompt in fp32.

A soft prompt never changes the base model, so the base can be stored in far fewer bits than it
was trained in: only the prompt's gradient flows back through it (through the dequantized weights),
and the prompt itself trains in fp32. Quantization is ``bitsandbytes``' (through ``transformers``'
``BitsAndBytesConfig``): it quantizes at load time — no calibration data, no converted checkpoint
— and runs on CUDA GPUs and, since 0.49, on the CPU. The input embeddings (which text and
vocabulary inits read) and the output head stay in the model's dtype.

* ``int8`` — LLM.int8() weights (``Linear8bitLt``): about half a bf16 model's weight memory;
* ``nf4`` — 4-bit NormalFloat weights (``Linear4bit``, QLoRA's format): about a quarter.

One trap is closed here (:func:`keep_differentiable`): on a CPU with AVX512-BF16, bitsandbytes
0.50 repacks a ``Linear4bit`` weight for a faster inference kernel the first time the layer runs in
eval mode on an input without gradient (an evaluation, a prefix init). The packed kernel has no
backward, so every later gradient through that layer is silently ``None`` and the prompt stops
learning. :func:`load_quantized` and ``softprompt.wrap`` turn the repacking off (a model that already
ran a forward pass before wrapping is refused: its repacked weights stay so).

Examples:
    >>> base_model.save_pretrained(tmp_dir / "tiny")
    >>> _ = tokenizer.save_pretrained(tmp_dir / "tiny")
    >>> base, tok = load_quantized(str(tmp_dir / "tiny"), "nf4")
    >>> quantization_of(base)
    'nf4'
    >>> model = softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=4))
    >>> model(input_ids, labels=input_ids).loss.backward()
    >>> [name for name, p in model.named_parameters() if p.grad is not None]    # the prompt only
    ['prompt.prefix']
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from transformers import AutoTokenizer, BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

from softprompt.compat import keep_differentiable
from softprompt.hub import BUILTIN_MODELS, builtin_model_path, ensure_pad_token
from softprompt.kinds import HEADS, ModelHead

Quantization = Literal["int8", "nf4"]
QUANTIZATIONS: tuple[Quantization, ...] = ("int8", "nf4")


def bnb_config(quantization: Quantization, compute_dtype: torch.dtype = torch.float32) -> BitsAndBytesConfig:
    """The ``transformers`` quantization config of ``quantization``.

    ``compute_dtype`` is the dtype 4-bit layers dequantize to and multiply in: fp32 on a CPU,
    bf16 on GPUs that have it (8-bit layers multiply in fp16 whatever it is).

    Examples:
        >>> bnb_config("nf4").bnb_4bit_quant_type, bnb_config("int8").load_in_8bit
        ('nf4', True)
        >>> bnb_config("int4")
        Traceback (most recent call last):
        ValueError: unknown quantization 'int4'; choose one of ('int8', 'nf4')
    """
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype
        )
    raise ValueError(f"unknown quantization {quantization!r}; choose one of {QUANTIZATIONS}")


def load_quantized(
    name_or_path: str,
    quantization: Quantization,
    *,
    head: ModelHead = "causal-lm",
    compute_dtype: torch.dtype = torch.float32,
    device_map: str | dict | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a base model with its linear layers quantized, and its tokenizer (with a pad token).

    Args:
        name_or_path: a built-in alias (``smollm2-135m-instruct``), a local folder or a hub name.
        quantization: ``"int8"`` or ``"nf4"`` (:func:`bnb_config`).
        head: the head to load (:data:`softprompt.kinds.HEADS`).
        compute_dtype: what 4-bit layers compute in (fp32 on a CPU, bf16 on recent GPUs).
        device_map: where the layers go (``"auto"`` spreads them over the GPUs); default: the first
            GPU if there is one, else the CPU.

    Returns:
        ``(model, tokenizer)``; the model in eval mode, its quantized layers kept differentiable.
    """
    if device_map is None:
        device_map = {"": 0} if torch.cuda.is_available() else "cpu"
    source = builtin_model_path(name_or_path) if name_or_path in BUILTIN_MODELS else name_or_path
    model = (
        HEADS[head]
        .load_class()
        .from_pretrained(
            source, quantization_config=bnb_config(quantization, compute_dtype), device_map=device_map
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(source)
    if name_or_path in BUILTIN_MODELS:
        model.name_or_path = model.config.name_or_path = tokenizer.name_or_path = name_or_path
    ensure_pad_token(tokenizer, model)
    keep_differentiable(model)
    return model.eval(), tokenizer


def quantization_of(model: nn.Module) -> str | None:
    """``"int8"``, or the 4-bit type (``"nf4"``, ``"fp4"``), of a bitsandbytes-quantized model; None
    for a plain one."""
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if config is None:
        return None
    if isinstance(config, dict):
        config = BitsAndBytesConfig.from_dict(config)
    if getattr(config, "load_in_8bit", False):
        return "int8"
    if getattr(config, "load_in_4bit", False):
        return config.bnb_4bit_quant_type
    return None
