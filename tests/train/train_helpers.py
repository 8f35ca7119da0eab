"""Fixtures' building blocks for the training tests: a tiny GPT-2 folder and small data files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
import transformers as T

GPT2_TOKENIZER = Path(__file__).resolve().parents[3] / "shared" / "data" / "tokenizers" / "gpt2"

LABEL_WORDS = {"pos": "good", "neg": "bad"}
_POSITIVE = ["a great film", "wonderful acting", "I loved it", "superb and moving", "a joy to watch"]
_NEGATIVE = ["a dull film", "terrible acting", "I hated it", "boring and slow", "a waste of time"]


def save_tiny_gpt2(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer GPT-2 (width 16) with the real GPT-2 tokenizer, loadable with from_pretrained."""
    torch.manual_seed(seed)
    config = T.GPT2Config(vocab_size=50257, n_embd=16, n_layer=2, n_head=2, n_positions=256)
    model = T.GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    tokenizer = T.GPT2Tokenizer.from_pretrained(GPT2_TOKENIZER)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer BERT sequence classifier (width 16, 2 labels) with the GPT-2 tokenizer."""
    torch.manual_seed(seed)
    config = T.BertConfig(
        vocab_size=50257, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=128, num_labels=2,
    )  # fmt: skip
    T.BertForSequenceClassification(config).save_pretrained(folder)
    T.GPT2Tokenizer.from_pretrained(GPT2_TOKENIZER).save_pretrained(folder)
    return folder


def save_tiny_t5(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer T5 (width 16) with the GPT-2 tokenizer (its end-of-text token pads and starts)."""
    torch.manual_seed(seed)
    eos = 50256
    config = T.T5Config(
        vocab_size=50257, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2,
        pad_token_id=eos, eos_token_id=eos, decoder_start_token_id=eos,
    )  # fmt: skip
    T.T5ForConditionalGeneration(config).save_pretrained(folder)
    T.GPT2Tokenizer.from_pretrained(GPT2_TOKENIZER).save_pretrained(folder)
    return folder


def write_classification_data(
    folder: Path, n_train: int = 48, n_dev: int = 16, seed: int = 0
) -> dict[str, Path]:
    """train/dev JSONL files of {"text", "label"} rows with labels "pos"/"neg"."""
    rng = random.Random(seed)
    paths = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = []
        for i in range(n):
            label = "pos" if i % 2 == 0 else "neg"
            text = rng.choice(_POSITIVE if label == "pos" else _NEGATIVE) + "!" * rng.randint(0, 3)
            rows.append({"text": text, "label": label})
        paths[split] = folder / f"cls_{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def write_generation_data(folder: Path, n_train: int = 32, n_dev: int = 8, seed: int = 0) -> dict[str, Path]:
    """train/dev CSV files of (name, food) -> sentence rows."""
    rng = random.Random(seed)
    names, foods = ["Aromi", "Bibimbap", "Cotto", "Zizzi"], ["Italian", "French", "Indian"]
    paths = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = ["mr,ref"]
        for _ in range(n):
            name, food = rng.choice(names), rng.choice(foods)
            lines.append(f'"name[{name}], food[{food}]","{name} serves {food} food."')
        paths[split] = folder / f"gen_{split}.csv"
        paths[split].write_text("\n".join(lines) + "\n")
    return paths


def classification_config(model_dir: Path, data: dict[str, Path], out: Path, **train) -> dict:
    """A raw run config for the tiny classification task (absolute paths)."""
    return {
        "model": {"name_or_path": str(model_dir)},
        "prompt": {"method": "prompt_tuning", "num_virtual_tokens": 4},
        "task": {
            "kind": "classification",
            "template": "Review: {text}\nSentiment:",
            "label_words": LABEL_WORDS,
            "max_length": 32,
        },
        "data": {"train": str(data["train"]), "dev": str(data["dev"])},
        "train": {"max_steps": 6, "batch_size": 4, "eval_every": 3, "lr": 0.1, **train},
        "eval": {"batch_size": 8},
        "output": {"dir": str(out), "tensorboard": False, "plot": False},
    }
