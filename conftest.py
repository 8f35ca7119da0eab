"""What every docstring example in ``src/`` may use: tiny random models built from configs, no downloads.

``pytest`` runs the examples (``--doctest-modules`` over ``src``) with these names in scope, so an
example reads like user code (``softprompt.wrap(base_model, ...)``) and still runs offline in CI.
"""

from __future__ import annotations

import os

import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers

import softprompt

if not torch.cuda.is_available():
    # DeepSpeed (where installed) otherwise announces its CPU fallback on stdout at first import,
    # inside whichever example imports it first (accelerate imports it lazily).
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

_SPECIAL = ["<pad>", "</s>", "<s>", "<unk>"]
_WORDS = ["positive", "negative", "yes", "no", "a", "gem", "dull", "film", "review", "sentiment"]
VOCAB = 96  # ids 0-2 are pad / eos / bos, as in tests/tiny.py


def _tokenizer() -> T.PreTrainedTokenizerFast:
    """A word-level tokenizer over 96 ids: the special tokens, a few words, and filler words."""
    words = _SPECIAL + _WORDS + [f"w{i}" for i in range(VOCAB - len(_SPECIAL) - len(_WORDS))]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>"
    )


def _seeded(build):
    torch.manual_seed(0)
    return build().eval()


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace, tmp_path):
    ids = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2)
    doctest_namespace.update(
        torch=torch,
        softprompt=softprompt,
        tokenizer=_tokenizer(),
        # A grouped-query Llama: hidden 32, 2 layers, 4 query / 2 key-value heads.
        base_model=_seeded(
            lambda: T.LlamaForCausalLM(
                T.LlamaConfig(
                    vocab_size=VOCAB,
                    hidden_size=32,
                    intermediate_size=48,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    **ids,
                )
            )
        ),
        t5_model=_seeded(
            lambda: T.T5ForConditionalGeneration(
                T.T5Config(
                    vocab_size=VOCAB,
                    d_model=32,
                    d_kv=8,
                    d_ff=48,
                    num_layers=2,
                    num_heads=4,
                    decoder_start_token_id=2,
                    **ids,
                )
            )
        ),
        encoder_model=_seeded(
            lambda: T.BertForSequenceClassification(
                T.BertConfig(
                    vocab_size=VOCAB,
                    hidden_size=32,
                    intermediate_size=48,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    num_labels=2,
                    pad_token_id=0,
                )
            )
        ),
        # Two rows of five tokens, the first left-padded.
        input_ids=torch.tensor([[0, 5, 6, 7, 8], [9, 10, 11, 12, 13]]),
        attention_mask=torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]),
        tmp_dir=tmp_path,
    )
