"""How a task's text becomes token ids: templates over a row's columns, and the text as it is or as a
user's turn inside the tokenizer's chat template.

Instruct models were tuned on conversations; :class:`TextFormat` with ``chat=True`` gives them the
template's text as a user message followed by the opening of the assistant's reply, exactly as
``tokenizer.apply_chat_template(..., add_generation_prompt=True)`` renders it, and ends targets with
the template's end-of-turn token. Truncation cuts the message, never the chat frame around it.

Examples:
    >>> template_fields("{premise} Question: {hypothesis}?")
    ['premise', 'hypothesis']
    >>> tokenizer.chat_template = "{% for m in messages %}<s> {{ m['content'] }} </s>{% endfor %}"
    >>> ids, truncated = TextFormat(chat=True).prompt_ids("a gem", tokenizer, limit=16)
    >>> tokenizer.convert_ids_to_tokens(ids), truncated
    (['<s>', 'a', 'gem', '</s>'], False)
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Stands for the message while the chat template renders, to split what it adds around it.
_SLOT = "\ue000"


@dataclass(frozen=True)
class TextFormat:
    """The text as is (``chat=False``), or inside the tokenizer's chat template (``chat=True``).

    Attributes:
        chat: render each prompt as a user message with the tokenizer's chat template, followed by
            the opening of the assistant's reply; answers (label words, targets) start that reply.
        system_message: with ``chat``, a system message before the user's (None: the template's
            own default, if it has one).
    """

    chat: bool = False
    system_message: str | None = None

    def __post_init__(self) -> None:
        if self.system_message is not None and not self.chat:
            raise ValueError("system_message applies only with the chat template")

    def prompt_ids(self, text: str, tokenizer: Any, limit: int) -> tuple[list[int], bool]:
        """Ids of a prompt of at most ``limit`` tokens, keeping the text's end (next to the answer), and
        whether the text was cut. Plain text keeps the tokenizer's leading special tokens (BOS)."""
        if not self.chat:
            return text_ids(text, tokenizer, limit)
        head, tail = self._frame(tokenizer)
        body = tokenizer(text, add_special_tokens=False)["input_ids"]
        room = limit - len(head) - len(tail)
        if room < 1:
            raise ValueError(
                f"length limit {limit} leaves no room inside the chat template's {len(head) + len(tail)} tokens"
            )
        kept = body[len(body) - room :] if len(body) > room else body
        return head + kept + tail, len(kept) < len(body)

    def answer_ids(self, text: str, tokenizer: Any) -> list[int]:
        """Ids of an answer continuing the prompt (no special tokens). A chat reply starts its own turn,
        so its leading whitespace is dropped."""
        return tokenizer(text.lstrip() if self.chat else text, add_special_tokens=False)["input_ids"]

    def word_ids(self, word: str, tokenizer: Any) -> list[int]:
        """Ids of a label word as the answer: with a leading space after plain text (added if missing),
        as written at the start of a chat reply."""
        return self.answer_ids(word if self.chat or word[:1].isspace() else " " + word, tokenizer)

    def end_id(self, tokenizer: Any) -> int:
        """The token that ends an answer: the chat template's end of turn, or the tokenizer's EOS."""
        if self.chat:
            turn = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _SLOT}]
            after = self._render(tokenizer, turn, generation_prompt=False).partition(_SLOT)[2]
            ids = tokenizer(after, add_special_tokens=False)["input_ids"]
            if ids:
                return ids[0]
        if tokenizer.eos_token_id is None:
            raise ValueError("generation needs a tokenizer with an eos_token to end targets")
        return tokenizer.eos_token_id

    def _frame(self, tokenizer: Any) -> tuple[list[int], list[int]]:
        """The ids the chat template puts before the user's message and after it (through the opening
        of the assistant's reply)."""
        turn = [{"role": "user", "content": _SLOT}]
        head, _, tail = self._render(tokenizer, turn, generation_prompt=True).partition(_SLOT)
        return (
            tokenizer(head, add_special_tokens=False)["input_ids"],
            tokenizer(tail, add_special_tokens=False)["input_ids"],
        )

    def _render(self, tokenizer: Any, turns: list[dict[str, str]], *, generation_prompt: bool) -> str:
        """The chat template over [the system message] and ``turns`` (one holding the slot), as text."""
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model')!r} has no chat template; "
                "set the task's chat_template to false"
            )
        system = [] if self.system_message is None else [{"role": "system", "content": self.system_message}]
        try:
            text = tokenizer.apply_chat_template(
                [*system, *turns], tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as exc:  # jinja raises its own errors (e.g. "System role not supported")
            raise ValueError(f"the tokenizer's chat template failed: {exc}") from exc
        if text.count(_SLOT) != 1:
            raise ValueError("the tokenizer's chat template does not show the message as it is given")
        return text


def template_fields(template: str) -> list[str]:
    """Column names a `str.format` template refers to, in order of first use.

    Examples:
        >>> template_fields("{premise} Question: {hypothesis}? {premise}")
        ['premise', 'hypothesis']
    """
    names = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        # "{row.attr}" and "{row[0]}" both read column "row".
        name = field.split(".", 1)[0].split("[", 1)[0]
        if not name or name.isdigit():
            raise ValueError(
                f"template {template!r} has a positional field; name the column, e.g. {{sentence}}"
            )
        names.append(name)
    return list(dict.fromkeys(names))


def format_template(template: str, row: Mapping[str, Any]) -> str:
    """`template.format(**row)`, with a missing field named along with the available columns.

    Examples:
        >>> format_template("Review: {sentence}", {"sentence": "fine", "label": 1})
        'Review: fine'
    """
    try:
        return template.format(**row)
    except KeyError as exc:
        raise ValueError(
            f"template {template!r} uses field {exc.args[0]!r}, which the row lacks; "
            f"available columns: {list(row)}"
        ) from None
    except IndexError:
        raise ValueError(
            f"template {template!r} has a positional field; name the column, e.g. {{sentence}}"
        ) from None


def special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text: ([BOS], []) for Llama,
    ([], []) for GPT-2, ([CLS], [SEP]) for BERT."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


def text_ids(text: str, tokenizer: Any, limit: int, *, keep: str = "end") -> tuple[list[int], bool]:
    """Ids of ``text`` with the tokenizer's special tokens, cut to ``limit`` tokens by keeping the
    text's ``"end"`` (next to an answer) or its ``"start"`` (a head reads the whole row), and whether
    it was cut.

    Examples:
        >>> text_ids("a gem film", tokenizer, 2, keep="start")
        ([8, 9], True)
    """
    head, tail = special_frame(tokenizer)
    body = tokenizer(text, add_special_tokens=False)["input_ids"]
    room = limit - len(head) - len(tail)
    if room < 1:
        raise ValueError(f"length limit {limit} leaves no room after the special tokens {head + tail}")
    kept = body[:room] if keep == "start" else body[len(body) - room :] if len(body) > room else body
    return head + kept + tail, len(kept) < len(body)
