"""The built-in example task: route customer-support messages to one of four teams.

Rows in ``data/{train,dev}.jsonl`` are ``{"text": ..., "label": ...}`` (written by
``make_data.py``); the label is scored by the first token of its label word after ``TEMPLATE``.

Examples:
    >>> TEMPLATE.format(text="My parcel never came.")
    'Support ticket: My parcel never came.\\nCategory:'
    >>> sorted(LABEL_WORDS)
    ['account', 'billing', 'shipping', 'technical']
"""

from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"

TEMPLATE = "Support ticket: {text}\nCategory:"

# label value in the data -> label word; each word is one distinct token with its leading space.
LABEL_WORDS: dict[str, str] = {
    "billing": "billing",
    "technical": "technical",
    "shipping": "shipping",
    "account": "account",
}
