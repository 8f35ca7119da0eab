"""Dynamic padding, length-grouped seeded batch order, and exact mid-epoch resume."""

import random

import pytest
import torch

from softprompt.data.batching import LengthGroupedSampler, collate, make_dataloader
from softprompt.data.tasks import IGNORE_INDEX, Encoded

PAD = 99


def gen_example(source, target):
    return Encoded(source + target, labels=[IGNORE_INDEX] * len(source) + target, prompt_ids=source)


def test_right_padding_pads_after_tokens():
    batch = collate([gen_example([1, 2], [3]), gen_example([4], [5, 6, 7])], PAD, "right")
    assert batch["input_ids"].tolist() == [[1, 2, 3, PAD], [4, 5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 3, -100], [-100, 5, 6, 7]]
    assert "label" not in batch
    assert all(t.dtype == torch.long for t in batch.values())


def test_left_padding_pads_before_tokens():
    batch = collate([Encoded([1, 2, 3], label=1), Encoded([4], label=0)], PAD, "left")
    assert batch["input_ids"].shape == (2, 3)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [PAD, PAD, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["label"].tolist() == [1, 0] and "labels" not in batch


def test_left_padded_labels_line_up_with_tokens():
    batch = collate([gen_example([1], [2]), gen_example([3, 4, 5], [6])], PAD, "left")
    assert batch["labels"].tolist() == [[-100, -100, -100, 2], [-100, -100, -100, 6]]


def test_collate_rejects_bad_batches():
    with pytest.raises(ValueError, match="empty batch"):
        collate([], PAD, "right")
    with pytest.raises(ValueError, match="padding_side"):
        collate([Encoded([1])], PAD, "middle")
    with pytest.raises(ValueError, match="some examples in the batch have 'label'"):
        collate([Encoded([1], label=0), Encoded([2])], PAD, "right")


def lengths_of(n, seed=0):
    rng = random.Random(seed)
    return [rng.randint(1, 200) for _ in range(n)]


def test_sampler_covers_every_index_once_and_is_deterministic():
    lengths = lengths_of(1003)
    sampler = LengthGroupedSampler(lengths, 8, seed=3, mega_batch_factor=5)
    batches = sampler.epoch_batches(0)
    assert sorted(i for b in batches for i in b) == list(range(1003))
    assert len(batches) == len(sampler) == 126  # ceil(1003 / 8)
    assert LengthGroupedSampler(lengths, 8, seed=3, mega_batch_factor=5).epoch_batches(0) == batches
    assert sampler.epoch_batches(1) != batches
    assert LengthGroupedSampler(lengths, 8, seed=4, mega_batch_factor=5).epoch_batches(0) != batches
    # (seed, epoch) = (1, 0) must not replay (0, 1).
    assert LengthGroupedSampler(lengths, 8, seed=1).epoch_batches(0) != LengthGroupedSampler(
        lengths, 8, seed=0
    ).epoch_batches(1)


def test_grouping_by_length_cuts_padding():
    lengths = lengths_of(2000)

    def padded_tokens(group):
        batches = LengthGroupedSampler(lengths, 16, group_by_length=group, seed=0).epoch_batches(0)
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    # Random batches pad to ~ the max of 16 uniform draws; sorted mega-batches pad almost nothing.
    assert padded_tokens(True) < 0.6 * padded_tokens(False)
    assert padded_tokens(True) < 1.05 * sum(lengths)


def test_unshuffled_order_is_data_order():
    sampler = LengthGroupedSampler([3, 1, 2, 5, 4], 2, shuffle=False, group_by_length=False)
    assert list(sampler) == [[0, 1], [2, 3], [4]]
    grouped = LengthGroupedSampler([3, 1, 2, 5, 4], 2, shuffle=False, mega_batch_factor=1)
    assert list(grouped) == [[0, 1], [3, 2], [4]]  # each batch sorted longest first


def test_drop_last_drops_the_short_batch():
    sampler = LengthGroupedSampler(lengths_of(10), 4, drop_last=True, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2 and all(len(b) == 4 for b in batches)


def test_set_epoch_and_skip():
    sampler = LengthGroupedSampler(lengths_of(50), 4, seed=7)
    epoch2 = sampler.epoch_batches(2)
    sampler.set_epoch(2, skip_batches=5)
    assert list(sampler) == epoch2[5:] and len(sampler) == len(epoch2) - 5
    sampler.set_epoch(3)
    assert list(sampler) == sampler.epoch_batches(3)
    with pytest.raises(ValueError, match="skip_batches must be in"):
        sampler.set_epoch(0, skip_batches=14)


def examples_of(n):
    rng = random.Random(1)
    return [Encoded([rng.randint(0, 50) for _ in range(rng.randint(1, 12))], label=i % 2) for i in range(n)]


@pytest.mark.parametrize("group_by_length", [True, False])
def test_resumed_dataloader_replays_the_uninterrupted_run(group_by_length):
    examples = examples_of(45)
    kwargs = dict(pad_token_id=PAD, padding_side="right", seed=11, group_by_length=group_by_length)
    uninterrupted = []
    loader = make_dataloader(examples, 4, **kwargs)
    for epoch in range(2):
        loader.batch_sampler.set_epoch(epoch)
        uninterrupted += [(epoch, b) for b in loader]

    # "Crash" after 7 batches of epoch 1, then resume from (epoch=1, batches consumed=7).
    resumed = make_dataloader(examples, 4, epoch=1, skip_batches=7, **kwargs)
    tail = [(1, b) for b in resumed]
    expected = uninterrupted[len(uninterrupted) - len(tail) :]
    assert len(tail) == 12 - 7  # ceil(45 / 4) batches per epoch
    for (e1, b1), (e2, b2) in zip(tail, expected, strict=True):
        assert e1 == e2
        assert b1.keys() == b2.keys()
        assert all(torch.equal(b1[k], b2[k]) for k in b1)


def test_make_dataloader_without_shuffle_keeps_order():
    examples = examples_of(5)
    batches = list(make_dataloader(examples, 2, PAD, "left", shuffle=False))
    assert [b["label"].tolist() for b in batches] == [[0, 1], [0, 1], [0]]
    assert batches[0]["input_ids"][0, -len(examples[0].input_ids) :].tolist() == examples[0].input_ids


def test_multiple_choice_batches_are_rows_by_choices_by_tokens():
    examples = [
        Encoded([1, 2], label=1, choices=[[3], [4, 5]]),
        Encoded([6], label=0, choices=[[7], [8], [9]]),
    ]
    batch = collate(examples, PAD, "right")
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 3, 4)
    assert batch["input_ids"][0].tolist() == [[1, 2, 3, PAD], [1, 2, 4, 5], [PAD] * 4]
    assert batch["labels"][0].tolist() == [[-100, -100, 3, -100], [-100, -100, 4, 5], [-100] * 4]
    assert batch["attention_mask"][0, 2].tolist() == [0, 0, 0, 0]  # row 0 has no third choice
    assert batch["input_ids"][1].tolist() == [[6, 7, PAD, PAD], [6, 8, PAD, PAD], [6, 9, PAD, PAD]]
    assert batch["label"].tolist() == [1, 0]
    left = collate(examples, PAD, "left")
    assert left["input_ids"][1, 0].tolist() == [PAD, PAD, 6, 7] and left["labels"][1, 0].tolist() == [
        -100
    ] * 3 + [7]


def test_row_targets_keep_their_type():
    assert (
        collate([Encoded([1], label=0.5), Encoded([2], label=2.0)], PAD, "right")["label"].dtype
        == torch.float32
    )
    hot = collate([Encoded([1], label=[1.0, 0.0]), Encoded([2], label=[0.0, 1.0])], PAD, "right")["label"]
    assert hot.tolist() == [[1.0, 0.0], [0.0, 1.0]]
