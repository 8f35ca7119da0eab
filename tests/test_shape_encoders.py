"""Encoders and encoder-decoders with no table entry, read by the probe: embedding projections (ELECTRA,
ALBERT), ALBERT's shared layer, RoBERTa-style positions (XLM-R, MPNet), encoders whose attention is inline
and takes its prefix through positions (MPNet, RoFormer, Megatron-BERT), Pegasus and M2M-100 — each against the model's own numbers."""

import pytest
import torch
import transformers as T
from tiny import _BART, _ENCODER, VOCAB, random_ids

import softprompt
from softprompt.families import model_shape

_ENCODER = {**_ENCODER, "num_hidden_layers": 3}
ENCODERS = {
    "electra": lambda: T.ElectraConfig(**_ENCODER, embedding_size=16),  # embeds 16 wide, projects to 32
    "albert": lambda: T.AlbertConfig(**_ENCODER, embedding_size=16),  # and one layer shared by all 3
    "xlm-roberta": lambda: T.XLMRobertaConfig(**{**_ENCODER, "pad_token_id": 1}),
    "mpnet": lambda: T.MPNetConfig(**{**_ENCODER, "pad_token_id": 1}),
    "roformer": lambda: T.RoFormerConfig(**_ENCODER),
    "megatron-bert": lambda: T.MegatronBertConfig(**_ENCODER),
    "bert": lambda: T.BertConfig(**_ENCODER),
}
NO_ENCODER_PREFIX = ["mpnet", "roformer", "megatron-bert"]
_SEQ2SEQ = {**_BART, "encoder_layers": 2, "decoder_layers": 2}
SEQ2SEQ = {
    "pegasus": lambda: T.PegasusConfig(**_SEQ2SEQ),
    "m2m_100": lambda: T.M2M100Config(**_SEQ2SEQ),
}
PROMPT = softprompt.PromptTuningConfig(num_virtual_tokens=3, init="random")
DEEP = softprompt.PrefixTuningConfig(num_virtual_tokens=2, init="random")


def encoder(model_type):
    torch.manual_seed(0)
    model = T.AutoModelForSequenceClassification.from_config(ENCODERS[model_type]())
    model.config._name_or_path = f"tiny-{model_type}"
    return model.eval()


def seq2seq(model_type):
    torch.manual_seed(0)
    model = T.AutoModelForSeq2SeqLM.from_config(SEQ2SEQ[model_type]())
    model.config._name_or_path = f"tiny-{model_type}"
    return model.eval()


@pytest.mark.parametrize("model_type", sorted(ENCODERS))
def test_prompt_tuning_equals_its_embeddings_in_front_of_the_input(model_type):
    base = encoder(model_type)
    model = softprompt.wrap(base, PROMPT).eval()
    assert model_type not in softprompt.FAMILIES and model.shape.kind == "encoder"
    assert model.shape.embed_dim == base.get_input_embeddings().embedding_dim
    ids = random_ids(2, 5)
    embeds = torch.cat(
        [model.prompt().embeddings[None].expand(2, -1, -1), base.get_input_embeddings()(ids)], 1
    )
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, base(inputs_embeds=embeds).logits)


@pytest.mark.parametrize("model_type", ["electra", "albert"])
def test_a_prompt_saved_at_the_embedding_width_reloads_onto_the_same_model(model_type, tmp_path):
    model = softprompt.wrap(encoder(model_type), PROMPT).eval()
    assert model.shape.embed_dim == 16 and model.shape.hidden_size == 32
    ids = random_ids(2, 4)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    path = model.save(tmp_path / "task.safetensors")
    again = softprompt.load(encoder(model_type), path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, expected)


@pytest.mark.parametrize("model_type", ["albert", "bert", "electra", "xlm-roberta"])
def test_every_number_of_a_deep_prompt_is_read(model_type):
    # ALBERT runs one attention module for all its layers: one layer of prefix, read in every call
    model = softprompt.wrap(encoder(model_type), DEEP).train()
    layers = 1 if model_type == "albert" else 3
    assert model.shape.num_layers == layers and model.prompt.prefix.shape == (2, layers * 2 * 32)
    model(input_ids=random_ids(2, 5), labels=torch.tensor([0, 1])).loss.backward()
    assert (model.prompt.prefix.grad != 0).all()


@pytest.mark.parametrize("model_type", ["albert", "xlm-roberta", "electra"])
def test_a_masked_deep_prompt_changes_nothing(model_type):
    model = softprompt.wrap(encoder(model_type), DEEP).eval()
    ids = random_ids(2, 5)
    prompts = model.own_prompts(2, ids.device)
    prompts.sites["encoder"].mask = torch.zeros_like(prompts.sites["encoder"].mask)
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids, row_prompts=prompts).logits, model.base_model(input_ids=ids).logits
        )
        assert not torch.allclose(model(input_ids=ids).logits, model.base_model(input_ids=ids).logits)


def test_roberta_style_positions_are_read_from_the_position_table():
    assert model_shape(encoder("xlm-roberta")).position_offset == 2  # padding_idx 1 + 1
    assert model_shape(encoder("mpnet")).position_offset == 2
    assert model_shape(encoder("bert")).position_offset == 0


@pytest.mark.parametrize("model_type", NO_ENCODER_PREFIX)
def test_encoders_whose_attention_is_inline_take_deep_prompts_through_positions(model_type):
    base = encoder(model_type)
    implementation = base.config._attn_implementation
    assert softprompt.wrap(base, DEEP).shape.encoder_prefix_route == "positions"
    assert base.config._attn_implementation == implementation  # the probe switched nothing for good


def test_the_encoder_probe_switches_the_attention_back():
    base = encoder("bert")
    model_shape(base)
    assert base.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("model_type", sorted(SEQ2SEQ))
def test_encoder_decoders_with_no_table_entry(model_type):
    base = seq2seq(model_type)
    shape = model_shape(base)
    assert (shape.kind, shape.num_layers, len(shape.decoder_layers), shape.index_positions) == (
        "seq2seq",
        2,
        2,
        True,  # sinusoidal positions by index, no position_ids
    )
    model = softprompt.wrap(base, PROMPT).eval()
    ids, labels = random_ids(2, 5), random_ids(2, 4, seed=1)
    embeds = torch.cat(
        [model.prompt().embeddings[None].expand(2, -1, -1), base.get_input_embeddings()(ids)], 1
    )
    with torch.no_grad():
        got = model(input_ids=ids, labels=labels)
        # the model's own loss and its own shift of the labels (M2M-100 has no method for it)
        expected = base(inputs_embeds=embeds, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits)
    torch.testing.assert_close(got.loss, expected.loss)
    prefix = softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=2)).eval()
    assert prefix.generate(ids, max_new_tokens=3, min_new_tokens=3).shape == (2, 4)


def test_a_mixture_of_experts_encoder_decoder_keeps_its_router_outputs():
    # Switch Transformers' loss reads the encoder's router probabilities: its own encoder output is passed on
    torch.manual_seed(0)
    base = T.SwitchTransformersForConditionalGeneration(
        T.SwitchTransformersConfig(
            vocab_size=VOCAB,
            d_model=32,
            d_kv=8,
            d_ff=48,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            num_experts=2,
            encoder_sparse_step=1,
            decoder_sparse_step=1,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
        )
    ).eval()
    model = softprompt.wrap(base, PROMPT).eval()
    ids, labels = random_ids(2, 5), random_ids(2, 4, seed=1)
    embeds = torch.cat(
        [model.prompt().embeddings[None].expand(2, -1, -1), base.get_input_embeddings()(ids)], 1
    )
    with torch.no_grad():
        got, expected = model(input_ids=ids, labels=labels), base(inputs_embeds=embeds, labels=labels)
    torch.testing.assert_close(got.loss, expected.loss)
    torch.testing.assert_close(got.logits, expected.logits)
