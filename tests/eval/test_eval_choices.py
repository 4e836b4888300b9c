"""Choice scoring: shared-prompt (KV cache) = full-sequence = a float64 loop; accuracy; exact match.

Moved from tests/jola/test_jola_evaluate.py (the scorers moved from olmokit.jola.evaluate to
olmokit.eval); the JoLA names are still importable from olmokit.jola, checked below.
"""

import pytest
import torch
from common import family_params
from eval_reference import greedy64, token_nll64

from olmokit.data.formatting import IGNORE_INDEX, encode_record
from olmokit.data.tasks import MultipleChoiceExample
from olmokit.eval import (
    choice_logprobs,
    choices,
    exact_match,
    mc_accuracy,
    prompt_text,
    stop_token_ids,
)
from olmokit.jola import attach_jola
from olmokit.zoo.presets import random_model

EXAMPLES = [
    MultipleChoiceExample(
        f"Question {i}: which word comes next after {w}?",
        ("alpha", "beta gamma", "delta", "epsilon zeta eta"),
        i % 4,
    )
    for i, w in enumerate(["one", "two three", "four five six seven", "eight"])
]

#: A summed log-probability over up to ~8 target tokens, float32 vs float64, batched and padded vs
#: alone: a few float32 ulps per token at magnitude ~10 (measured: at most 1.0e-5 in all); 5e-5
#: fails on any wrong token or shift (either moves a sum by more than 1e-2 here).
ATOL = 5e-5


def _reference(model, tokenizer, examples):
    out = []
    for ex in examples:
        row = []
        for c in range(len(ex.choices)):
            enc = encode_record(ex.record(c), tokenizer)
            scored = [lab != IGNORE_INDEX for lab in enc.labels]
            row.append(-sum(token_nll64(model, enc.input_ids, scored)))
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("case", family_params(trained=None))
@pytest.mark.parametrize("share_prompt", [True, False], ids=["shared", "full"])
def test_choice_logprobs_match_float64_loop(case, share_prompt, zoo_tokenizer):
    model = case.load()
    got = choice_logprobs(model, zoo_tokenizer, EXAMPLES, batch_size=6, share_prompt=share_prompt)
    want = _reference(model, zoo_tokenizer, EXAMPLES)
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want, rtol=0, atol=ATOL)


def test_uneven_choice_counts_in_one_batch(zoo_tokenizer, monkeypatch):
    """1 to 4 choices in one batch: each prompt's cache row is repeated its own number of times."""
    model = random_model("olmo3", "tiny", seed=0)
    mixed = [
        MultipleChoiceExample(e.prompt, e.choices[:n], 0) for e, n in zip(EXAMPLES, (2, 4, 3, 1))
    ]
    monkeypatch.setattr(
        choices, "_choice_logprobs_full", None
    )  # the shared path must not fall back
    got = choice_logprobs(model, zoo_tokenizer, mixed, batch_size=16)
    assert [len(s) for s in got] == [2, 4, 3, 1]
    want = _reference(model, zoo_tokenizer, mixed[1:2])
    torch.testing.assert_close(
        torch.tensor(got[1], dtype=torch.float64), want[0], rtol=0, atol=ATOL
    )
    for row, ex in zip(got, mixed):
        ref = _reference(model, zoo_tokenizer, [ex])[0]
        torch.testing.assert_close(torch.tensor(row, dtype=torch.float64), ref, rtol=0, atol=ATOL)


def test_shared_prompt_scoring_matches_full(model_type, zoo_tokenizer):
    model = random_model(model_type, "tiny", seed=0)
    attach_jola(model)
    full = choice_logprobs(model, zoo_tokenizer, EXAMPLES, batch_size=8, share_prompt=False)
    shared = choice_logprobs(model, zoo_tokenizer, EXAMPLES, batch_size=8)
    torch.testing.assert_close(torch.tensor(shared), torch.tensor(full), rtol=0, atol=1e-4)


def test_accuracy_and_exact_match_on_zoo(zoo_model, zoo_tokenizer):
    # the example's own answer is the most likely choice -> accuracy follows the answers
    scores = choice_logprobs(zoo_model, zoo_tokenizer, EXAMPLES)
    best = [max(range(4), key=s.__getitem__) for s in scores]
    relabelled = [MultipleChoiceExample(e.prompt, e.choices, b) for e, b in zip(EXAMPLES, best)]
    assert mc_accuracy(zoo_model, zoo_tokenizer, relabelled)["acc"] == 1.0
    wrong = [
        MultipleChoiceExample(e.prompt, e.choices, (b + 1) % 4) for e, b in zip(EXAMPLES, best)
    ]
    assert mc_accuracy(zoo_model, zoo_tokenizer, wrong) == {"acc": 0.0, "n": 4, "predictions": best}
    # exact match: the outputs are the no-cache greedy decode, and em counts the exact hits
    em = exact_match(zoo_model, zoo_tokenizer, EXAMPLES[:2], max_new_tokens=4)
    stop = stop_token_ids(zoo_tokenizer)
    want = []
    for ex in EXAMPLES[:2]:
        prompt = zoo_tokenizer(prompt_text(ex, zoo_tokenizer), add_special_tokens=False)[
            "input_ids"
        ]
        tokens, _, _ = greedy64(zoo_model, prompt, 4, stop)
        want.append(zoo_tokenizer.decode(tokens, skip_special_tokens=True).strip())
    assert em["outputs"] == want and em["n"] == 2
    # the generated text as the reference answer: every example matches
    echo = [MultipleChoiceExample(e.prompt, (o,), 0) for e, o in zip(EXAMPLES[:2], want)]
    assert exact_match(zoo_model, zoo_tokenizer, echo, max_new_tokens=4)["em"] == 1.0


@pytest.mark.parametrize("n", [1, 3])
def test_uneven_batches(n, zoo_tokenizer):
    model = random_model("olmo2", "tiny", seed=0)
    out = choice_logprobs(model, zoo_tokenizer, EXAMPLES[:n], batch_size=5)
    assert len(out) == n and all(len(s) == 4 for s in out)
    full = choice_logprobs(model, zoo_tokenizer, EXAMPLES[:n], batch_size=16, share_prompt=False)
    torch.testing.assert_close(torch.tensor(out), torch.tensor(full), rtol=0, atol=1e-4)


def test_scoring_restores_training_mode(zoo_tokenizer):
    model = random_model("olmo2", "tiny", seed=0).train()
    choice_logprobs(model, zoo_tokenizer, EXAMPLES[:1])
    assert model.training


def test_jola_reexports_the_scorers():
    import olmokit.eval as ev
    import olmokit.jola as jola

    for name in ("choice_logprobs", "evaluate_examples", "exact_match", "mc_accuracy"):
        assert getattr(jola, name) is getattr(ev, name)
