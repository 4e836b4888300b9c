"""Per-token and mean NLL: masking pinned by hand, every family vs a float64 loop, HF parity."""

from __future__ import annotations

import math

import pytest
import torch
from common import family_params, random_tokens
from eval_reference import logprob64, token_nll64

from olmokit.eval import (
    IGNORE_INDEX,
    label_mask,
    log_probs,
    mean_nll,
    mean_sequence_nll,
    sequence_nll,
    token_logprobs,
    token_nll,
)

#: float32 log-softmax vs float64: the log-sum-exp of ~4k logits of size ~10 carries a few float32
#: ulps (~1e-6 at magnitude 8); 1e-5 leaves room for that and fails on any real indexing mistake
#: (a wrong token or an off-by-one shift changes the NLL by >1e-2 on these models).
ATOL = 1e-5


def test_masking_by_hand():
    # every position predicts p = (1/2, 1/4, 1/4): NLL log 2 for token 0, log 4 for tokens 1 and 2
    logits = torch.log(torch.tensor([0.5, 0.25, 0.25])).expand(1, 4, 3)
    labels = torch.tensor(
        [[0, 1, IGNORE_INDEX, 0]]
    )  # position 0 is never a target (nothing predicts it)
    nll = token_nll(logits, labels)
    torch.testing.assert_close(nll, torch.tensor([[math.log(4), 0.0, math.log(2)]]))
    assert label_mask(labels).tolist() == [[True, False, True]]
    # mean over the two counted tokens only, not over 3 positions
    torch.testing.assert_close(
        mean_nll(logits, labels), torch.tensor((math.log(4) + math.log(2)) / 2)
    )
    with pytest.raises(ValueError, match="IGNORE_INDEX"):
        mean_nll(logits, torch.full((1, 4), IGNORE_INDEX))


def test_masked_positions_cannot_poison_the_sum():
    """A masked slot whose (clamped) target has probability 0 gives 0, not -inf * 0 = NaN."""
    logits = torch.tensor([[[float("-inf"), 0.0], [float("-inf"), 0.0]]])
    labels = torch.tensor([[1, IGNORE_INDEX]])
    assert token_logprobs(logits, labels).tolist() == [[0.0, 0.0]]


def test_token_logprobs_aligned_and_dtype():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(3.0), 0.0]]], dtype=torch.bfloat16)
    lp = token_logprobs(logits, torch.tensor([[1, IGNORE_INDEX]]))
    assert lp.dtype == torch.float32 and lp[0, 1] == 0.0
    assert abs(float(lp[0, 0]) - math.log(0.75)) < 1e-2  # bf16 input: log 3 rounds to 1.1016
    assert log_probs(torch.zeros(2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("case", family_params(trained=None))
def test_token_nll_matches_float64_loop(case):
    model = case.load()
    ids = random_tokens(2, 12, model.config.vocab_size)
    labels = ids.clone()
    labels[0, :5] = IGNORE_INDEX  # a prompt that does not count
    labels[1, -3:] = IGNORE_INDEX
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    got = token_nll(logits, labels)
    want = torch.tensor(
        [
            [
                -logprob64(logits[b, t], int(labels[b, t + 1]))
                if labels[b, t + 1] != IGNORE_INDEX
                else 0.0
                for t in range(11)
            ]
            for b in range(2)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got.double(), want, rtol=0, atol=ATOL)
    count = int((labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(
        float(mean_nll(logits, labels)), float(want.sum()) / count, rtol=0, atol=ATOL
    )


@pytest.mark.parametrize("case", family_params(trained=None))
def test_sequence_nll_padded_batch_matches_unpadded(case):
    """Right-padded batch vs each sequence alone: padding must not change a real token's NLL."""
    model = case.load()
    lengths = [11, 6, 3]
    ids = random_tokens(3, 11, model.config.vocab_size)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    ids = ids.masked_fill(mask == 0, 0)
    got = sequence_nll(model, ids, mask)
    assert got.shape == (3, 10) and got.dtype == torch.float32
    for b, n in enumerate(lengths):
        want = torch.tensor(token_nll64(model, ids[b, :n].tolist()), dtype=torch.float64)
        torch.testing.assert_close(got[b, : n - 1].double(), want, rtol=0, atol=ATOL)
        assert (got[b, n - 1 :] == 0).all()  # padding does not count
    total = sum(sum(token_nll64(model, ids[b, :n].tolist())) for b, n in enumerate(lengths))
    mean = mean_sequence_nll(model, ids, mask)
    assert abs(mean - total / sum(n - 1 for n in lengths)) < ATOL


def test_mean_nll_equals_hf_loss(tiny_model):
    """HF's own causal-LM loss (``labels=``) is the same token-weighted mean over counted labels."""
    ids = random_tokens(2, 10, tiny_model.config.vocab_size)
    labels = ids.masked_fill(torch.arange(10) < 4, IGNORE_INDEX)
    out = tiny_model(input_ids=ids, labels=labels)
    torch.testing.assert_close(mean_nll(out.logits, labels), out.loss, rtol=0, atol=ATOL)


def test_sequence_nll_restores_training_mode(tiny_model):
    tiny_model.train()
    sequence_nll(tiny_model, random_tokens(1, 5, 100))
    assert tiny_model.training
