"""Which dtype the frozen base model computes in: bfloat16 where the hardware computes it natively, else float32.

A soft prompt never changes the base model, so the base needs no fp32 master weights: only the prompt
(and its optimiser state) must stay fp32, and they do whatever the base's dtype. bf16 halves the
base's memory and, on hardware with bf16 arithmetic, its forward and backward time (0.64x the fp32
time for SmolLM2 on an AVX-512 BF16 CPU, ``benchmarks/precision.py``). Without such hardware bf16 is
emulated — slower than fp32 — so ``auto`` picks bf16 only where it is native:

* a CUDA GPU for which ``torch.cuda.is_bf16_supported()`` holds (Ampere and later);
* an x86 CPU with the ``avx512_bf16`` or ``amx_bf16`` instructions (``/proc/cpuinfo`` flags).

Models whose run trains a new head inside the base (encoders' classifier heads) keep fp32 under
``auto``: the head is one of the base's own modules and would be created in the base's dtype.

Examples:
    >>> choose_dtype("float32").dtype
    torch.float32
    >>> choose_dtype("auto", cpu_flags=frozenset({"avx2"}), cuda=False).message()
    'base dtype: float32 (this CPU has no native bf16 arithmetic; set model.dtype: bfloat16 to override)'
    >>> choose_dtype("auto", cpu_flags=frozenset({"avx512_bf16"}), cuda=False).message()
    'base dtype: bfloat16 (this CPU computes bf16 natively: avx512_bf16; set model.dtype: float32 to override)'
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

logger = logging.getLogger(__name__)

DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# CPU instruction sets with bf16 arithmetic, best first (AMX tiles, then AVX-512 dot products).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class DtypeChoice:
    """The base model's dtype and why it was chosen.

    Attributes:
        dtype: what the frozen base computes in.
        reason: why, in a few words ("this CPU computes bf16 natively: avx512_bf16", "set in model.dtype").
        automatic: whether ``auto`` chose it (then the message says how to override it).
    """

    dtype: torch.dtype
    reason: str
    automatic: bool

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def message(self) -> str:
        """The line a run prints at its start."""
        if not self.automatic:
            return f"base dtype: {self.name} ({self.reason})"
        other = "float32" if self.dtype != torch.float32 else "bfloat16"
        return f"base dtype: {self.name} ({self.reason}; set model.dtype: {other} to override)"


def choose_dtype(
    requested: DtypeName = "auto",
    *,
    trains_base_head: bool = False,
    cpu_flags: frozenset[str] | None = None,
    cuda: bool | None = None,
) -> DtypeChoice:
    """The dtype of a run's frozen base: ``requested`` itself, or for ``"auto"`` bf16 where it is native.

    Args:
        requested: ``"auto"`` or a dtype name (``model.dtype`` of the run config).
        trains_base_head: the run trains a new head inside the base model (encoders' classifiers):
            ``auto`` then keeps fp32, so the head trains in fp32.
        cpu_flags: the CPU's instruction-set flags (default: read from ``/proc/cpuinfo``).
        cuda: whether the model runs on a CUDA GPU (default: ``torch.cuda.is_available()``).

    Examples:
        >>> choose_dtype("auto", trains_base_head=True).reason
        'a new task head trains inside the base model'
        >>> choose_dtype("bf16")
        Traceback (most recent call last):
        ValueError: unknown dtype 'bf16'; choose auto, float32, bfloat16 or float16
    """
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"unknown dtype {requested!r}; choose auto, float32, bfloat16 or float16")
        return DtypeChoice(DTYPES[requested], "set in model.dtype", automatic=False)
    if trains_base_head:
        return DtypeChoice(torch.float32, "a new task head trains inside the base model", automatic=True)
    if torch.cuda.is_available() if cuda is None else cuda:
        if torch.cuda.is_bf16_supported():
            return DtypeChoice(torch.bfloat16, "this GPU computes bf16 natively", automatic=True)
        return DtypeChoice(torch.float32, "this GPU has no native bf16 arithmetic", automatic=True)
    native = native_bf16_flag(cpu_flags)
    if native is not None:
        return DtypeChoice(torch.bfloat16, f"this CPU computes bf16 natively: {native}", automatic=True)
    return DtypeChoice(torch.float32, "this CPU has no native bf16 arithmetic", automatic=True)


def native_bf16_flag(cpu_flags: frozenset[str] | None = None) -> str | None:
    """The CPU's best instruction set with bf16 arithmetic (``amx_bf16``, ``avx512_bf16``), or None.

    Examples:
        >>> native_bf16_flag(frozenset({"avx512f", "avx512_bf16", "amx_bf16"}))
        'amx_bf16'
        >>> native_bf16_flag(frozenset({"avx2"})) is None
        True
    """
    flags = cpu_flags if cpu_flags is not None else read_cpu_flags()
    return next((flag for flag in NATIVE_BF16_FLAGS if flag in flags), None)


def read_cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The ``flags`` of the first CPU in ``/proc/cpuinfo``; empty where there is no such file (macOS,
    Windows: ``auto`` then keeps fp32).

    Examples:
        >>> read_cpu_flags(tmp_dir / "missing")
        frozenset()
    """
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()
