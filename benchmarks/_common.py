"""Helpers shared by the benchmark scripts: threads, machine facts, base models, training on the library's
core, peft as a classifier objective, memory peaks, tables, JSON.

Nothing here is part of the library; the scripts in ``benchmarks/`` import it as a sibling module.

Example:
    >>> from _common import peak_memory, machine_info
    >>> with peak_memory() as mem:
    ...     x = torch.ones(1024, 1024)          # 4 MiB
    >>> mem.peak >= 4 * 2**20
    True
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from softprompt import transfer
from softprompt.data import Encoded, Task, encode_dataset, load_rows
from softprompt.injection.positions import last_token_index
from softprompt.train import loop
from softprompt.train.config import TrainSection
from softprompt.train.objectives import ClassificationObjective, Objective

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # real data sets; a bare clone has none

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


def benchmark_parser(doc: str, default_out: Path, quick: str) -> argparse.ArgumentParser:
    """The flags of a benchmark on the shared data: ``--quick`` (its ``quick`` run, for the tests),
    ``--out`` (the JSON), ``--threads`` and ``--data``; the description is ``doc``'s first paragraph."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out", type=Path, default=default_out, help="where the JSON goes")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared data folder")
    return parser


def quiet_libraries() -> None:
    """No progress bars or info lines from datasets and transformers: they would bury the tables."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()


# -------------------------------------------------------------------------------------- base models


def tiny_llama(seed: int = 0, vocab_size: int = 128) -> nn.Module:
    """A 2-layer Llama with grouped-query attention and a small vocabulary (``--quick`` runs)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


def gpt2_tokenizer():
    """GPT-2's tokenizer from the shared data folder (``--quick`` runs of real text), padding with EOS."""
    from transformers import GPT2Tokenizer

    tokenizer = GPT2Tokenizer.from_pretrained(SHARED_DATA / "tokenizers" / "gpt2")
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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


# -------------------------------------------------------------------------------------------- training


def encode_file(
    task: Task, path: str | os.PathLike, tokenizer, rows: int | None = None, seed: int = 0
) -> list[Encoded]:
    """The rows of a data file (a seeded ``rows`` of them, if set) encoded as ``softprompt train`` encodes them."""
    data = load_rows(path)
    if rows is not None and rows < len(data):
        data = data.shuffle(seed=seed).select(range(rows))
    examples, _ = encode_dataset(task, data, tokenizer, where=str(path))
    return examples


def train_steps(
    objective: Objective,
    recipe: TrainSection,
    examples: Sequence[Encoded],
    *,
    steps: int,
    pad_token_id: int,
    log: Callable[[int, float], None] | None = None,
) -> float:
    """``steps`` optimiser steps of ``objective`` with ``recipe``'s optimiser, schedule and clipping
    (``softprompt.train.core.step``); returns their seconds. ``log(step, loss)`` runs after each step.

    The batches are the ones ``softprompt train`` draws: ``recipe.batch_size`` rows in the seeded,
    length-grouped order of ``recipe.seed``, full batches only, epoch after epoch, padded on the
    objective's side.
    """
    started = time.perf_counter()
    for number, loss in enumerate(training_steps(objective, recipe, examples, steps, pad_token_id), start=1):
        if log is not None:
            log(number, loss)
    return time.perf_counter() - started


def training_steps(
    objective: Objective, recipe: TrainSection, examples: Sequence[Encoded], steps: int, pad_token_id: int
) -> Iterator[float]:
    """:func:`train_steps` one step at a time (the library's :func:`softprompt.transfer.training_steps`):
    each ``next`` runs one optimiser step and gives its loss (so several contestants can train in turns;
    the schedule spans ``steps``)."""
    batches = training_batches(objective, recipe, examples, pad_token_id)
    return transfer.training_steps(objective, batches, recipe, steps)


def training_batches(
    objective: Objective, recipe: TrainSection, examples: Sequence[Encoded], pad_token_id: int
) -> Iterator[dict[str, torch.Tensor]]:
    """The batches ``softprompt train`` draws from ``examples`` (the loop's own
    :func:`~softprompt.train.loop.training_batches`: ``recipe.batch_size`` rows in the seeded,
    length-grouped order of ``recipe.seed``, full batches only), epoch after epoch
    (:func:`softprompt.transfer.epochs`), padded on the objective's side."""
    batches = loop.training_batches(examples, recipe, pad_token_id, type(objective).padding_side)
    return transfer.epochs(batches.loader)


# ------------------------------------------------------------------------------------ peft objectives


def right_aligned(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's tokens moved to the left end, its pads after them: (B, T) -> (B, T).

    For models that read a row by column: peft puts its virtual tokens in front of column 0 (before
    any left pads), a bare BERT counts absolute positions from column 0. ``softprompt.train.evaluate``
    scores left-padded batches; training batches come on the objective's ``padding_side`` already.
    """
    order = torch.argsort(1 - attention_mask.long(), dim=-1, stable=True)  # tokens first, in order
    return input_ids.gather(-1, order), attention_mask.gather(-1, order)


class PeftLabelWords(ClassificationObjective):
    """A peft causal LM as a label-word classifier: the label words' logits (B, C) at each row's answer
    position, trained with their cross-entropy (the verbalizer loss)."""

    padding_side = "right"  # peft's virtual tokens then sit right before each row's text

    def answer_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Whole-vocabulary logits (B, V) at the position after each row's template.

        Only that position is projected onto the vocabulary (the loss there is the same number).
        """
        input_ids, attention_mask = right_aligned(input_ids, attention_mask)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1
        )
        hidden = out.hidden_states[-1]  # (B, P + T, H) after the final norm; P virtual tokens lead, or none
        offset = hidden.shape[1] - input_ids.shape[1]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        answer = hidden[rows, offset + last_token_index(attention_mask)]  # (B, H)
        return self.model.get_output_embeddings()(answer)

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.answer_logits(input_ids, attention_mask)[:, self.label_ids]


class PeftAnswerToken(PeftLabelWords):
    """The same classifier trained the way peft's examples train it: the causal-LM loss of the answer
    token (cross-entropy over the whole vocabulary at the answer position)."""

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.answer_logits(batch["input_ids"], batch["attention_mask"])  # (B, V)
        return F.cross_entropy(logits, self.label_ids[batch["label"]], reduction="sum")


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
