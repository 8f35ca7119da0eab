"""Streamers show only real text: ``real_text_streamer`` drops the virtual tokens' stand-in ids from
``generate``'s first ``put``, alone and inside the models' ``generate`` (wired here the way the
models' ``generate`` wires it)."""

from __future__ import annotations

import threading

import pytest
import torch
from tiny import tiny_causal_lm, tiny_seq2seq_lm
from transformers import TextIteratorStreamer, TextStreamer
from transformers.generation.streamers import BaseStreamer

import softprompt
from softprompt.integrations.streaming import RealTextStreamer, real_text_streamer


class Recorder(BaseStreamer):
    def __init__(self):
        self.puts: list[list[int]] = []
        self.ends = 0

    def put(self, value):
        self.puts.append(value.tolist())

    def end(self):
        self.ends += 1


def test_only_the_first_put_loses_the_stand_ins_and_end_rearms_it():
    recorder = Recorder()
    streamer = real_text_streamer(recorder, stand_ins=2)
    for _ in range(2):  # one streamer, two generate calls
        streamer.put(torch.tensor([[0, 0, 7, 8]]))
        streamer.put(torch.tensor([9]))
        streamer.end()
    assert recorder.puts == [[[7, 8]], [9], [[7, 8]], [9]]
    assert recorder.ends == 2


def test_nothing_to_drop_leaves_the_streamer_as_it_is():
    recorder = Recorder()
    assert real_text_streamer(None, stand_ins=3) is None
    assert real_text_streamer(recorder, stand_ins=0) is recorder
    wrapped = real_text_streamer(recorder, stand_ins=3)
    assert isinstance(wrapped, RealTextStreamer)
    assert real_text_streamer(wrapped, stand_ins=3) is wrapped  # never drops twice


def streaming_generate(base, stand_ins: int):
    """The base model's ``generate`` with its streamer wrapped, as the models' ``generate`` does it
    (a no-op where they already do: ``real_text_streamer`` never wraps twice)."""
    original = base.generate

    def generate(*args, streamer=None, **kwargs):
        return original(*args, streamer=real_text_streamer(streamer, stand_ins), **kwargs)

    return generate


@pytest.fixture
def causal(monkeypatch):
    model = softprompt.wrap(
        tiny_causal_lm("gpt2"), softprompt.PromptTuningConfig(num_virtual_tokens=4)
    ).eval()
    monkeypatch.setattr(model.base_model, "generate", streaming_generate(model.base_model, stand_ins=4))
    return model


def test_text_streamer_prints_what_generate_returns(causal, tokenizer, capsys):
    ids = tokenizer("where is paris", return_tensors="pt").input_ids
    capsys.readouterr()
    output = causal.generate(ids, max_new_tokens=5, do_sample=False, streamer=TextStreamer(tokenizer))
    assert capsys.readouterr().out == tokenizer.decode(output[0]) + "\n"


def test_text_iterator_streamer_yields_only_the_new_text(causal, tokenizer):
    ids = tokenizer("what is a cat", return_tensors="pt").input_ids
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(
            output=causal.generate(ids, max_new_tokens=5, do_sample=False, streamer=streamer)
        )
    )
    worker.start()
    text = "".join(streamer)
    worker.join()
    assert text == tokenizer.decode(result["output"][0, ids.shape[1] :])


def test_an_encoder_decoders_decoder_prefix_is_not_streamed(monkeypatch, tokenizer):
    # A decoder prefix fills P decoder places with start-token stand-ins before the real start token.
    model = softprompt.wrap(
        tiny_seq2seq_lm("t5"), softprompt.PrefixTuningConfig(num_virtual_tokens=3, prefix_sites="decoder")
    ).eval()
    monkeypatch.setattr(model.base_model, "generate", streaming_generate(model.base_model, stand_ins=3))
    recorder = Recorder()
    ids = tokenizer("hello", return_tensors="pt").input_ids
    output = model.generate(ids, max_new_tokens=4, do_sample=False, streamer=recorder)
    assert recorder.puts[0] == [[model.config.decoder_start_token_id]]
    assert [recorder.puts[0][0][0], *(row[0] for row in recorder.puts[1:])] == output[0].tolist()
