"""Write the built-in example data set: customer-support messages routed to one of four teams.

Each message is composed from hand-written parts (greeting, the issue itself with filled-in
slots, an optional detail, an optional sign-off), so the wording varies a lot while the label
stays certain. Some details mention another team's vocabulary on purpose ("I paid for express
delivery" in a shipping message) so that keyword spotting is not enough. Output is deterministic
for a given seed and label-balanced; dev messages are built around issue sentences that no
training message uses, so the dev score measures generalisation, not recall.

Run from the project root:
    python src/softprompt/examples/make_data.py            # writes examples/data/{train,dev}.jsonl

Examples:
    >>> rows = make_rows(random.Random(0), per_label=2, split="dev")
    >>> sorted({r["label"] for r in rows})
    ['account', 'billing', 'shipping', 'technical']
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"

# Slot values shared by all teams. A slot is written {name} inside a phrase.
SLOTS: dict[str, list[str]] = {
    "item": [
        "blender",
        "desk lamp",
        "pair of running shoes",
        "phone case",
        "coffee grinder",
        "backpack",
        "winter jacket",
        "set of pans",
        "keyboard",
        "yoga mat",
        "kettle",
        "bookshelf",
        "baby monitor",
        "electric toothbrush",
        "office chair",
        "rain boots",
        "smartwatch",
        "air fryer",
        "duvet cover",
        "camping stove",
    ],
    "order": [
        "#48213",
        "#50977",
        "#31760",
        "#77402",
        "#66158",
        "#20935",
        "#89314",
        "#12066",
        "#45871",
        "#93027",
        "number 55190",
        "number 70428",
        "ending in 318",
        "ending in 902",
    ],
    "amount": [
        "$19.99",
        "$42.50",
        "$7.00",
        "$129",
        "$64.80",
        "$15",
        "$250.00",
        "$9.49",
        "$88",
        "£34.99",
        "€59",
        "$3.99",
    ],
    "days": [
        "three days",
        "a week",
        "ten days",
        "two weeks",
        "five days",
        "over a month",
        "since Monday",
        "since last Friday",
        "nearly three weeks",
    ],
    "device": [
        "iPhone",
        "Android phone",
        "Samsung tablet",
        "iPad",
        "work laptop",
        "Chromebook",
        "MacBook",
        "Windows PC",
        "Pixel",
    ],
    "feature": [
        "search bar",
        "checkout page",
        "wishlist",
        "order history page",
        "size guide",
        "chat window",
        "photo upload",
        "barcode scanner",
        "voucher field",
        "product filter",
    ],
    "carrier": ["the courier", "the driver", "the delivery company", "the postal service", "the carrier"],
    "card": ["credit card", "debit card", "PayPal", "Visa card", "Mastercard", "bank account", "Apple Pay"],
    "month": ["March", "April", "last month", "this month", "January", "the last two months"],
}

# The issue sentence: the part that decides the team.
ISSUES: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for order {order}.",
        "My {card} shows a payment of {amount} that I don't recognise.",
        "Why did my subscription price go up without any notice?",
        "I cancelled my membership but you still took {amount} in {month}.",
        "The invoice for order {order} has the wrong company name on it.",
        "I returned the {item} {days} ago and the refund still hasn't reached my {card}.",
        "Can I get a copy of the VAT receipt for my last purchase?",
        "The discount code was accepted but I paid full price anyway.",
        "There's an extra fee of {amount} on my statement that nobody explained.",
        "I'd like to switch my monthly plan to yearly billing.",
        "You refunded {amount} but I paid a lot more than that for the {item}.",
        "My {card} expired, how do I update the payment details for the next charge?",
        "The price dropped the day after I bought the {item}, can I get the difference back?",
        "I was billed for a free trial I never signed up for.",
        "The total on my receipt doesn't match what my bank took.",
        "Please stop charging my {card}, I closed the plan in {month}.",
        "I got an invoice for {amount} for something I never ordered.",
        "Do you offer paying in instalments for bigger orders like the {item}?",
        "My gift card balance was deducted but the order was cancelled.",
        "The sales tax on order {order} looks far too high.",
        "I'm still waiting on the money back for the {item} you said you'd reimburse.",
        "Your system took {amount} from my account three times this week.",
    ],
    "technical": [
        "The app crashes every time I open the {feature}.",
        "Your website shows a blank white page on my {device}.",
        "I keep getting error 503 when I try to load the {feature}.",
        "The {feature} doesn't respond when I tap it on my {device}.",
        "Since the last update the app freezes on the loading screen.",
        "Pictures of products won't load, I just see grey boxes.",
        "The {feature} throws an error message in red and then nothing happens.",
        "Notifications stopped working on my {device} after the update.",
        "The page keeps refreshing itself so I can't finish anything.",
        "When I add the {item} to my basket the button just spins forever.",
        "The smart {item} won't pair with your app over Bluetooth.",
        "Your site is extremely slow on my {device}, every click takes ages.",
        "The app says 'something went wrong' whenever I use the {feature}.",
        "The firmware update bricked my {item}, it won't turn on.",
        "Dark mode makes the text in the {feature} invisible.",
        "The QR code scanner in your app doesn't focus on my {device}.",
        "I can't download the app from the store, it fails at 90 percent.",
        "The {feature} looks broken, the buttons overlap each other on my {device}.",
        "Videos on the product pages just buffer and never play.",
        "The app drains my {device}'s battery even when it's closed.",
        "After installing the update the app won't open at all on my {device}.",
        "Your website logs a script error in my browser and the {feature} stays empty.",
    ],
    "shipping": [
        "My parcel with the {item} hasn't arrived after {days}.",
        "Tracking says delivered but there's nothing at my door.",
        "The tracking number for order {order} hasn't updated in {days}.",
        "The {item} arrived smashed, the box was crushed.",
        "I got someone else's package instead of my {item}.",
        "Can you change the delivery address on order {order}? I've moved.",
        "{carrier} left my parcel out in the rain.",
        "Only half of order {order} turned up, the {item} is missing.",
        "When will order {order} be dispatched? It still says processing.",
        "{carrier} says the address doesn't exist, but it's where I've lived for years.",
        "Is it possible to pick up the {item} from a locker instead of home delivery?",
        "My package has been stuck in customs for {days}.",
        "The estimated arrival date for the {item} keeps moving back.",
        "{carrier} marked my order as attempted delivery but I was home all day.",
        "Do you ship to Norway, and how long does it usually take?",
        "The parcel was returned to your warehouse without anyone trying to deliver it.",
        "I need the {item} by Friday, can I upgrade to next-day delivery?",
        "My order {order} went to my old address even though I updated it.",
        "The box for the {item} arrived open and half empty.",
        "{carrier} handed my parcel to a neighbour I don't know.",
        "It's been {days} and the {item} still hasn't left the warehouse.",
        "The delivery slot I picked was missed and nobody told me.",
    ],
    "account": [
        "I forgot my password and the reset email never comes.",
        "I can't log in, it says my email isn't registered.",
        "Please delete my account and all my personal data.",
        "How do I change the email address on my profile?",
        "Someone else seems to have logged into my account from abroad.",
        "My account was locked after too many sign-in attempts.",
        "I'd like to merge my two accounts into one.",
        "The verification code for two-step sign-in never arrives on my phone.",
        "How do I change the name shown on my profile?",
        "I want to unsubscribe from all your marketing emails.",
        "My username was changed and I didn't do it.",
        "I signed up with my old work email and can't access it anymore.",
        "Can I turn off two-factor authentication? I lost my phone.",
        "My loyalty points disappeared from my profile overnight.",
        "I can't find where to update my phone number in my profile settings.",
        "Please close my account, I don't use it anymore.",
        "The link to confirm my new account says it has expired.",
        "I think my account was hacked, my saved addresses were changed.",
        "How can I download a copy of the personal data you hold about me?",
        "My account shows the wrong date of birth and I can't edit it.",
        "I keep getting signed out of my account every few minutes.",
        "I'd like to add my partner as a second user on my account.",
    ],
}

# Extra detail sentences. Some name another team's words on purpose (see module docstring).
DETAILS: dict[str, list[str]] = {
    "billing": [
        "I've attached a screenshot of my bank statement.",
        "The {item} itself is fine, this is only about the money.",
        "It was delivered on time, so that's not the problem.",
        "I logged in to check and the charge is listed twice there too.",
        "This is the second time it has happened {month}.",
        "I paid with my {card}.",
        "",
    ],
    "technical": [
        "I've already cleared the cache and reinstalled.",
        "I tried both wifi and mobile data.",
        "I'm logged in and my order history shows fine otherwise.",
        "My payment went through before, so it's not my card.",
        "It was working fine {days} ago.",
        "I'm using the latest version on my {device}.",
        "",
    ],
    "shipping": [
        "I paid extra for express delivery.",
        "The order confirmation email came through straight away.",
        "My tracking link shows the parcel in another city.",
        "I need it for a birthday this weekend.",
        "The money was taken from my {card} right away, so it definitely went through.",
        "I checked with my neighbours already.",
        "",
    ],
    "account": [
        "I've tried three different browsers.",
        "I have an open order for a {item} so I need access soon.",
        "The app just shows the login screen again.",
        "My billing details are stored in there so I'm worried.",
        "I've been a customer for years.",
        "I checked my spam folder too.",
        "",
    ],
}

OPENERS = [
    "",
    "",
    "",
    "Hi!",
    "Hello.",
    "Hi there!",
    "Good morning.",
    "Hey!",
    "Hello team.",
    "Hi, quick question.",
    "Not happy.",
    "Urgent:",
    "Hi again!",
    "Sorry to bother you.",
]
CLOSERS = [
    "",
    "",
    "",
    "Thanks.",
    "Thank you!",
    "Please help.",
    "Any update would be appreciated.",
    "Please sort this out asap.",
    "Cheers!",
    "Regards, Sam",
    "Thanks in advance, Priya",
    "Looking forward to your reply.",
    "This is really frustrating.",
    "Kind regards, Tom",
]

LABELS = tuple(ISSUES)


def fill(phrase: str, rng: random.Random) -> str:
    """Replace each {slot} in ``phrase`` with a random value of that slot."""
    return "".join(text for text, _ in fill_spans(phrase, rng))


def fill_spans(phrase: str, rng: random.Random) -> list[tuple[str, str | None]]:
    """``phrase`` with its slots filled, as (text, slot name or None) pieces, so the values can be tagged."""
    pieces: list[tuple[str, str | None]] = []
    for index, part in enumerate(re.split(r"\{(\w+)\}", phrase)):
        if index % 2:  # re.split puts each slot's name at an odd index
            pieces.append((rng.choice(SLOTS[part]), part))
        elif part:
            pieces.append((part, None))
    return pieces


def issues_for(label: str, split: str) -> list[str]:
    """The issue phrasings of ``label`` that ``split`` may use: every third one is kept for dev.

    Dev messages therefore never share their key sentence with a training message, so the dev
    score measures whether the task was learnt, not whether 88 sentences were memorised.
    """
    keep_dev = split == "dev"
    return [p for i, p in enumerate(ISSUES[label]) if (i % 3 == 2) == keep_dev]


def compose(label: str, issues: list[str], rng: random.Random) -> str:
    """One message for ``label``: [opener] issue [detail] [closer], sometimes all lower case."""
    issue = fill(rng.choice(issues), rng)
    issue = issue[0].upper() + issue[1:]  # slot-initial issues like "{carrier} ..." start a sentence
    detail = fill(rng.choice(DETAILS[label]), rng) if rng.random() < 0.5 else ""
    parts = [rng.choice(OPENERS), issue, detail, rng.choice(CLOSERS)]
    text = " ".join(p for p in parts if p)
    if rng.random() < 0.15:  # people type in lower case on phones
        text = text.lower()
    return text


def make_rows(rng: random.Random, per_label: int, split: str) -> list[dict[str, str]]:
    """``per_label`` distinct messages per label for ``split`` ("train" or "dev"), shuffled."""
    rows: list[dict[str, str]] = []
    for label in LABELS:
        issues = issues_for(label, split)
        texts: set[str] = set()
        while len(texts) < per_label:
            texts.add(compose(label, issues, rng))
        rows += [{"text": t, "label": label} for t in sorted(texts)]  # sorted: set order is not stable
    rng.shuffle(rows)
    return rows


def write_jsonl(rows: list[dict[str, str]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="folder for train.jsonl and dev.jsonl")
    parser.add_argument("--train-per-label", type=int, default=200)
    parser.add_argument("--dev-per-label", type=int, default=50)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()

    # One generator per split: dev stays the same when the train size changes.
    train = make_rows(random.Random(args.seed), args.train_per_label, "train")
    dev = make_rows(random.Random(args.seed + 1), args.dev_per_label, "dev")
    write_jsonl(train, args.out / "train.jsonl")
    write_jsonl(dev, args.out / "dev.jsonl")
    print(f"wrote {len(train)} train and {len(dev)} dev rows to {args.out}")


if __name__ == "__main__":
    main()
