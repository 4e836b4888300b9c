"""Evaluation: shared-prompt choice scoring equals full-sequence scoring; accuracy and exact match."""

import pytest
import torch

from olmokit.data.tasks import MultipleChoiceExample
from olmokit.jola import attach_jola, choice_logprobs, exact_match, mc_accuracy
from olmokit.zoo.presets import random_model

EXAMPLES = [
    MultipleChoiceExample(f"Question {i}: which word comes next after {w}?", ("alpha", "beta gamma", "delta", "epsilon zeta eta"), i % 4)
    for i, w in enumerate(["one", "two three", "four five six seven", "eight"])
]


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
    em = exact_match(zoo_model, zoo_tokenizer, EXAMPLES[:2], max_new_tokens=4)
    assert em["n"] == 2 and len(em["outputs"]) == 2 and 0.0 <= em["em"] <= 1.0


@pytest.mark.parametrize("n", [1, 3])
def test_uneven_batches(n, zoo_tokenizer):
    model = random_model("olmo2", "tiny", seed=0)
    out = choice_logprobs(model, zoo_tokenizer, EXAMPLES[:n], batch_size=5)
    assert len(out) == n and all(len(s) == 4 for s in out)
