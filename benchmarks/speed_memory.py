"""Training step time and peak memory of softprompt vs peft, and vs the frozen model's floor.

For each base model, batch style and method, four contestants train on the same batch:

* ``softprompt``  — the library (classification: ``hidden_states`` then logits at the scored position;
                    generation: ``forward(labels=..., logits_at="labels")``);
* ``peft``        — how peft users write it: ``model(input_ids, attention_mask, labels=labels).loss``,
                    labels -100 except the scored tokens (full-vocabulary logits at every position);
* ``peft-scored`` — peft with logits only where the loss needs them (``logits_to_keep``), the
                    fairest peft can do;
* ``floor``       — the bare frozen model on the same tokens, without any prompt: forward with
                    ``inputs_embeds`` requiring grad, logits only at the scored positions, backward
                    to the inputs. No method can train a prompt for less.

A step is forward + backward + AdamW step (the floor has nothing to step). Steps are timed
interleaved — every round runs every contestant once, the order rotated each round — so a slow
spell of the machine hits all of them; medians are reported with the spread. Every contestant
has run three untimed steps before the first timed round (two for memory, one for FLOPs). Memory is the peak of bytes live in torch's CPU allocator from before the adapter and
optimiser are built through two steps (so it counts the trainable state, AdamW's moments and
the peak of activations), above what the loaded model already held; see ``_common.peak_memory``.
Matrix-multiply FLOPs per step are counted (``torch.utils.flop_counter``): work that other
processes on the machine cannot distort.

Run:
    python benchmarks/speed_memory.py --threads 1              # the run in RESULTS.md (13 min here)
    python benchmarks/speed_memory.py --quick                  # tiny model, seconds (the tests run this)
    python benchmarks/speed_memory.py --models smollm2 --methods prompt_tuning --repeats 9
    PYTHONPATH=/tmp/sp-before/src python benchmarks/speed_memory.py --contestants softprompt,floor
                                                               # another checkout's library, same harness
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import peft
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, when run from anywhere
from _common import (  # noqa: E402
    BASE_MODELS,
    load_model,
    machine_info,
    markdown_table,
    parameter_bytes,
    peak_memory,
    set_threads,
    summary,
    write_json,
)

import softprompt  # noqa: E402

LR = 1e-3
IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------- what is run

# method -> (softprompt config, peft config), both given the number of virtual tokens P.
METHODS: dict[str, tuple[Callable, Callable]] = {
    "prompt_tuning": (
        lambda p: softprompt.PromptTuningConfig(num_virtual_tokens=p, init="vocab"),
        lambda p: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=p),
    ),
    "prefix_tuning": (
        lambda p: softprompt.PrefixTuningConfig(num_virtual_tokens=p),
        lambda p: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=p),
    ),
    "prefix_tuning_mlp512": (
        lambda p: softprompt.PrefixTuningConfig(num_virtual_tokens=p, projection_hidden_size=512),
        lambda p: peft.PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=p, prefix_projection=True, encoder_hidden_size=512
        ),
    ),
    "p_tuning_mlp": (
        lambda p: softprompt.PTuningConfig(num_virtual_tokens=p, encoder="mlp", encoder_hidden_size=256),
        lambda p: peft.PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=p, encoder_hidden_size=256
        ),
    ),
}

CONTESTANTS = ("softprompt", "peft", "peft-scored", "floor")


@dataclass(frozen=True)
class BatchStyle:
    """``batch_size`` rows of ``seq_len`` tokens; the loss is on each row's last ``scored`` tokens."""

    name: str
    batch_size: int
    seq_len: int
    scored: int


@dataclass(frozen=True)
class Batch:
    """The tensors every contestant trains on. ``labels`` is -100 except the last ``scored`` columns."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T), all ones: no padding, so no contestant skips work
    labels: torch.Tensor  # (B, T)
    scored: int

    @property
    def targets(self) -> torch.Tensor:
        """(B, k): the scored tokens, predicted at positions T-k-1 .. T-2."""
        return self.input_ids[:, -self.scored :]


def make_batch(style: BatchStyle, vocab_size: int, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    # Avoid the lowest ids, where tokenizers keep their special tokens.
    ids = torch.randint(
        min(10, vocab_size // 2), vocab_size, (style.batch_size, style.seq_len), generator=generator
    )
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -style.scored :] = ids[:, -style.scored :]
    return Batch(ids, torch.ones_like(ids), labels, style.scored)


def scored_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Cross-entropy of (B, k, V) or (B * k, V) logits at the scored positions against the scored tokens."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch.targets.flatten())


# Why every head input below is contiguous: a sliced (B, k, H) view cannot be folded into one
# (B * k, H) matrix, so `linear` runs a batched matmul that reads the (V, H) head once per row —
# measured here 3x slower for the head's forward + backward (SmolLM2: +85 ms a step for k = 1,
# +250 ms for k = 16). Every contestant gets the fast path (softprompt's `logits` flattens itself).


@contextmanager
def contiguous_head_input(base: nn.Module):
    """Make the output head's input contiguous while peft runs (``logits_to_keep`` slices it)."""
    handle = base.get_output_embeddings().register_forward_pre_hook(
        lambda _module, args: (args[0].contiguous(), *args[1:])
    )
    try:
        yield
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------ step builders
# Each builder creates its trainable state (adapter + AdamW) and returns (step, trainable parameters).
# Built inside the memory window, so the peak includes parameters, gradients and optimiser state.


def build_floor(base: nn.Module, method: str, batch: Batch, virtual: int):
    backbone, head, embed = base.base_model, base.get_output_embeddings(), base.get_input_embeddings()
    k = batch.scored

    def step() -> None:
        embeds = embed(batch.input_ids).detach().requires_grad_(True)  # (B, T, E)
        hidden = backbone(inputs_embeds=embeds, attention_mask=batch.attention_mask).last_hidden_state
        scored = hidden[:, -k - 1 : -1].reshape(-1, hidden.shape[-1])  # (B * k, H), contiguous
        scored_loss(head(scored), batch).backward()  # logits (B * k, V)

    return step, 0


def build_softprompt(base: nn.Module, method: str, batch: Batch, virtual: int):
    model = softprompt.wrap(base, METHODS[method][0](virtual))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    k = batch.scored

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if k == 1:  # classification: logits at the one scored position only
            where = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
            where[:, -2] = True  # the model's own logits at the scored position only: (B, V)
            loss = scored_loss(model.logits_where(batch.input_ids, batch.attention_mask, where), batch)
        else:
            loss = model(batch.input_ids, batch.attention_mask, labels=batch.labels, logits_at="labels").loss
        loss.backward()
        optimizer.step()

    return step, sum(p.numel() for p in params)


def _peft_model(base: nn.Module, method: str, virtual: int):
    # Several peft models share one base model here (prompt learning does not change its modules);
    # silence peft's "modify a model a second time" warning, which is about other tuner types.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base, METHODS[method][1](virtual))
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params, torch.optim.AdamW(params, lr=LR)


def build_peft(base: nn.Module, method: str, batch: Batch, virtual: int):
    model, params, optimizer = _peft_model(base, method, virtual)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
        ).loss.backward()
        optimizer.step()

    return step, sum(p.numel() for p in params)


def build_peft_scored(base: nn.Module, method: str, batch: Batch, virtual: int):
    model, params, optimizer = _peft_model(base, method, virtual)
    k = batch.scored

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        # The virtual tokens (prompt tuning, P-tuning) come first, so the last k + 1 positions of
        # peft's sequence are the user's; the very last predicts nothing that is scored.
        with contiguous_head_input(base):
            logits = model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=k + 1
            ).logits[:, :-1]  # (B, k, V)
        scored_loss(logits, batch).backward()
        optimizer.step()

    return step, sum(p.numel() for p in params)


BUILDERS = {
    "softprompt": build_softprompt,
    "peft": build_peft,
    "peft-scored": build_peft_scored,
    "floor": build_floor,
}


@dataclass
class Entry:
    """One contestant on one (model, style, method); the floor has method ``None``."""

    contestant: str
    method: str | None
    step: Callable[[], None] | None = None
    trainable: int = 0
    peak_bytes: int = 0
    held_bytes: int = 0  # still allocated after the window: trainable parameters + optimiser state
    flops: int = 0  # matrix-multiply FLOPs of one step (torch.utils.flop_counter)
    times: list[float] | None = None
    cpu_times: list[float] | None = None


# -------------------------------------------------------------------------------------- measuring


def measure(base: nn.Module, style: BatchStyle, methods: list[str], args) -> list[Entry]:
    """Memory (one window per contestant), FLOPs (one step each), then interleaved timing rounds."""
    batch = make_batch(style, base.config.vocab_size)
    entries = [Entry("floor", None)] + [
        Entry(c, m) for m in methods for c in args.contestants if c != "floor"
    ]

    # Warm the allocator and oneDNN's primitive caches once, outside every window, so the first
    # contestant measured does not pay the process's one-time costs.
    warm, _ = build_floor(base, "", batch, args.virtual_tokens)
    warm()
    base.zero_grad(set_to_none=True)

    for entry in entries:
        gc.collect()
        with peak_memory() as mem:
            entry.step, entry.trainable = BUILDERS[entry.contestant](
                base, entry.method, batch, args.virtual_tokens
            )
            for _ in range(2):  # the second step runs with AdamW's moments allocated
                entry.step()
        entry.peak_bytes, entry.held_bytes = mem.peak, mem.end
        entry.times, entry.cpu_times = [], []

    # Work per step, counted rather than timed, so it is immune to other processes on the machine.
    # Outside the memory windows (the counter changes when tensors are freed); doubles as a warm-up.
    for entry in entries:
        with FlopCounterMode(display=False) as counter:
            entry.step()
        entry.flops = counter.get_total_flops()

    for round_ in range(args.warmup + args.repeats):
        shift = round_ % len(entries)
        for entry in entries[shift:] + entries[:shift]:
            wall, cpu = time.perf_counter(), time.process_time()
            entry.step()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if round_ >= args.warmup:
                entry.times.append(wall)
                entry.cpu_times.append(cpu)
        print(
            f"  {style.name}: round {round_ + 1}/{args.warmup + args.repeats} done",
            file=sys.stderr,
            flush=True,
        )
    return entries


# -------------------------------------------------------------------------------------- reporting

GOALS = {
    # (style, quantity) -> largest allowed softprompt / peft ratio (issue 6)
    ("classification", "time"): 0.75,
    ("classification", "memory"): 0.6,
    ("generation", "time"): 1.0,
    ("generation", "memory"): 1.0,
}
FLOOR_GOAL = 1.05


def ratios(ours: Entry, theirs: Entry) -> dict:
    """Ratio of median times (with the range of the per-round ratios) and of memory peaks."""
    paired = [a / b for a, b in zip(ours.times, theirs.times, strict=True)]
    return {
        "time": statistics.median(ours.times) / statistics.median(theirs.times),
        "time_per_round_min": min(paired),
        "time_per_round_max": max(paired),
        "memory": ours.peak_bytes / theirs.peak_bytes if theirs.peak_bytes else float("nan"),
        "cpu_time": statistics.median(ours.cpu_times) / statistics.median(theirs.cpu_times),
        "flops": ours.flops / theirs.flops if theirs.flops else float("nan"),
    }


def goal_for(style: str, quantity: str, versus: str) -> float:
    return FLOOR_GOAL if versus == "floor" else GOALS.get((style, quantity), 1.0)


def mark(value: float, goal: float) -> str:
    return f"{value:.2f} {'✓' if value <= goal else '✗'}"


def ms(entry: Entry) -> str:
    med = statistics.median(entry.times) * 1e3
    return f"{med:.0f} ({min(entry.times) * 1e3:.0f}–{max(entry.times) * 1e3:.0f})"


def gflop(entry: Entry) -> str:
    return f"{entry.flops / 1e9:.3g}"


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def style_tables(style: BatchStyle, entries: list[Entry], records: list[dict]) -> str:
    floor = entries[0]
    by = {(e.contestant, e.method): e for e in entries}
    methods = list(dict.fromkeys(e.method for e in entries[1:]))
    peers = [c for c in CONTESTANTS if c != "softprompt" and any(e.contestant == c for e in entries)]
    time_rows, mem_rows, work_rows = [], [], []
    for method in methods:
        ours = by["softprompt", method]
        theirs = [floor if c == "floor" else by[c, method] for c in peers]
        vs = {c: ratios(ours, entry) for c, entry in zip(peers, theirs, strict=True)}
        records.append({"style": style.name, "method": method, "softprompt_vs": vs})
        time_rows.append(
            [method, ms(ours), *[ms(e) for e in theirs]]
            + [mark(vs[c]["time"], goal_for(style.name, "time", c)) for c in vs]
        )
        mem_rows.append(
            [method, f"{ours.trainable:,}", mib(ours.peak_bytes), *[mib(e.peak_bytes) for e in theirs]]
            + [mark(vs[c]["memory"], goal_for(style.name, "memory", c)) for c in vs]
        )
        work_rows.append(
            [method, gflop(ours), *[gflop(e) for e in theirs]] + [f"{vs[c]['flops']:.2f}" for c in vs]
        )
    title = (
        f"{style.name}: batch {style.batch_size} × {style.seq_len} tokens, loss on the last "
        f"{style.scored} token{'s' if style.scored > 1 else ''} of each row"
    )
    ratio_heads = [f"÷ {c}" for c in peers]
    names = ["softprompt", *peers]
    time_table = markdown_table(["method", *[f"{c} ms" for c in names], *ratio_heads], time_rows)
    mem_table = markdown_table(["method", "trainable", *[f"{c} MiB" for c in names], *ratio_heads], mem_rows)
    work_table = markdown_table(["method", *[f"{c} GFLOP" for c in names], *ratio_heads], work_rows)
    return (
        f"{title}\n\nStep time, median (min–max):\n\n{time_table}\n\n"
        f"Peak training memory above the loaded model:\n\n{mem_table}\n\n"
        f"Matrix-multiply work per step (counted, not timed):\n\n{work_table}\n"
    )


def entry_record(model: str, style: BatchStyle, entry: Entry) -> dict:
    return {
        "model": model,
        "style": style.name,
        "method": entry.method,
        "contestant": entry.contestant,
        "trainable_parameters": entry.trainable,
        "step_seconds": summary(entry.times),
        "step_cpu_seconds": summary(entry.cpu_times),
        "peak_bytes": entry.peak_bytes,
        "held_bytes_after": entry.held_bytes,
        "flops": entry.flops,
    }


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Writes the tables to stdout and everything measured to --out (JSON).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny model, small batches, 2 repeats, 1 thread: seconds (a smoke test, not a measurement)",
    )
    parser.add_argument(
        "--models",
        default="smollm2,gpt2-small-random",
        help=f"comma-separated, from: {', '.join(BASE_MODELS)}",
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated, from: {', '.join(METHODS)}"
    )
    parser.add_argument("--styles", default="classification,generation", help="comma-separated batch styles")
    parser.add_argument(
        "--contestants",
        default=",".join(CONTESTANTS),
        help="comma-separated, from: " + ", ".join(CONTESTANTS) + " (softprompt and the floor always run)",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed rounds (each runs every contestant once)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="extra untimed rounds (every contestant has already run 3 untimed steps: 2 for memory, 1 for FLOPs)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=48, help="real tokens per row")
    parser.add_argument("--virtual-tokens", type=int, default=20, help="prompt length P for every method")
    parser.add_argument(
        "--generation-scored", type=int, default=16, help="scored tokens per row, generation style"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="torch.set_num_threads (this machine has 2 cores)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speed_memory.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.repeats, args.warmup, args.threads = "tiny-llama", 2, 0, 1
        args.batch_size, args.seq_len, args.virtual_tokens, args.generation_scored = 2, 12, 4, 4
    args.models, args.methods, args.styles, args.contestants = (
        s.split(",") for s in (args.models, args.methods, args.styles, args.contestants)
    )
    for name, known in (
        ("method", METHODS),
        ("style", ("classification", "generation")),
        ("contestant", CONTESTANTS),
    ):
        unknown = [x for x in getattr(args, name + "s") if x not in known]
        if unknown:
            parser.error(f"unknown {name} {unknown}; choose from {', '.join(known)}")
    # Every ratio is softprompt's over another contestant's, and the floor is what all are read against.
    args.contestants = [c for c in CONTESTANTS if c in {"softprompt", "floor", *args.contestants}]
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    styles = {
        "classification": BatchStyle("classification", args.batch_size, args.seq_len, 1),
        "generation": BatchStyle("generation", args.batch_size, args.seq_len, args.generation_scored),
    }
    payload = {
        "benchmark": "speed_memory",
        "command": " ".join(
            ["python", "benchmarks/speed_memory.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": machine_info(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "goals": {"vs_peft": {f"{s}/{q}": g for (s, q), g in GOALS.items()}, "vs_floor": FLOOR_GOAL},
        "models": {},
        "entries": [],
        "ratios": [],
    }
    started = time.perf_counter()
    for name in args.models:
        base = load_model(name)
        # Move everything alive now (modules, the model) out of the collector's view: the
        # gc.collect() before each memory window then takes milliseconds instead of ~0.4 s.
        gc.collect()
        gc.freeze()
        info = {
            "class": type(base).__name__,
            "parameter_mib": parameter_bytes(base) / 2**20,
            "layers": base.config.num_hidden_layers,
            "hidden": base.config.hidden_size,
            "vocab": base.config.vocab_size,
            "attention": base.config._attn_implementation,
        }
        payload["models"][name] = info
        print(
            f"## {name} ({info['class']}, {info['layers']} layers, hidden {info['hidden']}, "
            f"vocab {info['vocab']:,}, {info['parameter_mib']:.0f} MiB fp32, {info['attention']} attention)\n",
            flush=True,
        )
        for style_name in args.styles:
            style = styles[style_name]
            print(f"{name} / {style_name} ...", file=sys.stderr, flush=True)
            entries = measure(base, style, args.methods, args)
            records: list[dict] = []
            tables = style_tables(style, entries, records)
            payload["ratios"] += [{"model": name, **r} for r in records]
            payload["entries"] += [entry_record(name, style, e) for e in entries]
            write_json(args.out, payload)  # after every style: a long run that is stopped keeps its results
            print(tables, flush=True)
        del base
        gc.unfreeze()
        gc.collect()
    payload["machine"]["load_average_at_end"] = list(os.getloadavg())
    payload["seconds"] = time.perf_counter() - started
    print(
        f"{len(args.models)} model(s) in {payload['seconds']:.0f} s; torch threads {torch.get_num_threads()}; "
        f"load average at start {payload['machine']['load_average_at_start'][0]:.1f}, "
        f"at end {payload['machine']['load_average_at_end'][0]:.1f}"
    )
    print(f"wrote {write_json(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
