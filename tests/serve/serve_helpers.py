"""What the server tests share: the tasks, a word-level tokenizer with a chat template, the app over
them (in-process, or a real uvicorn server on loopback), and the library's own answers to compare with."""

from __future__ import annotations

import contextlib
import threading
import time

import torch
import transformers as T
import uvicorn
from tiny import VOCAB
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

import softprompt
from softprompt.bank import TaskBank
from softprompt.serve.app import ServerSettings, create_app
from softprompt.serve.registry import TaskRegistry
from softprompt.serve.scheduler import LocalEngine

BARE = "tiny-llama"
# One task of each method, with prompts large enough to change what the model says.
TASKS = {
    "prompt": softprompt.PromptTuningConfig(num_virtual_tokens=5, init="random", seed=1),
    "prefix": softprompt.PrefixTuningConfig(num_virtual_tokens=3, init="random", random_scale=1.0, seed=2),
    "ptuning": softprompt.PTuningConfig(num_virtual_tokens=4, init="random", seed=3),
    "ptuning_lstm": softprompt.PTuningConfig(
        num_virtual_tokens=6, encoder="lstm", encoder_hidden_size=8, init="random", seed=4
    ),
}
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant{% endif %}"
)


def make_tokenizer() -> T.PreTrainedTokenizerFast:
    """Word-level over the tiny models' 96 ids: special tokens, then the words w4 ... w95."""
    words = ["<pad>", "</s>", "<s>", "<unk>"] + [f"w{i}" for i in range(4, VOCAB)]
    words[4:9] = ["user", "assistant", "system", "hello", "world"]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = T.PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_app(base, tokenizer, adapters, settings=None, **engine_options):
    """(app, engine, registry) serving every adapter on ``base``."""
    bank = TaskBank(base)
    engine = LocalEngine(bank, tokenizer, name=BARE, **engine_options)
    registry = TaskRegistry(bank, engine)
    for name, path in adapters.items():
        registry.add_file(name, path)
    return create_app(engine, registry, tokenizer, settings or ServerSettings()), engine, registry


def greedy_tokens(base, task_path, ids, max_tokens) -> list[int]:
    """What the library alone generates: ``softprompt.load(base, adapter).generate`` (bare: ``base.generate``),
    up to and including the first end-of-sequence token."""
    row = torch.tensor([ids])
    model = base if task_path is None else softprompt.load(base, task_path)
    out = model.generate(row, attention_mask=torch.ones_like(row), max_new_tokens=max_tokens, do_sample=False)
    new = out[0, len(ids) :].tolist()
    eos = base.generation_config.eos_token_id
    return new[: new.index(eos) + 1] if eos in new else new


def greedy_alone(base, tokenizer, task_path, ids, max_tokens) -> str:
    """The text of :func:`greedy_tokens`."""
    new = greedy_tokens(base, task_path, ids, max_tokens)
    return tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)


class SlowSteps:
    """A forward pre-hook that makes every forward pass of ``model`` take ``seconds`` (a long request)."""

    def __init__(self, model, seconds: float) -> None:
        self.seconds = seconds
        self.handle = model.model.register_forward_pre_hook(lambda *_: time.sleep(self.seconds))

    def remove(self) -> None:
        self.handle.remove()


class HoldStep:
    """A forward pre-hook on the backbone that records the (rows, tokens) of every call and holds the first
    call of ``shape`` (``None``: the first call, whatever its shape) until ``released`` is set: the
    scheduler then stands still inside that step, however loaded the machine is."""

    def __init__(self, model, shape: tuple[int, int] | None = None) -> None:
        self.shape, self.calls = shape, []
        self.holding, self.released = threading.Event(), threading.Event()
        self.handle = model.model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        if kwargs.get("input_ids") is None:  # compiling a prompt (virtual tokens)
            return
        self.calls.append(tuple(kwargs["input_ids"].shape))
        if (self.shape is None or self.calls[-1] == self.shape) and not self.holding.is_set():
            self.holding.set()
            self.released.wait()

    def remove(self) -> None:
        self.released.set()
        self.handle.remove()


@contextlib.contextmanager
def served(app):
    """A real uvicorn server for ``app`` on a free loopback port: yields (base URL, server)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(30)
