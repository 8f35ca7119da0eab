"""Fixtures' building blocks for the training tests: a test tokenizer, tiny model folders, small data files.

Nothing here reads ``../shared`` or the network: the tokenizer is a byte-level BPE (GPT-2's scheme)
trained in memory on the words the tests use, with a ChatML chat template, so every test runs on a
bare clone.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import torch
import transformers as T
from tiny import VOCAB
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

LABEL_WORDS = {"pos": "good", "neg": "bad"}
_POSITIVE = ["a great film", "wonderful acting", "I loved it", "superb and moving", "a joy to watch"]
_NEGATIVE = ["a dull film", "terrible acting", "I hated it", "boring and slow", "a waste of time"]
_NAMES, _FOODS = ["Aromi", "Bibimbap", "Cotto", "Zizzi"], ["Italian", "French", "Indian"]

# What the BPE learns its merges from: the tests' data, templates and label words. "entail" is common
# and "entailment" absent, so " entailment" splits into " entail" + "ment" (as in GPT-2's vocabulary).
_CORPUS = [
    *_POSITIVE, *_NEGATIVE, *(f"{n} serves {f} food." for n in _NAMES for f in _FOODS),
    "Review: Sentiment: Data: Text: Table: name[ ], food[ ] Question: Answer: Support ticket: Category:",
    "good bad positive negative yes no maybe billing shipping account technical",
    "entail " * 8, "premise hypothesis sentence label one two three four five six seven eight",
]  # fmt: skip
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.cache
def _trained_bpe() -> str:
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(_CORPUS, trainer)
    return raw.to_str()


def build_tokenizer(chat_template: bool = True) -> T.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (~500 ids; any text encodes) ending texts with ``<|im_end|>``, as
    SmolLM2's does, and without a pad token (``load_base_model`` gives it one)."""
    tokenizer = T.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_bpe()), eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _save(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder


def save_small_llama(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer grouped-query Llama 64 wide (bitsandbytes' CPU kernels need rows of at least one
    64-value block) with the test tokenizer, loadable with from_pretrained."""
    torch.manual_seed(seed)
    config = T.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )  # fmt: skip
    return _save(T.LlamaForCausalLM(config), folder)


def save_tiny_gpt2(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer GPT-2 (width 16) with the test tokenizer, loadable with from_pretrained."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    config = T.GPT2Config(
        vocab_size=len(tokenizer), n_embd=16, n_layer=2, n_head=2, n_positions=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return _save(T.GPT2LMHeadModel(config), folder)


def tiny_bert_config(**options) -> T.BertConfig:
    """A 2-layer BERT (width 16) over the test tokenizer's ids."""
    return T.BertConfig(
        vocab_size=len(build_tokenizer()), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=128, **options,
    )  # fmt: skip


def save_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer BERT encoder (width 16, no task head: a run adds the one its task needs, of
    any width) with the test tokenizer."""
    torch.manual_seed(seed)
    return _save(T.BertModel(tiny_bert_config()), folder)


def save_tiny_t5(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer T5 (width 16) with the test tokenizer (its end token pads and starts)."""
    torch.manual_seed(seed)
    end = build_tokenizer().eos_token_id
    config = T.T5Config(
        vocab_size=len(build_tokenizer()), d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2,
        pad_token_id=end, eos_token_id=end, decoder_start_token_id=end,
    )  # fmt: skip
    return _save(T.T5ForConditionalGeneration(config), folder)


def classification_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` {"text", "label"} rows with labels "pos"/"neg", alternating."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        text = rng.choice(_POSITIVE if label == "pos" else _NEGATIVE) + "!" * rng.randint(0, 3)
        rows.append({"text": text, "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_classification_data(
    folder: Path, n_train: int = 48, n_dev: int = 16, seed: int = 0
) -> dict[str, Path]:
    """train/dev JSONL files of {"text", "label"} rows with labels "pos"/"neg"."""
    return {
        split: write_jsonl(folder / f"cls_{split}.jsonl", classification_rows(n, seed + offset))
        for offset, (split, n) in enumerate((("train", n_train), ("dev", n_dev)))
    }


def write_generation_data(folder: Path, n_train: int = 32, n_dev: int = 8, seed: int = 0) -> dict[str, Path]:
    """train/dev CSV files of (name, food) -> sentence rows."""
    rng = random.Random(seed)
    paths = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = ["mr,ref"]
        for _ in range(n):
            name, food = rng.choice(_NAMES), rng.choice(_FOODS)
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
        "train": {"max_steps": 6, "batch_size": 4, "eval_every": 3, "lr": 0.1, "report_to": [], **train},
        "eval": {"batch_size": 8},
        "output": {"dir": str(out), "plot": False},
    }
