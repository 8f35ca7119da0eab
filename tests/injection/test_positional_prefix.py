"""Encoder prefixes through positions (injection/positional_prefix.py): placeholders whose key/value
projections the prefix overwrites in every layer.

The reference is the attention route on models that have both (BERT, RoBERTa, ALBERT): the same prefix
must give the same outputs and gradients. Encoders whose attention is computed inline (DeBERTa-v2, MPNet,
TAPAS, XLM, SqueezeBERT's convolutions, Longformer's sequence-first projections, I-BERT's quantised
linears) take prefix tuning through positions: the prompt matters, a row gives what it gives alone
under either padding side, files round-trip, and the bare model is unchanged. A fused query-key-value
projection (DeBERTa v1) is refused, naming it.
"""

import dataclasses

import pytest
import torch
import transformers as T
from tiny import ENCODER_CONFIGS, padded_batch, random_ids, tiny_encoder, tiny_model

import softprompt
from softprompt.families import model_shape
from softprompt.injection import positional_prefix as positional_prefix_module
from softprompt.injection.capture import read_attention_calls, read_projection_layers, site_states
from softprompt.injection.positional_prefix import positional_prefix
from softprompt.injection.prompts import BatchPrefix, RowPrompts

DEEP_PROMPT = softprompt.PrefixTuningConfig(num_virtual_tokens=3, init="random")
TASKS = ["sequence-classification", "token-classification"]


def moved(model, seed: int = 1):
    """``model`` with its prompt moved away from its init, so that it matters."""
    with torch.no_grad():
        for p in model.prompt.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.5)
    return model.eval()


def through_positions(model):
    """The same wrapped model with its encoder prefix entering through positions."""
    model.shape = dataclasses.replace(model.shape, encoder_prefix_route="positions")
    return model


def rows_of_three_lengths():
    return [random_ids(1, n, seed=n)[0] for n in (6, 3, 5)]


def outputs(model, ids, mask):
    """The model's logits (B, C) or (B, T, C) and the prompt's gradient for a fixed random projection."""
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=mask).logits
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))
    if logits.dim() == 3:
        weights = weights * mask[..., None]
    (logits * weights).sum().backward()
    return logits.detach(), [p.grad.clone() for p in model.prompt.parameters()]


# ---------------------------------------------------------------------------- the reference: BERT
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_positions_give_the_attention_routes_logits_and_gradients(family, task):
    attention = moved(softprompt.wrap(tiny_encoder(family, task), DEEP_PROMPT))
    positions = through_positions(moved(softprompt.wrap(tiny_encoder(family, task), DEEP_PROMPT)))
    assert attention.shape.encoder_prefix_route == "attention"
    ids, mask = padded_batch(rows_of_three_lengths(), "left")
    (expected, expected_grads), (got, got_grads) = (
        outputs(attention, ids, mask),
        outputs(positions, ids, mask),
    )
    if task == "token-classification":
        expected, got = expected[mask.bool()], got[mask.bool()]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_a_layer_shared_by_several_layers_reads_its_one_prefix_in_each_run():
    # ALBERT runs one attention module as every layer: one layer of prefix, written in each of its calls.
    base = tiny_model("albert", "sequence-classification")
    attention = moved(softprompt.wrap(base, DEEP_PROMPT))
    assert attention.shape.num_layers == 1
    ids, mask = padded_batch(rows_of_three_lengths(), "right")
    expected, _ = outputs(attention, ids, mask)
    got, _ = outputs(through_positions(attention), ids, mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_the_probe_reads_the_attention_routes_shapes_and_text_init_its_states():
    model = tiny_encoder("bert")
    calls, refusal = read_attention_calls(model, model.base_model)
    shapes, positional_refusal = read_projection_layers(model, model.base_model)
    assert refusal == positional_refusal == ""
    assert shapes == [(keys, values) for keys, values in calls]
    shape = model_shape(model)
    ids = random_ids(1, 4)[0]
    expected = site_states(model, shape, ids)["encoder"]
    got = site_states(model, dataclasses.replace(shape, encoder_prefix_route="positions"), ids)["encoder"]
    for (k, v), (ek, ev) in zip(got, expected, strict=True):
        torch.testing.assert_close(k, ek, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(v, ev, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- encoders with attention computed inline
INLINE = {  # model type -> how its key/value projections lay their outputs out
    "deberta": "blc",  # one fused query-key-value projection
    "deberta-v2": "blc",
    "mpnet": "blc",
    "tapas": "blc",
    "xlm": "blc",
    "ibert": "blc",  # QuantLinear returns (tensor, scale)
    "squeezebert": "bcl",  # Conv1d
    "longformer": "lbc",  # sequence-first, with global projections beside the local ones
}


def inline(model_type: str, head: str = "sequence-classification"):
    if model_type != "longformer":
        return tiny_model(model_type, head)
    # A window of 4 (not 512): fast, and most tokens then lie beyond the placeholders' window.
    torch.manual_seed(0)
    config = T.LongformerConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        attention_window=4, max_position_embeddings=128, pad_token_id=1, num_labels=3,
    )  # fmt: skip
    classes = {"sequence-classification": T.LongformerForSequenceClassification}
    return classes.get(head, T.LongformerForTokenClassification)(config).eval()


@pytest.mark.parametrize("model_type", sorted(INLINE))
def test_inline_attention_takes_prefix_tuning_through_positions(model_type, tmp_path):
    base = inline(model_type)
    ids, mask = padded_batch(rows_of_three_lengths(), "right")

    def bare():
        with torch.no_grad():
            return base(input_ids=ids, attention_mask=mask).logits

    before = bare()
    model = moved(softprompt.wrap(base, DEEP_PROMPT))
    after = bare()
    if model_type == "longformer":  # its sums change order once its weights stop requiring grad
        torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)
    else:
        assert torch.equal(after, before)
    assert model.shape.encoder_prefix_route == "positions"
    assert [layer.layout for layer in positional_prefix(base, base.base_model).layers] == [
        INLINE[model_type]
    ] * model.shape.num_layers
    with torch.no_grad():
        prompted = {
            side: model(*padded_batch(rows_of_three_lengths(), side)).logits for side in ("left", "right")
        }
        alone = torch.cat([model(input_ids=row[None]).logits for row in rows_of_three_lengths()])
    assert torch.equal(bare(), after)  # hooks act only within a prompted forward
    assert not torch.allclose(prompted["right"], after, atol=1e-3)
    for side in ("left", "right"):
        torch.testing.assert_close(prompted[side], alone, atol=1e-5, rtol=1e-5)
    _, grads = outputs(model, ids, mask)
    assert all(bool(g.abs().sum() > 0) for g in grads)
    path = model.save(tmp_path / "deep.safetensors")
    loaded = softprompt.load(inline(model_type), path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).logits, prompted["right"])


def test_token_outputs_and_labels_cover_the_callers_tokens_only():
    model = moved(softprompt.wrap(tiny_model("deberta-v2", "token-classification"), DEEP_PROMPT))
    ids, mask = padded_batch(rows_of_three_lengths(), "left")
    labels = (ids % 3).masked_fill(mask == 0, -100)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape[:2] == ids.shape
    expected = torch.nn.functional.cross_entropy(out.logits[mask.bool()], labels[mask.bool()])
    torch.testing.assert_close(out.loss, expected)


def test_longformer_placeholders_are_global_so_every_token_reads_them():
    model = softprompt.wrap(inline("longformer", "token-classification"), DEEP_PROMPT)
    batch = model._batch(random_ids(1, 4), None, None, None, None)
    # [CLS] first (the model's own global default), then the 3 placeholders, then the tokens
    assert batch.token_mask(None).tolist() == [[1, 1, 1, 1, 0, 0, 0]]
    # 2 layers of a window of 4 see 4 positions each way: the last of 16 tokens reads the prefix only
    # because its placeholders are global.
    ids = random_ids(1, 16)
    with torch.no_grad():
        first = moved(model, seed=1)(input_ids=ids).logits[0, -1]
        second = moved(model, seed=2)(input_ids=ids).logits[0, -1]
    assert not torch.allclose(first, second, atol=1e-4)


# -------------------------------------------------------------------------------------------- refusal
def test_a_fused_projections_keys_and_values_are_the_channels_the_model_attends_with():
    """DeBERTa's in_proj gives (H, 3, D) per position; the probe finds which channels are keys and values
    from what the model computes, and they are the ones its attention splits off."""
    base = tiny_model("deberta", "sequence-classification")
    found = positional_prefix(base, base.base_model)
    attention = found.layers[0].attention
    own = {}

    def split_as_the_model_does(module, args, output):
        own.setdefault("states", attention.transpose_for_scores(output).chunk(3, dim=-1))

    hook = attention.in_proj.register_forward_hook(split_as_the_model_does)
    try:
        with torch.no_grad(), found.recorded() as states:
            base.base_model(input_ids=random_ids(2, 5))
    finally:
        hook.remove()
    _, keys, values = own["states"]  # (B, H, L, D) each
    assert torch.equal(states[0][0], keys) and torch.equal(states[0][1], values)


def test_a_fused_projection_no_known_layout_fits_is_refused_naming_it(monkeypatch):
    splits = positional_prefix_module._fused_splits
    monkeypatch.setattr(
        positional_prefix_module,
        "_fused_splits",
        lambda heads, width: {"thirds, then heads": splits(heads, width)["thirds, then heads"]},
    )
    with pytest.raises(
        softprompt.UnsupportedModelError,
        match=r"deberta encoders cannot take a key/value prefix: .*one fused projection "
        r"\(encoder\.layer\.\d+\.attention\.self\.in_proj\), and none of the layouts softprompt knows "
        r"\(thirds, then heads\) fits .*Prompt tuning and P-tuning are",
    ):
        softprompt.wrap(tiny_model("deberta", "sequence-classification"), DEEP_PROMPT)


@pytest.mark.parametrize("model_type", ["deberta-v2", "mpnet"])  # relative positions by index
def test_rows_with_shorter_prefixes_or_none_give_what_they_give_alone(model_type):
    model = moved(softprompt.wrap(tiny_model(model_type, "token-classification"), DEEP_PROMPT))
    rows = rows_of_three_lengths()
    ids, mask = padded_batch(rows, "right")
    prompts = model.own_prompts(3, ids.device)
    prefix = prompts.sites["encoder"]
    prefix.mask = torch.tensor([[1, 1, 1], [0, 1, 1], [0, 0, 0]])  # row 1: its last 2 slots; row 2: none
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask, row_prompts=prompts).logits
        shorter = BatchPrefix(
            [(k[1:2, :, 1:], v[1:2, :, 1:]) for k, v in prefix.layers], torch.ones(1, 2, dtype=torch.long)
        )
        alone = model(input_ids=rows[1][None], row_prompts=RowPrompts(sites={"encoder": shorter})).logits
        bare = model.base_model(input_ids=rows[2][None]).logits
    torch.testing.assert_close(batched[1, : len(rows[1])], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[2, : len(rows[2])], bare[0], atol=1e-5, rtol=1e-5)


def test_a_key_projection_shared_with_relative_positions_writes_the_sequence_only():
    # DeBERTa-v3 projects its relative position embeddings with the same key projection (share_att_key):
    # those stay as they are, so a fully masked prefix is the bare model and rows do not depend on the batch.
    torch.manual_seed(0)
    config = ENCODER_CONFIGS["deberta-v2"]()
    config.share_att_key, config.position_buckets, config.num_labels = True, 4, 3
    base = T.DebertaV2ForTokenClassification(config).eval()
    model = moved(softprompt.wrap(base, DEEP_PROMPT))
    ids = random_ids(1, 6)
    masked = model.own_prompts(1, ids.device)
    masked.sites["encoder"].mask = torch.zeros_like(masked.sites["encoder"].mask)
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids, row_prompts=masked).logits, base(input_ids=ids).logits
        )
        one, three = model(input_ids=ids).logits, model(input_ids=ids.expand(3, -1)).logits
    torch.testing.assert_close(three, one.expand(3, -1, -1))
    assert not torch.allclose(one, base(input_ids=ids).logits, atol=1e-4)


def test_an_attention_whose_projections_miss_its_sequence_is_an_error_not_a_lost_prefix():
    # LUKE given entities projects words and entities concatenated: no place for the prefix to go.
    model = softprompt.wrap(tiny_model("luke", "sequence-classification"), DEEP_PROMPT)
    entities = dict(
        entity_ids=torch.tensor([[1, 2]]),
        entity_attention_mask=torch.ones(1, 2, dtype=torch.long),
        entity_position_ids=torch.tensor([[[0, -1], [1, -1]]]),
    )
    with pytest.raises(
        softprompt.UnsupportedModelError,
        match=r"the key/value projections of encoder\.layer\.0\.attention\.self did not project the tensor "
        r"it was called with .*LUKE's entity inputs",
    ):
        model(input_ids=random_ids(1, 5), **entities)


# ----------------------------------------------------------------------------------- encoder-decoders
# (LED pads its input to an attention window of 512: slow)
SEQ2SEQ_INLINE = ["bigbird_pegasus", "fsmt", pytest.param("led", marks=pytest.mark.slow), "longt5", "mvp"]


@pytest.mark.parametrize("model_type", SEQ2SEQ_INLINE)
def test_encoder_decoders_with_inline_encoder_attention_take_the_encoder_prefix(model_type):
    base = tiny_model(model_type, "seq2seq-lm")
    model = moved(softprompt.wrap(base, DEEP_PROMPT))
    assert model.shape.encoder_prefix_route == "positions"
    rows = rows_of_three_lengths()
    decoder_ids = random_ids(3, 4, seed=9)
    without_encoder_prefix = model.own_prompts(3, decoder_ids.device)
    without_encoder_prefix.sites["encoder"].mask = torch.zeros_like(
        without_encoder_prefix.sites["encoder"].mask
    )
    with torch.no_grad():
        batched = {
            side: model(*padded_batch(rows, side), decoder_input_ids=decoder_ids).logits
            for side in ("left", "right")
        }
        alone = torch.cat(
            [
                model(input_ids=row[None], decoder_input_ids=decoder_ids[i : i + 1]).logits
                for i, row in enumerate(rows)
            ]
        )
        ids, mask = padded_batch(rows, "right")
        masked = model(ids, mask, decoder_input_ids=decoder_ids, row_prompts=without_encoder_prefix).logits
        encoded, memory, _ = model.encode(ids, mask)
    for side in ("left", "right"):
        torch.testing.assert_close(batched[side], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(masked, batched["right"], atol=1e-4)  # the encoder prefix matters
    # cross-attention reads the caller's tokens only: as many as the mask has
    assert memory.sum(-1).tolist() == mask.sum(-1).tolist()
