"""Helpers shared by the benchmark scripts: threads, machine facts, base models, memory peaks, tables, JSON.

Nothing here is part of the library; the scripts in ``benchmarks/`` import it as a sibling module.

Example:
    >>> from _common import peak_memory, machine_info
    >>> with peak_memory() as mem:
    ...     x = torch.ones(1024, 1024)          # 4 MiB
    >>> mem.peak >= 4 * 2**20
    True
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

# ------------------------------------------------------------------------------------------- machine


def set_threads(threads: int) -> None:
    """Pin torch's intra-op thread pool: CPU timings are only comparable at a fixed thread count."""
    torch.set_num_threads(threads)


def machine_info() -> dict:
    """Date, machine and library versions: what a benchmark's numbers are only valid for."""
    import peft
    import transformers

    import softprompt

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": _cpu_model() or platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "softprompt": softprompt.__version__,
        "softprompt_source": str(Path(softprompt.__file__).parent),  # which checkout's library ran
        # Other processes on a 2-core machine inflate wall-clock times; the load tells the reader.
        "load_average_at_start": list(os.getloadavg()),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# -------------------------------------------------------------------------------------- base models


def tiny_llama(seed: int = 0) -> nn.Module:
    """A 2-layer Llama with grouped-query attention and a 128-token vocabulary (``--quick`` runs)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


def gpt2_small_random(seed: int = 0) -> nn.Module:
    """GPT-2 small's shape (``GPT2Config()`` defaults: vocab 50,257, 12 layers, hidden 768), random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config()).eval()


def smollm2() -> nn.Module:
    """The real SmolLM2-135M-Instruct (fp32), through softprompt's loader and its conversion cache."""
    from softprompt.hub import load_base_model

    model, _ = load_base_model("smollm2-135m-instruct")
    return model.eval()


BASE_MODELS: dict[str, Callable[[], nn.Module]] = {
    "smollm2": smollm2,
    "gpt2-small-random": gpt2_small_random,
    "tiny-llama": tiny_llama,
}


def load_model(name: str) -> nn.Module:
    """One of ``BASE_MODELS`` by name, frozen and in eval mode (no dropout: steps are comparable)."""
    if name not in BASE_MODELS:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(BASE_MODELS)}")
    return BASE_MODELS[name]().requires_grad_(False)


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (tied weights counted once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


# ------------------------------------------------------------------------------------------- memory


class PeakMemory:
    """Result of :func:`peak_memory`: ``peak`` and ``end`` bytes above what was allocated at the start."""

    peak: int = 0
    end: int = 0


@contextmanager
def peak_memory():
    """Measure the peak of bytes held by torch's CPU allocator above the level at entry.

    Why this measure: CPU torch has no ``max_memory_allocated``; ``tracemalloc`` does not see torch's
    C++ allocations, and peak RSS mixes in the Python heap, freed-but-unreturned malloc arenas and
    the model's own pages. With ``profile_memory=True`` the profiler records every allocation and
    free of c10's CPU allocator — activations, saved tensors, gradients, optimiser state and
    temporaries inside ops — in order, so the running sum's maximum is the step's true peak of
    live tensor bytes, the CPU analogue of ``torch.cuda.max_memory_allocated() - start``. Frees of
    tensors allocated before entry are not seen (they would only lower the peak), so keep such
    frees out of the window. Timing is never taken under the profiler.
    """
    from torch.profiler import ProfilerActivity, profile

    result = PeakMemory()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield result
    # `[memory]` events: nbytes > 0 for an allocation, < 0 for a free.
    deltas = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]"
    )
    level = 0
    for _, delta in deltas:
        level += delta
        result.peak = max(result.peak, level)
    result.end = level


# ------------------------------------------------------------------------------------ summary stats


def summary(values: Sequence[float]) -> dict:
    """Median with the spread (min, max, and all values) of repeated measurements."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": list(values),
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; numbers should already be formatted as strings."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` as indented JSON (creating the folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path
