"""Probe the built-in example task: SmolLM2 zero-shot accuracy vs a quickly trained soft prompt.

peft is used here only as an independent measuring instrument (the library never imports it): a
``PromptTuningConfig`` soft prompt initialised from the label words' text is trained with the
verbalizer loss — cross-entropy over the label words' first-token logits at the last real token.
Everything around it is softprompt's: the rows are encoded by the data layer, trained by the
training core (``softprompt.train.core.step``, on the batches ``softprompt train`` draws: seeded,
length-grouped, full batches) and scored on dev by ``softprompt.train.evaluate``, as the frozen model
is for zero-shot. Dev is scored one gold class at a time, which gives each class's recall (the
diagonal of the confusion matrix) besides the accuracy.

Run (about 5 minutes on 2 CPU cores):
    python benchmarks/example_task_probe.py
    python benchmarks/example_task_probe.py --steps 0        # zero-shot only
    python benchmarks/example_task_probe.py --quick          # a tiny random Llama, a few rows: seconds (the test)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, when run from anywhere
from _common import (
    PeftLabelWords,
    encode_file,
    gpt2_tokenizer,
    machine_info,
    markdown_table,
    set_threads,
    tiny_llama,
    train_steps,
    write_json,
)  # noqa: E402

from softprompt.data import ClassificationTask, Encoded  # noqa: E402
from softprompt.examples import DATA_DIR, LABEL_WORDS, TEMPLATE  # noqa: E402
from softprompt.families import model_shape  # noqa: E402
from softprompt.hub import load_base_model  # noqa: E402
from softprompt.models import SoftPromptModel  # noqa: E402
from softprompt.train.config import TrainSection  # noqa: E402
from softprompt.train.evaluate import evaluate_predictions  # noqa: E402
from softprompt.train.objectives import ClassificationObjective  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "example_task_probe.json"
MAX_LENGTH = 256  # the example's rows are 20-40 tokens: nothing is cut


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny random Llama with GPT-2's tokenizer, 32 training and 16 dev rows, 3 steps (the test)",
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="alias, folder or hub name")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--template", default=TEMPLATE)
    parser.add_argument("--steps", type=int, default=150, help="training steps (0: zero-shot only)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-2)
    parser.add_argument("--virtual-tokens", type=int, default=20)
    parser.add_argument(
        "--eval-every", type=int, default=0, help="also score dev every N steps (0: only at the end)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch order and the prompt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON goes")
    args = parser.parse_args(argv)
    args.train_rows = args.dev_rows = None
    if args.quick:
        args.steps, args.batch_size, args.virtual_tokens, args.threads = 3, 4, 4, 1
        args.train_rows, args.dev_rows = 32, 16
    return args


def score(objective, dev: Sequence[Encoded], tokenizer: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Dev accuracy and loss, and each gold class's recall (dev scored one class at a time)."""
    per_class, correct, loss = {}, 0.0, 0.0
    for index, name in enumerate(classes):
        rows = [ex for ex in dev if ex.label == index]
        if not rows:
            continue
        scores = evaluate_predictions(
            objective, rows, batch_size=32, pad_token_id=tokenizer.pad_token_id, metrics=["accuracy"]
        )
        per_class[name] = scores["accuracy"]
        correct += scores["accuracy"] * len(rows) / 100
        loss += scores["loss"] * len(rows)
    return {"accuracy": 100 * correct / len(dev), "loss": loss / len(dev), "recall": per_class}


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    transformers.logging.set_verbosity_error()
    machine = machine_info()
    if args.quick:
        tokenizer = gpt2_tokenizer()
        base = tiny_llama(vocab_size=len(tokenizer))
    else:
        base, tokenizer = load_base_model(args.model)
    base.requires_grad_(False).eval()
    task = ClassificationTask(args.template, "label", LABEL_WORDS, MAX_LENGTH)
    classes = [word for _, word in task.classes]
    label_ids = task.label_token_ids(tokenizer)  # refuses label words that share a first token
    train = encode_file(task, args.data_dir / "train.jsonl", tokenizer, args.train_rows, args.seed)
    dev = encode_file(task, args.data_dir / "dev.jsonl", tokenizer, args.dev_rows, args.seed)
    print(f"template {args.template!r}; label words {classes}")
    print(
        f"train {len(train)} rows, dev {len(dev)} rows, "
        f"mean length {sum(len(ex.input_ids) for ex in dev) / len(dev):.1f} tokens"
    )

    started = time.perf_counter()
    bare = SoftPromptModel(base, None, model_shape(base))  # the frozen model without a prompt
    zero_shot = score(ClassificationObjective(bare, label_ids), dev, tokenizer, classes)
    print(f"zero-shot dev accuracy {zero_shot['accuracy']:.1f} ({time.perf_counter() - started:.1f} s)")
    result: dict[str, Any] = {
        "date": machine["date"],
        "machine": machine,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "command": "python benchmarks/example_task_probe.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": "tiny random Llama" if args.quick else args.model,
        "train_rows": len(train),
        "dev_rows": len(dev),
        "zero_shot": zero_shot,
    }
    if args.steps > 0:
        result |= train_and_score(args, base, tokenizer, task, train, dev)
    print()
    print(tables(result, classes))
    print(f"\nwrote {write_json(args.out, result)}")
    return result


def train_and_score(
    args: argparse.Namespace, base: torch.nn.Module, tokenizer: Any, task: ClassificationTask, train, dev
) -> dict[str, Any]:
    """Train peft's prompt on ``train`` with softprompt's core; dev scores, losses and times."""
    classes = [word for _, word in task.classes]
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        tokenizer.save_pretrained(tokenizer_dir)  # peft's text init reads the tokenizer from a folder
        torch.manual_seed(args.seed)
        config = PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=args.virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=" ".join(classes),
            tokenizer_name_or_path=tokenizer_dir,
        )
        objective = PeftLabelWords(get_peft_model(base, config).eval(), task.label_token_ids(tokenizer))
    # AdamW as torch defines it (weight decay 0.01), a constant lr, no clipping.
    recipe = TrainSection(
        lr=args.lr,
        weight_decay=0.01,
        max_grad_norm=None,
        max_steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    losses, dev_curve = [], []

    def log(step: int, loss: float) -> None:
        losses.append(loss)
        if step % 10 == 0 or step == args.steps:
            print(f"step {step:4d} loss {loss:.3f} {time.perf_counter() - started:6.1f} s", flush=True)
        if args.eval_every and step % args.eval_every == 0 and step < args.steps:
            accuracy = score(objective, dev, tokenizer, classes)["accuracy"]
            dev_curve.append({"step": step, "accuracy": accuracy})
            print(f"  dev accuracy at step {step}: {accuracy:.1f}", flush=True)

    # CPU seconds as well as wall seconds: on a shared machine wall time also counts other jobs.
    started, cpu_started = time.perf_counter(), time.process_time()
    train_steps(objective, recipe, train, steps=args.steps, pad_token_id=tokenizer.pad_token_id, log=log)
    cpu_seconds, seconds = time.process_time() - cpu_started, time.perf_counter() - started
    return {
        "trained": score(objective, dev, tokenizer, classes),
        "steps": args.steps,
        "train_loss": losses,
        "dev_curve": dev_curve,
        "train_seconds": seconds,
        "train_cpu_seconds": cpu_seconds,
    }


def tables(result: dict, classes: Sequence[str]) -> str:
    """Accuracy and each class's recall, zero-shot and trained."""
    runs = [("zero-shot", result["zero_shot"])]
    if "trained" in result:
        runs.append((f"peft prompt tuning, {result['steps']} steps", result["trained"]))
    rows = [
        [
            name,
            f"{s['accuracy']:.1f}",
            f"{s['loss']:.3f}",
            *[f"{s['recall'][c]:.1f}" if c in s["recall"] else "-" for c in classes],
        ]
        for name, s in runs
    ]
    table = markdown_table(["", "dev accuracy", "dev loss", *[f"recall {c}" for c in classes]], rows)
    if "trained" not in result:
        return table
    gain = result["trained"]["accuracy"] - result["zero_shot"]["accuracy"]
    return (
        f"{table}\n\nSUMMARY {result['model']}: zero-shot {result['zero_shot']['accuracy']:.1f}, trained "
        f"{result['trained']['accuracy']:.1f} ({gain:+.1f} points); {result['steps']} steps, batch "
        f"{result['settings']['batch_size']}, lr {result['settings']['lr']}, "
        f"{result['settings']['virtual_tokens']} virtual tokens, train {result['train_seconds']:.0f} s wall, "
        f"{result['train_cpu_seconds']:.0f} CPU-s on {result['settings']['threads']} threads"
    )


if __name__ == "__main__":
    main()
