"""Behaviour of SoftPromptModel on every family: logits, loss, padding invariance, generation,
gradient checkpointing and a frozen base."""

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from tiny import FAMILIES, padded_batch, random_ids, tiny_causal_lm

import softprompt

CONFIGS = {
    "prompt_tuning": lambda: softprompt.PromptTuningConfig(num_virtual_tokens=5, init="vocab"),
    "prefix_tuning": lambda: softprompt.PrefixTuningConfig(num_virtual_tokens=4, init="vocab"),
    "prefix_mlp": lambda: softprompt.PrefixTuningConfig(
        num_virtual_tokens=4, init="random", projection_hidden_size=16
    ),
    "p_tuning": lambda: softprompt.PTuningConfig(num_virtual_tokens=3, encoder="lstm", encoder_hidden_size=8),
}
METHODS = sorted(CONFIGS)


def wrapped(family, method, seed=0):
    model = softprompt.wrap(tiny_causal_lm(family), CONFIGS[method]()).eval()
    # Move the prompt away from its init so every test sees a prompt that matters.
    with torch.no_grad():
        for p in model.prompt.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.3)
    return model


def test_logits_cover_real_tokens_only_and_loss_is_next_token_cross_entropy():
    model = wrapped("llama", "prompt_tuning")
    ids = random_ids(2, 6)
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 6, 96)
    expected = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("method", METHODS)
def test_logits_only_at_labels_match_full_logits(method):
    model = wrapped("qwen2", method)
    ids = random_ids(3, 7)
    labels = torch.full_like(ids, -100)
    labels[0, 6], labels[1, 3], labels[2, 4:] = ids[0, 6], ids[1, 3], ids[2, 4:]
    full = model(input_ids=ids, labels=labels)
    sparse = model(input_ids=ids, labels=labels, logits_at="labels")
    where = labels[:, 1:] != -100
    assert sparse.logits.shape == (int(where.sum()), 96)
    torch.testing.assert_close(sparse.logits, full.logits[:, :-1][where])
    torch.testing.assert_close(sparse.loss, full.loss)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_batch_invariance_under_left_and_right_padding(family, method):
    model = wrapped(family, method)
    rows = [random_ids(1, n, seed=n)[0] for n in (7, 4, 5)]
    alone = [model(input_ids=r[None]).logits[0] for r in rows]
    alone_gen = [
        model.generate(r[None], max_new_tokens=4, min_new_tokens=4, do_sample=False)[0, len(r) :]
        for r in rows
    ]
    for side in ("left", "right"):
        ids, mask = padded_batch(rows, side)
        logits = model(input_ids=ids, attention_mask=mask).logits
        generated = model.generate(
            ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False
        )[:, ids.shape[1] :]
        for i in range(len(rows)):
            torch.testing.assert_close(logits[i][mask[i].bool()], alone[i], atol=1e-5, rtol=1e-5)
            assert generated[i].tolist() == alone_gen[i].tolist(), f"row {i}, {side} padding"


def reference_generate(model, ids, **kwargs):
    """What generation with the prompt's embeddings prepended to the input gives (no cache tricks)."""
    base = model.base_model
    prompt = model.prompt().embeddings.to(base.dtype)
    embeds = torch.cat([prompt[None].expand(ids.shape[0], -1, -1), base.get_input_embeddings()(ids)], dim=1)
    return base.generate(
        inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long), **kwargs
    )


@pytest.mark.parametrize(
    "decoding",
    [
        dict(do_sample=False),
        dict(num_beams=3, do_sample=False, num_return_sequences=2),
        dict(num_beams=2, do_sample=False, num_return_sequences=2),
        # Sampling expands each row by num_return_sequences (the prefix cache must expand too).
        dict(do_sample=True, top_k=10, num_return_sequences=2),
    ],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_generation_equals_prompt_prepended_to_the_input(family, decoding):
    model = wrapped(family, "prompt_tuning")
    ids = random_ids(2, 5)
    with torch.no_grad():
        torch.manual_seed(7)
        expected = reference_generate(model, ids, max_new_tokens=5, **decoding)
    torch.manual_seed(7)
    got = model.generate(ids, max_new_tokens=5, **decoding)
    assert got[:, :5].tolist() == ids.repeat_interleave(decoding.get("num_return_sequences", 1), 0).tolist()
    assert got[:, 5:].tolist() == expected.tolist()


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_greedy_tokens_are_the_forward_passes_argmax_when_the_config_says_use_cache_false(method):
    # MPT's config says use_cache=False: generate once dropped the prompt after its first step.
    torch.manual_seed(0)
    base = T.MptForCausalLM(
        T.MptConfig(d_model=32, n_heads=4, n_layers=2, vocab_size=96, max_seq_len=64, use_cache=False)
    ).eval()
    model = softprompt.wrap(base, CONFIGS[method]()).eval()
    with torch.no_grad():
        for p in model.prompt.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.3)
    ids = random_ids(1, 5)
    with torch.no_grad():
        got = model.generate(ids, max_new_tokens=4, do_sample=False)
        expected = ids
        for _ in range(4):
            expected = torch.cat([expected, model(input_ids=expected).logits[:, -1:].argmax(-1)], dim=1)
    assert got.tolist() == expected.tolist()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_runs_and_is_reproducible(family, method):
    model = wrapped(family, method)
    ids = random_ids(2, 4)
    torch.manual_seed(3)
    first = model.generate(ids, max_new_tokens=4, do_sample=True, top_k=10)
    torch.manual_seed(3)
    second = model.generate(ids, max_new_tokens=4, do_sample=True, top_k=10)
    assert first.shape == (2, 8) and first.tolist() == second.tolist()
    torch.manual_seed(3)
    several = model.generate(ids, max_new_tokens=4, do_sample=True, top_k=10, num_return_sequences=3)
    assert several.shape == (6, 8) and several[:, :4].tolist() == ids.repeat_interleave(3, 0).tolist()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "falcon", "bloom"])
def test_gradient_checkpointing_gives_the_same_gradients(family, method):
    def grads(checkpointing):
        model = wrapped(family, method).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.base_model.modules())
        ids = random_ids(2, 6)
        model(input_ids=ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in model.prompt.parameters()]

    plain, checkpointed = grads(False), grads(True)
    assert all(g.abs().sum() > 0 for g in plain)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_training_changes_only_the_prompt(method):
    model = wrapped("gemma", method).train()
    before = {k: v.clone() for k, v in model.base_model.state_dict().items()}
    prompt_before = [p.detach().clone() for p in model.prompt.parameters()]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in model.prompt.parameters()}
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    ids = random_ids(2, 6)
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.base_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(a, b) for a, b in zip(prompt_before, model.prompt.parameters(), strict=True))


@pytest.mark.parametrize("method", METHODS)
def test_folding_keeps_the_logits(method):
    model = wrapped("phi3", method)
    ids = random_ids(2, 5)
    expected = model(input_ids=ids).logits
    (table,) = model.prompt.folded().values()
    model.prompt = softprompt.methods.method_of(model.prompt_config).rebuild(
        model.prompt_config, table, model.shape
    )
    torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-6, rtol=1e-5)


def test_caller_position_ids_are_moved_past_the_prompt():
    model = wrapped("llama", "prefix_tuning")
    ids = random_ids(1, 5)
    default = model(input_ids=ids).logits
    explicit = model(input_ids=ids, position_ids=torch.arange(5)[None]).logits
    torch.testing.assert_close(default, explicit)


@pytest.mark.parametrize("method", METHODS)
def test_a_bfloat16_base_trains_an_fp32_prompt(method):
    model = wrapped("llama", method)
    ids = random_ids(2, 6)
    expected = model(input_ids=ids).logits
    model.base_model.to(torch.bfloat16)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert all(
        p.dtype == torch.float32 and p.grad is not None and p.grad.isfinite().all()
        for p in model.prompt.parameters()
    )
    torch.testing.assert_close(out.logits.float(), expected, atol=0.1, rtol=0.05)
    assert model.generate(ids, max_new_tokens=2).shape == (2, 8)


def test_serving_reuses_the_compiled_prompt_until_it_changes():
    model = wrapped("llama", "prompt_tuning")
    ids = random_ids(1, 4)
    with torch.no_grad():
        first = model(input_ids=ids).logits
        kept = model._served
        assert model(input_ids=ids).logits.equal(first) and model._served is kept  # no recompile
        model.prompt.embeddings.add_(0.5)  # an optimiser step, in place
        changed = model(input_ids=ids).logits
    assert model._served is not kept and not changed.allclose(first)
    torch.testing.assert_close(
        changed, model(input_ids=ids).logits
    )  # with gradients: recomputed, same numbers


@pytest.mark.parametrize("convention", ["bool", "additive"])
@pytest.mark.parametrize("family", ["llama", "gemma", "gemma2", "gpt2", "qwen3"])
def test_a_4d_attention_mask_gives_the_logits_of_its_2d_equal(family, convention):
    # peft #2452/#2458: 4-D masks broke prompt injection. Right padding: positions need no pads skipped.
    model = wrapped(family, "prefix_tuning")
    if convention == "bool" and model.base_model.config._attn_implementation == "eager":
        pytest.skip("eager attention adds the mask to the scores: the bare model takes additive masks only")
    rows = [random_ids(1, n, seed=n)[0] for n in (6, 4)]
    ids, mask = padded_batch(rows, "right")
    length = ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal[None, None] & mask.bool()[:, None, None, :]  # (B, 1, T, T)
    if convention == "additive":
        allowed = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        got = model(input_ids=ids, attention_mask=allowed).logits
    for i, row in enumerate(rows):
        torch.testing.assert_close(got[i, : len(row)], expected[i, : len(row)], atol=1e-5, rtol=1e-5)


def test_an_attention_mask_of_another_rank_is_refused():
    model = wrapped("llama", "prompt_tuning")
    with pytest.raises(ValueError, match=r"\(batch, seq\) or \(batch, 1, seq, keys\)"):
        model(input_ids=random_ids(2, 4), attention_mask=torch.ones(2, 4, 4))


# Final logits as each model's own forward makes them: granite divides by logits_scaling (and scales
# embeddings, residuals and attention), cohere multiplies by logit_scale, gemma2 / gemma3_text soft-cap.
OWN_HEADS = {
    "granite": lambda: T.GraniteConfig(
        **SMALL,
        logits_scaling=4.0,
        embedding_multiplier=2.0,
        residual_multiplier=0.5,
        attention_multiplier=0.3,
    ),
    "cohere": lambda: T.CohereConfig(**SMALL, logit_scale=0.25),
    "gemma2": lambda: T.Gemma2Config(**SMALL, head_dim=8, final_logit_softcapping=2.0, sliding_window=64),
    "gemma3_text": lambda: T.Gemma3TextConfig(**SMALL, head_dim=8, final_logit_softcapping=2.0),
}
SMALL = dict(
    vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=48, pad_token_id=0, eos_token_id=1, bos_token_id=2,
)  # fmt: skip


def own_head_model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    base = T.AutoModelForCausalLM.from_config(OWN_HEADS[family]()).eval()
    with torch.no_grad():  # logits far from 0, where a cap or a scale shows (tiny random ones are ~0.1)
        base.get_output_embeddings().weight.mul_(50)
    return base


@pytest.mark.parametrize("family", sorted(OWN_HEADS))
def test_logits_are_the_models_own_with_the_prompt_in_front(family):
    base = own_head_model(family)
    try:
        model = softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=3, init="vocab"))
    except softprompt.UnsupportedModelError as error:
        pytest.skip(f"{family}: not supported yet ({error})")
    ids, mask = padded_batch([random_ids(1, n, seed=n)[0] for n in (6, 4)], "left")
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        sparse = model(input_ids=ids, attention_mask=mask, labels=labels, logits_at="labels").logits
        for row in range(2):
            real = ids[row][mask[row].bool()]
            prompt = model.prompt().embeddings[None]  # (1, P, E): the reference prepends the embeddings
            embeds = torch.cat([prompt, base.get_input_embeddings()(real[None])], dim=1)
            expected = base(inputs_embeds=embeds).logits[0, 3:]  # the model's own head, scale and cap
            assert expected.abs().max() > 1  # a cap or scale that matters
            torch.testing.assert_close(full[row][mask[row].bool()], expected, atol=1e-4, rtol=1e-4)
    where = labels[:, 1:] != -100
    torch.testing.assert_close(sparse, full[:, :-1][where])


def test_logits_where_selects_positions_row_by_row():
    model = wrapped("gemma2", "prefix_tuning")
    ids, mask = padded_batch([random_ids(1, n, seed=n)[0] for n in (5, 3)], "left")
    where = torch.zeros(ids.shape, dtype=torch.bool)
    where[0, [1, 4]] = where[1, 3] = True
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        got = model.logits_where(ids, mask, where)
    torch.testing.assert_close(got, full[where])  # (3, V), row-major


def test_the_loss_type_is_causal_whatever_the_base_class_is_named():
    # GPT2LMHeadModel has no loss type of its own; Trainer counts items over shifted labels only for
    # "ForCausalLM", and softprompt's loss is shifted for every causal LM.
    assert tiny_causal_lm("gpt2").loss_type is None
    assert wrapped("gpt2", "prompt_tuning").loss_type == "ForCausalLM"


@pytest.mark.parametrize("method", METHODS)
def test_a_streamer_gets_what_generate_returns_without_stand_ins(method):
    from transformers.generation.streamers import BaseStreamer

    class Recorder(BaseStreamer):
        def __init__(self):
            self.ids: list[int] = []

        def put(self, value):
            self.ids += value.flatten().tolist()

        def end(self):
            pass

    model, recorder = wrapped("llama", method), Recorder()
    ids = random_ids(1, 4)
    output = model.generate(ids, max_new_tokens=3, do_sample=False, streamer=recorder)
    assert recorder.ids == output[0].tolist()  # the input, then each new token; no virtual-token places
