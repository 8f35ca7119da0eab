"""Encoder-decoders (T5, mT5, T5 v1.1, BART, mBART): every method against a reference, peft parity,
padding invariance, generation, files, and the combinations that must be refused."""

import peft
import pytest
import torch
from tiny import SEQ2SEQ_FAMILIES, random_ids, tiny_causal_lm, tiny_encoder, tiny_seq2seq_lm
from transformers import DynamicCache, EncoderDecoderCache
from transformers.generation.streamers import BaseStreamer
from transformers.modeling_outputs import BaseModelOutput

import softprompt
from softprompt.families import model_shape
from softprompt.files.adapter import read_adapter
from softprompt.injection import BatchPrefix, RowPrompts
from softprompt.injection.capture import site_states

CONFIGS = {
    "prompt_tuning": lambda: softprompt.PromptTuningConfig(num_virtual_tokens=3, init="vocab"),
    "p_tuning": lambda: softprompt.PTuningConfig(num_virtual_tokens=3, encoder_hidden_size=8),
    "prefix_tuning": lambda: softprompt.PrefixTuningConfig(num_virtual_tokens=2, init="vocab"),
    "prefix_decoder": lambda: softprompt.PrefixTuningConfig(num_virtual_tokens=2, prefix_sites="decoder"),
    "prefix_mlp": lambda: softprompt.PrefixTuningConfig(
        num_virtual_tokens=2, init="random", projection_hidden_size=8
    ),
}
METHODS = sorted(CONFIGS)


def wrapped(family, method, seed=0):
    model = softprompt.wrap(tiny_seq2seq_lm(family), CONFIGS[method]()).eval()
    with torch.no_grad():  # move the prompt away from its init so it matters
        for p in model.prompt.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.3)
    return model


def padded(rows, side):
    longest = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        span = slice(longest - len(r), longest) if side == "left" else slice(0, len(r))
        ids[i, span], mask[i, span] = r, 1
    return ids, mask


def decoder_count(model):
    return len(model_shape(model).decoder_layers)


# ------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("family", SEQ2SEQ_FAMILIES)
def test_shape_matches_what_every_site_computes(family):
    model = tiny_seq2seq_lm(family)
    shape = model_shape(model)
    states = site_states(model, shape, random_ids(1, 3)[0])
    for site, layers in shape.layout().sites:
        seen = [(keys.shape[0], keys.shape[2]) for keys, _ in states[site]]
        assert seen == [(layer.num_kv_heads, layer.head_dim) for layer in layers], site
    assert shape.kind == "seq2seq" and shape.head == "seq2seq-lm"


# --------------------------------------------------------------------------------- each site exactly
@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
@pytest.mark.parametrize("family", SEQ2SEQ_FAMILIES)
def test_virtual_tokens_equal_embeddings_prepended_to_the_encoder_input(family, method):
    model = wrapped(family, method)
    base = model.base_model
    ids, dec = random_ids(2, 5), random_ids(2, 4, seed=1)
    prompt = model.prompt().embeddings.detach()
    embeds = torch.cat([prompt[None].expand(2, -1, -1), base.get_input_embeddings()(ids)], dim=1)
    with torch.no_grad():
        expected = base(inputs_embeds=embeds, decoder_input_ids=dec).logits
        got = model(input_ids=ids, decoder_input_ids=dec).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _decoder_states(base, encoded, mask, ids):
    """Per-layer self- and cross-attention keys/values the decoder computes for ``ids``."""
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())  # the model's own cache
    base.get_decoder()(
        input_ids=ids,
        encoder_hidden_states=encoded,
        encoder_attention_mask=mask,
        past_key_values=cache,
        use_cache=True,
    )
    return [
        [(layer.keys, layer.values) for layer in site.layers]
        for site in (cache.self_attention_cache, cache.cross_attention_cache)
    ]


@pytest.mark.parametrize("family", SEQ2SEQ_FAMILIES)
def test_decoder_prefix_equals_real_tokens_before_the_decoder_input(family):
    """A decoder self-attention prefix holding what real tokens Y leave = decoding [Y, input]."""
    model = wrapped(family, "prefix_tuning")
    base = model.base_model
    ids, dec, before = random_ids(2, 5), random_ids(2, 4, seed=1), random_ids(2, 3, seed=2)
    with torch.no_grad():
        encoded = base.get_encoder()(input_ids=ids).last_hidden_state
        self_states, _ = _decoder_states(base, encoded, None, before)
        expected = base(input_ids=ids, decoder_input_ids=torch.cat([before, dec], 1)).logits[:, 3:]
        prefix = RowPrompts(
            sites={"decoder": BatchPrefix(list(self_states), torch.ones(2, 3, dtype=torch.long))}
        )
        got = model(input_ids=ids, decoder_input_ids=dec, row_prompts=prefix).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", SEQ2SEQ_FAMILIES)
def test_cross_prefix_equals_extra_encoder_states(family):
    """A cross-attention prefix holding the keys/values of states E = E prepended to the encoder output."""
    model = wrapped(family, "prefix_tuning")
    base = model.base_model
    ids, dec = random_ids(2, 5), random_ids(2, 4, seed=1)
    extra = torch.randn(1, 3, base.config.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, cross = _decoder_states(base, extra, None, dec[:1, :1])
        encoded = base.get_encoder()(input_ids=ids).last_hidden_state
        expected = base(
            encoder_outputs=BaseModelOutput(
                last_hidden_state=torch.cat([extra.expand(2, -1, -1), encoded], 1)
            ),
            decoder_input_ids=dec,
        ).logits
        layers = [(k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1)) for k, v in cross]
        prefix = RowPrompts(sites={"cross": BatchPrefix(layers, torch.ones(2, 3, dtype=torch.long))})
        got = model(input_ids=ids, decoder_input_ids=dec, row_prompts=prefix).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", SEQ2SEQ_FAMILIES)
def test_masked_encoder_and_cross_prefixes_change_nothing(family):
    """Prefix slots that the mask hides are invisible: the mask reaches every encoder and cross layer."""
    model = wrapped(family, "prefix_tuning")
    ids, dec = random_ids(2, 5), random_ids(2, 4, seed=1)
    full = model.own_prompts(2, ids.device)
    hidden = RowPrompts(
        sites={
            site: BatchPrefix(full.sites[site].layers, torch.zeros(2, 2, dtype=torch.long))
            for site in ("encoder", "cross")
        }
    )
    with torch.no_grad():
        expected = model.base_model(input_ids=ids, decoder_input_ids=dec).logits
        got = model(input_ids=ids, decoder_input_ids=dec, row_prompts=hidden).logits
        loud = [(k * 30, v * 30) for k, v in full.sites["encoder"].layers]  # tiny random models barely react
        encoder_only = RowPrompts(sites={"encoder": BatchPrefix(loud, full.sites["encoder"].mask)})
        changed = model(input_ids=ids, decoder_input_ids=dec, row_prompts=encoder_only).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(
        changed, expected, atol=1e-3
    )  # unmasked, the encoder prefix does reach the encoder


# ---------------------------------------------------------------------------------------- peft parity
PEFT_CONFIGS = {
    "prompt_tuning": lambda: peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3),
    "p_tuning_mlp": lambda: peft.PromptEncoderConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3, encoder_hidden_size=8
    ),
    "p_tuning_lstm": lambda: peft.PromptEncoderConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=3,
        encoder_hidden_size=8,
        encoder_reparameterization_type="LSTM",
    ),
    "prefix_tuning": lambda: peft.PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3),
    "prefix_tuning_mlp": lambda: peft.PrefixTuningConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=8
    ),
}


@pytest.mark.parametrize("method", sorted(PEFT_CONFIGS))
@pytest.mark.parametrize("family", SEQ2SEQ_FAMILIES)
def test_loading_a_peft_adapter_gives_peft_logits_and_generations(family, method, tmp_path):
    ids, dec = random_ids(2, 6), random_ids(2, 4, seed=1)
    torch.manual_seed(1)
    peft_model = peft.get_peft_model(tiny_seq2seq_lm(family), PEFT_CONFIGS[method]()).eval()
    try:
        with torch.no_grad():
            expected = peft_model(input_ids=ids, decoder_input_ids=dec).logits
    except Exception as err:  # noqa: BLE001 - report what peft could not do
        pytest.skip(f"peft cannot run {method} on {family}: {type(err).__name__}: {err}")
    # Greedy decoding by peft's forward, step by step without a cache: the reference numbers.
    # (Not peft's `generate`: with transformers >= 5.24 it mis-places T5 decoder prefixes, and
    # transformers' own cache miscounts decoders deeper than the encoder, as T5 v1.1's.)
    expected_generated = torch.full((2, 1), peft_model.get_base_model().config.decoder_start_token_id)
    with torch.no_grad():
        for _ in range(4):
            logits = peft_model(input_ids=ids, decoder_input_ids=expected_generated).logits
            expected_generated = torch.cat([expected_generated, logits[:, -1:].argmax(-1)], 1)
    peft_model.save_pretrained(tmp_path / "peft")
    model = softprompt.load(tiny_seq2seq_lm(family), tmp_path / "peft").eval()
    with torch.no_grad():
        got = model(input_ids=ids, decoder_input_ids=dec).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert model.generate(ids, max_new_tokens=4, do_sample=False).tolist() == expected_generated.tolist()
    if method.startswith("prefix"):
        assert model.prompt_config.prefix_sites == "decoder"


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "prefix_decoder"])
@pytest.mark.parametrize("family", ["t5", "mbart"])
def test_exported_adapter_loads_in_peft_with_the_same_logits(family, method, tmp_path):
    model = wrapped(family, method)
    ids, dec = random_ids(2, 6), random_ids(2, 4, seed=1)
    if method == "prefix_decoder" and decoder_count(model.base_model) % 2 == 0:
        with pytest.raises(ValueError, match="2j mod 2"):
            model.export_peft(tmp_path / "exported")
        return
    with torch.no_grad():
        ours = model(input_ids=ids, decoder_input_ids=dec).logits
    folder = model.export_peft(tmp_path / "exported")
    theirs_model = peft.PeftModel.from_pretrained(tiny_seq2seq_lm(family), folder).eval()
    with torch.no_grad():
        theirs = theirs_model(input_ids=ids, decoder_input_ids=dec).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_a_prefix_in_every_site_cannot_be_exported_to_peft(tmp_path):
    model = wrapped("t5", "prefix_tuning")
    with pytest.raises(ValueError, match="prefix_sites='decoder'"):
        model.export_peft(tmp_path / "exported")


# ------------------------------------------------------------------------------- padding, generation
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", SEQ2SEQ_FAMILIES)
def test_batch_invariance_under_left_and_right_padding(family, method):
    model = wrapped(family, method)
    rows = [random_ids(1, n, seed=n)[0] for n in (6, 3, 4)]
    dec = random_ids(1, 3, seed=9)
    with torch.no_grad():
        alone = [model(input_ids=r[None], decoder_input_ids=dec).logits[0] for r in rows]
        for side in ("left", "right"):
            ids, mask = padded(rows, side)
            logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec.expand(3, -1)).logits
            for i in range(3):
                torch.testing.assert_close(logits[i], alone[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["t5v1.1", "mbart"])
def test_generation_does_not_depend_on_batch_or_padding(family, method):
    model = wrapped(family, method)
    rows = [random_ids(1, n, seed=n)[0] for n in (6, 3)]
    alone = [model.generate(r[None], max_new_tokens=3, min_new_tokens=3, do_sample=False)[0] for r in rows]
    for side in ("left", "right"):
        ids, mask = padded(rows, side)
        generated = model.generate(
            ids, attention_mask=mask, max_new_tokens=3, min_new_tokens=3, do_sample=False
        )
        assert [g.tolist() for g in generated] == [a.tolist() for a in alone], f"{side} padding"


def reference_generate(model, ids, **kwargs):
    """Generation with the prompt's embeddings prepended to the encoder input (no softprompt code)."""
    base = model.base_model
    prompt = model.prompt().embeddings.detach()
    embeds = torch.cat([prompt[None].expand(ids.shape[0], -1, -1), base.get_input_embeddings()(ids)], dim=1)
    return base.generate(
        inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long), **kwargs
    )


DECODING = [dict(do_sample=False), dict(num_beams=3, do_sample=False, num_return_sequences=2)]


@pytest.mark.parametrize("decoding", DECODING, ids=["greedy", "beam"])
@pytest.mark.parametrize("family", ["t5", "bart", "mbart", "mt5"])
def test_generation_with_virtual_tokens_equals_prepending_them(family, decoding):
    model = wrapped(family, "prompt_tuning")
    ids = random_ids(2, 5)
    with torch.no_grad():
        expected = reference_generate(model, ids, max_new_tokens=4, **decoding)
    assert model.generate(ids, max_new_tokens=4, **decoding).tolist() == expected.tolist()


@pytest.mark.parametrize("decoding", DECODING, ids=["greedy", "beam"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["t5", "bart"])
def test_generation_runs_with_every_method_and_greedy_matches_the_logits(family, method, decoding):
    model = wrapped(family, method)
    ids = random_ids(2, 5)
    out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, **decoding)
    assert out.shape == (2 * decoding.get("num_return_sequences", 1), 5)
    start = model.base_model.config.decoder_start_token_id
    assert (out[:, 0] == start).all()
    if decoding.get("num_beams", 1) == 1:  # each greedy token is the argmax of the forward pass
        with torch.no_grad():
            logits = model(input_ids=ids, decoder_input_ids=out[:, :-1]).logits
        assert logits.argmax(-1).tolist() == out[:, 1:].tolist()


# ------------------------------------------------------------------------------------ training, files
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "prefix_decoder"])
@pytest.mark.parametrize("family", ["t5", "bart"])
def test_training_changes_only_the_prompt_and_checkpointing_keeps_gradients(family, method):
    def grads(checkpointing):
        model = wrapped(family, method).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        ids, labels = random_ids(2, 5), random_ids(2, 4, seed=1)
        labels[1, 3] = -100
        model(input_ids=ids, labels=labels).loss.backward()
        return model, [p.grad.clone() for p in model.prompt.parameters()]

    model, plain = grads(False)
    _, checkpointed = grads(True)
    assert all(g.abs().sum() > 0 for g in plain)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.prompt.parameters()}


def test_labels_give_the_models_own_loss_with_shifted_decoder_inputs():
    model = wrapped("bart", "prefix_tuning")
    ids, labels = random_ids(2, 5), random_ids(2, 4, seed=1)
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
        shifted = model.base_model.prepare_decoder_input_ids_from_labels(labels=labels)
        again = model(input_ids=ids, decoder_input_ids=shifted).logits
    torch.testing.assert_close(out.logits, again)
    expected = torch.nn.functional.cross_entropy(again.flatten(0, 1), labels.flatten())
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(method, tmp_path):
    model = wrapped("mbart", method)
    ids, dec = random_ids(2, 5), random_ids(2, 4, seed=1)
    with torch.no_grad():
        expected = model(input_ids=ids, decoder_input_ids=dec).logits
    path = model.save(tmp_path / "task.safetensors")
    record, tensors = read_adapter(path)
    assert record["base_model"]["decoder_layers"] == [[4, 8]] * 3
    again = softprompt.load(tiny_seq2seq_lm("mbart"), path).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            again(input_ids=ids, decoder_input_ids=dec).logits, expected, atol=1e-6, rtol=1e-6
        )
    assert model.num_trainable_parameters() >= next(iter(tensors.values())).numel()


def test_prefix_sizes_follow_the_sites():
    shape = model_shape(tiny_seq2seq_lm("t5v1.1"))  # 2 encoder layers, 3 decoder layers, 4 heads x 8
    assert shape.layout().prefix_width == (2 + 3 + 3) * 2 * 4 * 8
    assert shape.layout(("decoder",)).prefix_width == 3 * 2 * 4 * 8
    model = softprompt.wrap(tiny_seq2seq_lm("t5v1.1"), softprompt.PrefixTuningConfig(num_virtual_tokens=5))
    assert model.prompt.prefix.shape == (5, shape.prefix_width)


# --------------------------------------------------------------------------------------- refusals
def test_unsupported_combinations_say_what_is_supported():
    with pytest.raises(
        softprompt.UnsupportedModelError, match="prefix_sites='decoder'.*choose one of \\['all'\\]"
    ):
        softprompt.wrap(tiny_causal_lm("llama"), softprompt.PrefixTuningConfig(prefix_sites="decoder"))
    with pytest.raises(softprompt.UnsupportedModelError, match="choose one of \\['all'\\]"):
        softprompt.wrap(tiny_encoder("bert"), softprompt.PrefixTuningConfig(prefix_sites="decoder"))
    with pytest.raises(ValueError, match="prefix_sites must be one of"):
        softprompt.PrefixTuningConfig(prefix_sites="cross")
    torch.manual_seed(0)
    classifier = __import__("transformers").T5ForSequenceClassification(tiny_seq2seq_lm("t5").config)
    with pytest.raises(
        softprompt.UnsupportedModelError, match="on t5 encoder-decoders it supports seq2seq-lm"
    ):
        softprompt.wrap(classifier, softprompt.PromptTuningConfig(num_virtual_tokens=2))


def test_a_prompt_for_another_decoder_depth_is_refused(tmp_path):
    path = wrapped("t5", "prefix_tuning").save(tmp_path / "t5.safetensors")
    with pytest.raises(softprompt.AdapterFileError, match="decoder_layers"):
        softprompt.load(tiny_seq2seq_lm("t5v1.1"), path)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_prefix_attention_is_attention_over_prefix_and_keys(mask_kind):
    """The cache-less route: prefix keys/values before the layer's own, masked slots hidden, and no
    relative-position bias for prefix slots (T5)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from softprompt.injection.attention import PREFIX_ATTENTION, AttentionPrefix, install

    install()
    prefix_attention = ALL_ATTENTION_FUNCTIONS[PREFIX_ATTENTION]

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 3, 8, generator=g) for _ in range(3))
    pk, pv = torch.randn(2, 4, 2, 8, generator=g), torch.randn(2, 4, 2, 8, generator=g)
    bias = torch.randn(1, 4, 3, 3, generator=g)
    prefix_mask = torch.tensor([[1, 1], [0, 1]])
    keep = torch.tensor([[1, 1, 1], [1, 1, 0]]).bool()[:, None, None, :].expand(2, 1, 3, 3)
    mask = {"none": None, "bool": keep, "float": torch.zeros(keep.shape).masked_fill(~keep, -1e9)}[mask_kind]
    module = torch.nn.Module().eval()
    prefix = AttentionPrefix({module: (pk, pv)}, prefix_mask)
    got, _ = prefix_attention(
        module, q, k, v, mask, softprompt_prefix=prefix, position_bias=bias, scaling=8**-0.5
    )

    scores = torch.cat([pk, k], -2) @ q.transpose(-1, -2)  # (B, H, P + T, Q)
    scores = scores.transpose(-1, -2) * 8**-0.5 + torch.nn.functional.pad(bias, (2, 0))
    visible = torch.cat([prefix_mask.bool()[:, None, None, :].expand(2, 1, 3, 2), keep], -1)
    if mask_kind == "none":
        visible = torch.cat([visible[..., :2], torch.ones(2, 1, 3, 3, dtype=torch.bool)], -1)
    scores = scores.masked_fill(~visible, float("-inf"))
    expected = (scores.softmax(-1) @ torch.cat([pv, v], -2)).transpose(1, 2)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


class _Collect(BaseStreamer):
    def __init__(self):
        self.pieces = []

    def put(self, value):
        self.pieces.append(value.reshape(-1))

    def end(self):
        pass


@pytest.mark.parametrize("method", ["prefix_tuning", "prompt_tuning"])
def test_a_streamer_sees_the_generated_sequence_not_the_decoder_prefix_stand_ins(method):
    model = wrapped("bart", method)
    streamer = _Collect()
    out = model.generate(random_ids(1, 5), max_new_tokens=4, min_new_tokens=4, streamer=streamer)
    assert torch.cat(streamer.pieces).tolist() == out[0].tolist()  # start token, then the new tokens
