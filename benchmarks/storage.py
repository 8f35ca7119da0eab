"""The storage claim (issue 14): the bytes a task costs on disk with each method, against a full
fine-tuned copy of the model — measured by saving each one, not computed from parameter counts.

Every method is built on one base model and saved the way its library saves it:

* ``softprompt``: ``model.save(path)`` — one safetensors adapter file with its JSON record (prompt
  tuning 20 tokens, prefix tuning 10 tokens with its MLP folded away, P-tuning 20 tokens with its MLP
  encoder folded into the tokens), the library's defaults (``presets.DEFAULTS``);
* ``peft``: ``save_pretrained`` of ``PromptTuningConfig`` (20), ``PrefixTuningConfig`` (20),
  ``PromptEncoderConfig`` (20, MLP 256) and ``LoraConfig`` (r 8 on q/v, and r 8 on every linear
  layer) — the adapter folder (safetensors + ``adapter_config.json``);
* ``full fine-tuning``: ``save_pretrained`` of the whole model (safetensors shards + configs), which is
  what a fine-tuned copy per task costs.

The table gives each file's bytes, its share of the full copy, and the bytes of 100 tasks
(one shared base + 100 adapters vs 100 copies). Nothing is trained: an adapter's size does not
depend on its values.

Run:
    python benchmarks/storage.py           # SmolLM2-135M-Instruct (seconds); -> benchmarks/results/storage.json
    python benchmarks/storage.py --quick   # a tiny random Llama (the test)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, when run from anywhere

import peft  # noqa: E402
import torch  # noqa: E402
from _common import (  # noqa: E402
    benchmark_parser,
    machine_info,
    markdown_table,
    quiet_libraries,
    set_threads,
    tiny_llama,
    write_json,
)
from torch import nn  # noqa: E402

import softprompt  # noqa: E402
from softprompt.train.presets import DEFAULTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "storage.json"
TASKS = 100  # the "many tasks" column


@dataclass
class Saved:
    """One method's file(s) for one task."""

    library: str
    method: str
    setup: str
    trainable_parameters: int
    bytes: int
    files: list[str]


def folder_bytes(path: Path) -> tuple[int, list[str]]:
    """Bytes of a file or of every file under a folder, and the files' names."""
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    return sum(f.stat().st_size for f in files), [f.name for f in files]


def softprompt_saver(method: str) -> tuple[str, Callable[[nn.Module, Path], tuple[int, Path]]]:
    """softprompt's ``method`` with its defaults' prompt options (random init: the size is the same)."""
    options = {**DEFAULTS[method].prompt, "init": "random"}
    config = softprompt.methods.METHODS[method].config(**options)

    def save(base: nn.Module, path: Path) -> tuple[int, Path]:
        model = softprompt.wrap(base, config)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return trainable, model.save(path / "adapter.safetensors")

    described = ", ".join(f"{k} {v}" for k, v in options.items() if k != "init")
    return described, save


def peft_saver(make_config: Callable[[], peft.PeftConfig]) -> Callable[[nn.Module, Path], tuple[int, Path]]:
    def save(base: nn.Module, path: Path) -> tuple[int, Path]:
        config = make_config()
        model = peft.get_peft_model(base, config)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        model.save_pretrained(path)
        if isinstance(config, peft.LoraConfig):
            model.unload()  # LoRA wrapped the base's layers in place: the next method gets it bare
        return trainable, path

    return save


def full_copy(base: nn.Module, path: Path) -> tuple[int, Path]:
    base.save_pretrained(path)
    return sum(p.numel() for p in base.parameters()), path


PEFT_METHODS: dict[str, tuple[str, Callable[[], peft.PeftConfig]]] = {
    "prompt_tuning": (
        "20 tokens",
        lambda: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20),
    ),
    "prefix_tuning": (
        "20 tokens",
        lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20),
    ),
    "p_tuning": (
        "20 tokens, MLP 256",
        lambda: peft.PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=20, encoder_hidden_size=256
        ),
    ),
    "lora_qv": (
        "r 8 on q_proj, v_proj",
        lambda: peft.LoraConfig(task_type="CAUSAL_LM", r=8, target_modules=["q_proj", "v_proj"]),
    ),
    "lora_all": (
        "r 8 on every linear layer",
        lambda: peft.LoraConfig(task_type="CAUSAL_LM", r=8, target_modules="all-linear"),
    ),
}


def measure(base: nn.Module, work: Path) -> list[Saved]:
    """Save every method on ``base`` under ``work``; their sizes."""
    plan: list[tuple[str, str, str, Callable[[nn.Module, Path], tuple[int, Path]]]] = []
    for method in DEFAULTS:
        setup, save = softprompt_saver(method)
        plan.append(("softprompt", method, setup, save))
    for method, (setup, make_config) in PEFT_METHODS.items():
        plan.append(("peft", method, setup, peft_saver(make_config)))
    plan.append(("transformers", "full_finetuning", "save_pretrained of every weight", full_copy))
    saved = []
    for library, method, setup, save in plan:
        folder = work / f"{library}-{method}"
        folder.mkdir()
        trainable, path = save(base, folder)
        size, files = folder_bytes(path)
        saved.append(Saved(library, method, setup, trainable, size, files))
    return saved


def size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def table(saved: Sequence[Saved]) -> str:
    full = next(s for s in saved if s.method == "full_finetuning").bytes
    rows = [
        [
            s.library,
            s.method,
            s.setup,
            f"{s.trainable_parameters:,}",
            f"{s.bytes:,}",
            f"{100 * s.bytes / full:.3g} %",
            f"{full / s.bytes:,.0f}x",
            size(s.bytes * TASKS + (0 if s.method == "full_finetuning" else full)),
        ]
        for s in saved
    ]
    headers = [
        "library",
        "method",
        "setup",
        "trainable parameters",
        "bytes per task",
        "of a full copy",
        "smaller by",
        f"{TASKS} tasks (+ one base)",
    ]
    return markdown_table(headers, rows)


def parse_args(argv: Sequence[str] | None = None):
    parser = benchmark_parser(__doc__, DEFAULT_OUT, "a tiny random Llama instead of SmolLM2 (the test)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    quiet_libraries()
    started = time.perf_counter()
    if args.quick:
        base, name = tiny_llama(), "tiny random Llama (--quick)"
    else:
        from softprompt.hub import load_base_model

        base, _ = load_base_model("smollm2-135m-instruct")
        name = "SmolLM2-135M-Instruct"
    base.requires_grad_(False)
    dtype = str(next(base.parameters()).dtype).removeprefix("torch.")
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        saved = measure(base, Path(folder))
    print(f"### Bytes per task on disk, {name} ({dtype})\n")
    print(table(saved))
    result = {
        "machine": machine_info(),
        "model": name,
        "dtype": dtype,
        "settings": {
            "quick": args.quick,
            "tasks_column": TASKS,
            "command": "python benchmarks/storage.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        },
        "saved": [asdict(s) for s in saved],
        "elapsed_seconds": round(time.perf_counter() - started, 1),
    }
    path = write_json(args.out, result)
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
