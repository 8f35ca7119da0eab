"""The built-in example's support tickets as data for the other task kinds (the configs under ``configs/``).

Built from the same parts as :mod:`make_data` (dev rows from the issue sentences training never sees):

* **multi-label** — a ticket raising one or two teams' issues; ``labels`` lists the teams.
* **regression** — a ticket with urgency cues in its opening and closing words; ``urgency`` (0-4) is
  the sum of their weights ("Urgent:" 2, "Please sort this out asap." 2, "Not happy." 1, ...).
* **token classification** — a ticket split into words (``tokens``), its slot values tagged in BIO
  form (``tags``): products, order numbers, amounts of money and devices.
* **multiple choice** — a ticket and the four teams' replies in a shuffled order (``replies``);
  ``answer`` is the index of the right team's reply.

Run from the project root (deterministic: the shipped files are this script's output):
    python src/softprompt/examples/task_kinds.py         # writes examples/data/<kind>_{train,dev}.jsonl

Examples:
    >>> row = entity_row("billing", issues_for("billing", "train"), random.Random(7))
    >>> [(token, tag) for token, tag in zip(row["tokens"], row["tags"], strict=True) if tag != "O"]
    [('$', 'B-MONEY'), ('250.00', 'I-MONEY')]
"""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Callable
from pathlib import Path

from softprompt.examples.make_data import (
    CLOSERS,
    DATA_DIR,
    DETAILS,
    LABELS,
    OPENERS,
    fill_spans,
    issues_for,
    write_jsonl,
)

Row = dict[str, object]

# How a second issue joins the first in a multi-label ticket.
CONNECTORS = ["Also,", "And another thing:", "On top of that,", "Separately,", "One more problem:"]

# Opening and closing words with their urgency weight; a ticket's urgency is the sum of its two.
URGENT_OPENERS = {"": 0, "Hi!": 0, "Hello team.": 0, "Not happy.": 1, "Urgent:": 2, "URGENT, please read:": 2}
URGENT_CLOSERS = {
    "Thanks.": 0,
    "No rush, whenever you can.": 0,
    "Any update would be appreciated.": 1,
    "This is really frustrating.": 1,
    "Please sort this out asap.": 2,
    "I need this fixed today, it can't wait.": 2,
}

# Slots whose values are tagged as entities, and their tag names.
ENTITY_SLOTS = {"item": "PRODUCT", "order": "ORDER", "amount": "MONEY", "device": "DEVICE"}
TAGS = ["O", *(f"{edge}-{name}" for name in ENTITY_SLOTS.values() for edge in "BI")]

# Each team's reply, the choices of the multiple-choice task.
REPLIES = {
    "billing": "Our billing team will check the charge and sort out your money.",
    "technical": "Our technical team will look into the problem with the app or the website.",
    "shipping": "Our delivery team will track down your parcel with the courier.",
    "account": "Our account team will help you sign in and update your profile.",
}

WORD = re.compile(r"\w+(?:['.]\w+)*|[^\w\s]")  # words (with inner dots and apostrophes) and punctuation


def _issue(label: str, issues: list[str], rng: random.Random) -> list[tuple[str, str | None]]:
    """A team's issue sentence as filled pieces, starting with a capital (slot-initial ones too)."""
    pieces = fill_spans(rng.choice(issues), rng)
    text, slot = pieces[0]
    return [(text[0].upper() + text[1:], slot), *pieces[1:]]


def _detail_spans(label: str, rng: random.Random) -> list[tuple[str, str | None]]:
    """Half the time, one of the team's detail sentences as filled pieces (else none)."""
    return fill_spans(" " + rng.choice(DETAILS[label]), rng) if rng.random() < 0.5 else []


def _detail(label: str, rng: random.Random) -> str:
    return "".join(text for text, _ in _detail_spans(label, rng)).strip()


def _join(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def multi_label_row(labels: list[str], issues: dict[str, list[str]], rng: random.Random) -> Row:
    """A ticket raising the issues of ``labels`` (one or two teams), in that order."""
    sentences = ["".join(text for text, _ in _issue(label, issues[label], rng)) for label in labels]
    if len(sentences) == 2:
        second = sentences[1]
        sentences[1] = f"{rng.choice(CONNECTORS)} {second[0].lower()}{second[1:]}"
    text = _join(rng.choice(OPENERS), *sentences, rng.choice(CLOSERS))
    return {"text": text, "labels": sorted(labels, key=LABELS.index)}


def urgency_row(label: str, issues: list[str], rng: random.Random) -> Row:
    """A ticket whose opening and closing words carry its urgency."""
    opener, closer = rng.choice(list(URGENT_OPENERS)), rng.choice(list(URGENT_CLOSERS))
    issue = "".join(text for text, _ in _issue(label, issues, rng))
    text = _join(opener, issue, _detail(label, rng), closer)
    return {"text": text, "urgency": float(URGENT_OPENERS[opener] + URGENT_CLOSERS[closer])}


def entity_row(label: str, issues: list[str], rng: random.Random) -> Row:
    """A ticket as words with BIO tags on its products, order numbers, amounts and devices."""
    pieces = [(rng.choice(OPENERS), None), *_issue(label, issues, rng), *_detail_spans(label, rng)]
    tokens: list[str] = []
    tags: list[str] = []
    for text, slot in pieces:
        words = WORD.findall(text)
        entity = ENTITY_SLOTS.get(slot or "")
        tokens += words
        tags += [("B-" if i == 0 else "I-") + entity if entity else "O" for i in range(len(words))]
    return {"tokens": tokens, "tags": tags}


def choice_row(label: str, issues: list[str], rng: random.Random) -> Row:
    """A ticket, the four replies in a random order, and the index of its team's reply."""
    issue = "".join(text for text, _ in _issue(label, issues, rng))
    order = list(LABELS)
    rng.shuffle(order)
    text = _join(rng.choice(OPENERS), issue, _detail(label, rng), rng.choice(CLOSERS))
    return {"text": text, "replies": [REPLIES[team] for team in order], "answer": order.index(label)}


def make_kind_rows(kind: str, n: int, split: str, rng: random.Random) -> list[Row]:
    """``n`` distinct rows of ``kind`` ("multi_label", "regression", "token_classification" or
    "multiple_choice") for ``split``, the teams' issues taken in turn."""
    issues = {label: issues_for(label, split) for label in LABELS}
    makers: dict[str, Callable[[str], Row]] = {
        "multi_label": lambda label: multi_label_row(_teams(label, rng), issues, rng),
        "regression": lambda label: urgency_row(label, issues[label], rng),
        "token_classification": lambda label: entity_row(label, issues[label], rng),
        "multiple_choice": lambda label: choice_row(label, issues[label], rng),
    }
    rows: dict[str, Row] = {}
    while len(rows) < n:
        row = makers[kind](LABELS[len(rows) % len(LABELS)])
        rows.setdefault(repr(row), row)  # distinct rows, in the order they were made
    return list(rows.values())


def _teams(label: str, rng: random.Random) -> list[str]:
    """``label`` alone (three times in five) or with another team."""
    if rng.random() < 0.6:
        return [label]
    return [label, rng.choice([other for other in LABELS if other != label])]


KINDS = ("multi_label", "regression", "token_classification", "multiple_choice")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="folder for <kind>_{train,dev}.jsonl")
    parser.add_argument("--train-rows", type=int, default=240)
    parser.add_argument("--dev-rows", type=int, default=60)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    for offset, kind in enumerate(KINDS):
        for split, n, seed in (("train", args.train_rows, 0), ("dev", args.dev_rows, 1)):
            rows = make_kind_rows(kind, n, split, random.Random(args.seed + 10 * offset + seed))
            write_jsonl(rows, args.out / f"{kind}_{split}.jsonl")
    print(f"wrote {args.train_rows} train and {args.dev_rows} dev rows of {', '.join(KINDS)} to {args.out}")


if __name__ == "__main__":
    main()
