from __future__ import annotations

import math

import pytest
import torch
from eval_reference import logits_of, logprob64, max_prob64

from olmokit.data.longctx import TaskDataset, TaskVocab, mqar_example, mqar_length
from olmokit.eval.longctx import (
    answer_spans,
    argmax_correct,
    mean_stderr,
    nll_beyond,
    paired_stderr,
    position_loss,
    span_accuracy,
    span_correct,
)
from olmokit.zoo.presets import random_model

V = TaskVocab(n_filler=8, n_keys=8, n_values=6)
N = -100


def test_answer_spans_are_maximal_runs():
    labels = torch.tensor([[5, N, 7, 8, N, 9], [N, N, N, N, N, 4], [N] * 6])
    # position 0 never counts (nothing predicts it)
    assert answer_spans(labels) == [[(2, 4), (5, 6)], [(5, 6)], []]


def _reference_span_correct(logits, labels):
    out = []
    for b in range(labels.shape[0]):
        row, spans, cur = labels[b].tolist(), [], []
        for t in range(1, len(row)):
            if row[t] != N:
                cur.append(max_prob64(logits[b, t - 1])[0] == row[t])
            elif cur:
                spans.append(all(cur))
                cur = []
        if cur:
            spans.append(all(cur))
        out.append(spans)
    return out


def test_span_correct_matches_a_per_position_reference():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 12, 7, generator=gen)
    labels = torch.randint(0, 7, (4, 12), generator=gen)
    labels[torch.rand(4, 12, generator=gen) < 0.5] = N
    # make some answers right on purpose so both outcomes occur
    pred = logits.argmax(-1)
    labels[0, 3:6] = pred[0, 2:5]
    labels[1, 7:9] = pred[1, 6:8]
    labels[1, 6] = labels[1, 9] = N
    got, ref = span_correct(logits, labels), _reference_span_correct(logits, labels)
    assert got == ref
    flat = [c for row in got for c in row]
    assert any(flat) and not all(flat)
    hits = argmax_correct(logits, labels)
    assert hits.shape == (4, 11) and not hits[labels[:, 1:] == N].any()


def test_nll_beyond_matches_float64_reference():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 10, 5, generator=gen)
    labels = torch.randint(0, 5, (3, 10), generator=gen)
    labels[1, 4] = N
    labels[2, 6:] = N  # nothing scored at positions >= 6
    got = nll_beyond(logits, labels, start=6)
    for b in range(3):
        vals = [
            -logprob64(logits[b, t - 1], int(labels[b, t]))
            for t in range(6, 10)
            if labels[b, t] != N
        ]
        if vals:
            assert float(got[b]) == pytest.approx(sum(vals) / len(vals), abs=1e-5)
        else:
            assert math.isnan(float(got[b]))
    every = nll_beyond(logits, labels, start=0)
    vals = [-logprob64(logits[1, t - 1], int(labels[1, t])) for t in range(1, 10) if t != 4]
    assert float(every[1]) == pytest.approx(sum(vals) / len(vals), abs=1e-5)


def test_mean_and_stderr_pinned():
    assert mean_stderr([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, math.sqrt(5 / 3) / 2))
    assert mean_stderr([7.0]) == (7.0, 0.0)
    # paired: a constant shift has no spread at all, however spread the values are
    assert paired_stderr([1.0, 5.0, 9.0], [0.5, 4.5, 8.5]) == pytest.approx(0.0, abs=1e-12)
    assert paired_stderr([1.0, 2.0, 3.0, 4.0], [0, 0, 0, 0]) == pytest.approx(math.sqrt(5 / 3) / 2)
    with pytest.raises(ValueError):
        mean_stderr([])
    with pytest.raises(ValueError):
        paired_stderr([1.0], [1.0, 2.0])


@pytest.fixture(scope="module")
def model():
    return random_model("olmo3", vocab_size=V.size, seed=3)


def _items():
    length = mqar_length(3, (4, 12), write_span=8)
    ds = TaskDataset(lambda g: mqar_example(g, V, 3, length, (4, 12), write_span=8), 5, seed=4)
    return [ds[i] for i in range(5)]


def test_span_accuracy_runs_the_model_and_matches_reference(model):
    items = _items()
    model.train()
    res = span_accuracy(lambda ids: model(input_ids=ids).logits, items, batch_size=2, module=model)
    assert model.training  # restored
    ref, idx = [], []
    for i, it in enumerate(items):
        logits = logits_of(model.eval(), it["input_ids"].tolist())
        for s, e in answer_spans(it["labels"][None])[0]:
            ref.append(
                all(max_prob64(logits[t - 1])[0] == int(it["labels"][t]) for t in range(s, e))
            )
            idx.append(i)
    assert res.correct == ref and res.example_index == idx and len(ref) == 15
    assert res.accuracy == pytest.approx(sum(ref) / 15)
    p = res.accuracy
    assert res.stderr == pytest.approx(math.sqrt(p * (1 - p) / 15))


def test_position_loss_matches_reference(model):
    gen = torch.Generator().manual_seed(5)
    items = []
    for _ in range(3):
        ids = torch.randint(0, V.size, (24,), generator=gen)
        items.append({"input_ids": ids, "labels": ids.clone()})
    res = position_loss(lambda ids: model(input_ids=ids).logits, items, start=8, batch_size=2)
    curve = torch.zeros(23, dtype=torch.float64)
    for i, it in enumerate(items):
        ids = it["input_ids"].tolist()
        logits = logits_of(model.eval(), ids)
        nll = [-logprob64(logits[t], ids[t + 1]) for t in range(23)]
        assert float(res.per_example[i]) == pytest.approx(sum(nll[7:]) / 16, abs=1e-5)
        curve += torch.tensor(nll, dtype=torch.float64) / 3
    assert torch.allclose(res.per_position, curve, atol=1e-5)
    assert (res.mean, res.stderr) == pytest.approx(mean_stderr(res.per_example))
    with pytest.raises(ValueError, match="no items"):
        position_loss(lambda ids: ids, [], start=1)
