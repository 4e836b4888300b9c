from __future__ import annotations

import pytest
import torch

from olmokit.data.longctx import (
    IGNORE_INDEX,
    TaskDataset,
    TaskVocab,
    example_generator,
    long_documents,
    mqar_example,
    mqar_length,
    passkey_example,
    passkey_length,
    passkey_text_example,
    stack_examples,
)
from olmokit.data.stdlib import Corpus, Document
from olmokit.errors import DataError
from olmokit.loading import load_tokenizer

V = TaskVocab()


def test_vocab_layout_is_disjoint_and_chance_exact():
    v = TaskVocab(n_filler=5, n_keys=6, n_values=7)
    assert (v.filler_start, v.key_start, v.value_start, v.size) == (4, 9, 15, 22)
    assert v.chance() == pytest.approx(1 / 7)
    assert v.chance(2) == pytest.approx(1 / 49)
    with pytest.raises(DataError, match="n_values"):
        TaskVocab(n_values=0)


@pytest.mark.parametrize("digits", [1, 3])
def test_passkey_places_the_needle_at_the_distance_and_labels_only_the_answer(digits):
    for i in range(20):
        ex = passkey_example(example_generator(0, i), V, 300, (50, 200), digits=digits)
        ids, labels = ex.input_ids, ex.labels
        assert ids.shape == labels.shape == (300,)
        assert ids[0] == V.BOS
        assert ex.answer_positions == list(range(300 - digits, 300))
        d = ex.info["distance"]
        assert 50 <= d <= 200 and ex.distances == [d] * digits
        needle = ex.evidence_positions[0]
        assert ids[needle - 1] == V.NEEDLE and ids[299 - digits] == V.QUERY
        assert torch.equal(ids[needle : needle + digits], ids[300 - digits :])
        # labels: the answer only, equal to the ids there
        scored = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
        assert scored == ex.answer_positions
        assert torch.equal(labels[scored], ids[scored])
        # the value range appears nowhere else: the needle is the only evidence
        is_value = ids >= V.value_start
        assert is_value.nonzero().flatten().tolist() == [
            *range(needle, needle + digits),
            *ex.answer_positions,
        ]
        assert ids.count_nonzero() == 300  # no PAD anywhere
        assert int((ids == V.NEEDLE).sum()) == 1 and int((ids == V.QUERY).sum()) == 1


def test_passkey_length_bounds_and_errors():
    assert passkey_length(10) == 13 and passkey_length((5, 10), digits=2) == 14
    passkey_example(example_generator(0, 0), V, passkey_length(10), 10)  # the minimum fits
    with pytest.raises(DataError, match="too short"):
        passkey_example(example_generator(0, 0), V, passkey_length(10) - 1, 10)
    with pytest.raises(DataError, match="distance"):
        passkey_example(example_generator(0, 0), V, 100, 1, digits=1)
    with pytest.raises(DataError, match="distance"):
        passkey_example(example_generator(0, 0), V, 100, (20, 10))


@pytest.mark.parametrize("n_pairs", [1, 8, 32])
def test_mqar_pairs_are_recalled_at_least_distance_later(n_pairs):
    length = mqar_length(n_pairs, (64, 96), write_span=80)
    for i in range(10):
        ex = mqar_example(example_generator(3, i), V, n_pairs, length, (64, 96), write_span=80)
        ids, labels = ex.input_ids, ex.labels
        d = ex.info["distance"]
        assert 64 <= d <= 96
        q0 = length - 3 * n_pairs
        keys = ids[q0 + 1 :: 3]
        assert len(set(keys.tolist())) == n_pairs  # distinct keys
        assert ((keys >= V.key_start) & (keys < V.value_start)).all()
        assert (ids[q0::3] == V.QUERY).all()
        scored = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
        assert scored == ex.answer_positions == list(range(q0 + 2, length, 3))
        region = range(q0 - d - 80, q0 - d)
        for ans, ev in zip(ex.answer_positions, ex.evidence_positions, strict=True):
            assert ids[ev - 1] == ids[ans - 1] and ids[ev] == ids[ans] == labels[ans]
            assert ev - 1 in region and ev in region
            assert ans - ev >= d + 2
        # keys appear exactly twice (written, queried); values only at pairs and answers
        for k in keys.tolist():
            assert int((ids == k).sum()) == 2
        is_value = (ids >= V.value_start).nonzero().flatten().tolist()
        assert sorted(is_value) == sorted(ex.evidence_positions + ex.answer_positions)


def test_mqar_errors():
    with pytest.raises(DataError, match="n_pairs"):
        mqar_example(example_generator(0, 0), V, V.n_keys + 1, 10_000, 10)
    with pytest.raises(DataError, match="write_span"):
        mqar_example(example_generator(0, 0), V, 8, 10_000, 10, write_span=15)
    with pytest.raises(DataError, match="too short"):
        mqar_example(example_generator(0, 0), V, 8, mqar_length(8, 10) - 1, 10)


def test_dataset_is_deterministic_and_order_free():
    def make(gen):
        return passkey_example(gen, V, 64, (5, 40))

    a, b = TaskDataset(make, 6, seed=1), TaskDataset(make, 6, seed=1)
    forward = [a[i]["input_ids"] for i in range(6)]
    backward = [b[i]["input_ids"] for i in reversed(range(6))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(forward, backward, strict=True))
    other = TaskDataset(make, 6, seed=2)
    assert not all(torch.equal(a[i]["input_ids"], other[i]["input_ids"]) for i in range(6))
    assert not torch.equal(a[0]["input_ids"], a[1]["input_ids"])
    # pinned: the generator is a fixed function of (seed, index) on every machine
    first = a.example(0)
    assert first.info["distance"] == 33 and int(first.labels[-1]) == 139
    assert first.input_ids[:8].tolist() == [1, 54, 44, 30, 66, 66, 7, 4]
    batch = stack_examples(a.examples())
    assert batch["input_ids"].shape == batch["labels"].shape == (6, 64)
    with pytest.raises(IndexError):
        a.example(6)
    with pytest.raises(DataError, match="lengths"):
        stack_examples(
            [make(example_generator(0, 0)), passkey_example(example_generator(0, 1), V, 65, 5)]
        )


def test_answer_is_uniform_over_values():
    """Chance is exact only if no value is favoured: check the empirical spread (1600 draws)."""
    vals = [
        int(passkey_example(example_generator(9, i), V, 40, 10).labels[-1]) for i in range(1600)
    ]
    counts = torch.bincount(torch.tensor(vals) - V.value_start, minlength=V.n_values)
    assert counts.numel() == V.n_values and counts.min() >= 25 and counts.max() <= 80


@pytest.fixture(scope="module")
def zoo_tokenizer():
    return load_tokenizer("olmo2-stdlib")


def test_text_passkey_labels_the_number(zoo_tokenizer):
    ex = passkey_text_example(zoo_tokenizer, example_generator(0, 0), distance=200, prefix=30)
    number = ex.info["passkey"]
    assert len(number) == 5 and number.isdigit()
    scored = (ex.labels != IGNORE_INDEX).nonzero().flatten().tolist()
    assert scored == ex.answer_positions and scored[-1] == len(ex.input_ids) - 1
    assert zoo_tokenizer.decode(ex.input_ids[scored]).strip() == number
    text = zoo_tokenizer.decode(ex.input_ids)
    assert text.count(number) == 2 and text.index(number) < text.index("What is the pass key")
    far = passkey_text_example(zoo_tokenizer, example_generator(0, 0), distance=400, prefix=30)
    assert len(far.input_ids) == len(ex.input_ids) + 200


def _corpus():
    docs = [
        Document("code:a.py", "code", "def a():\n    return 1\n" * 60, True),
        Document("code:b.py", "code", "x = [i * 2 for i in range(10)]\n" * 80, True),
        Document("code:short.py", "code", "pass\n", True),
        Document("code:train.py", "code", "import os\nprint(os.sep)\n" * 60, False),
        Document("topic:t", "prose", "Some prose words here. " * 60, True),
    ]
    return Corpus(docs)


def test_long_documents_cut_exact_blocks_from_the_right_split(zoo_tokenizer):
    blocks = long_documents(zoo_tokenizer, 64, corpus=_corpus(), blocks_per_document=2)
    sources = sorted(b.source for b in blocks)
    assert sources == ["code:a.py#0", "code:a.py#1", "code:b.py#0", "code:b.py#1"]
    for b in blocks:
        assert b.input_ids.shape == (64,) and torch.equal(b.input_ids, b.labels)
        whole = zoo_tokenizer(
            next(d.text for d in _corpus().documents if d.source == b.source[:-2]),
            add_special_tokens=False,
        )["input_ids"]
        k = int(b.source[-1])
        assert b.input_ids.tolist() == whole[k * 64 : (k + 1) * 64]
    train = long_documents(zoo_tokenizer, 64, held_out=False, corpus=_corpus())
    assert [b.source for b in train] == ["code:train.py#0"]
    prose = long_documents(zoo_tokenizer, 32, kind="prose", corpus=_corpus())
    assert [b.source for b in prose] == ["topic:t#0"]
    one = long_documents(zoo_tokenizer, 64, corpus=_corpus(), max_documents=1, seed=5)
    assert len(one) == 1
    with pytest.raises(DataError, match="no held-out"):
        long_documents(zoo_tokenizer, 100_000, corpus=_corpus())
    with pytest.raises(DataError, match="kind"):
        long_documents(zoo_tokenizer, 64, kind="poetry", corpus=_corpus())
