"""Choice scoring on the answer alone (``loss_on="answer"``): both scorers = a float64 loop over the
answer tokens of the full turn (the end-of-turn marker left out, earlier positions unchanged)."""

import pytest
import torch
from eval_reference import token_nll64

from olmokit.data.formatting import IGNORE_INDEX, encode_record
from olmokit.data.masking import encode_answer, trim_after_target
from olmokit.data.tasks import MultipleChoiceExample
from olmokit.eval import choice_logprobs
from olmokit.zoo.presets import random_model

EXAMPLES = [
    MultipleChoiceExample(f"Question {i}: next after {w}?", ("alpha", "beta gamma", "delta"), i % 3)
    for i, w in enumerate(["one", "two three", "four"])
]


@pytest.mark.parametrize("share_prompt", [True, False], ids=["shared", "full"])
def test_answer_only_scores_match_float64_loop(share_prompt, zoo_tokenizer):
    model = random_model("olmo2", "tiny", seed=0)
    got = choice_logprobs(
        model, zoo_tokenizer, EXAMPLES, batch_size=4, share_prompt=share_prompt, loss_on="answer"
    )
    want = []
    for ex in EXAMPLES:
        row = []
        for c in range(len(ex.choices)):
            full = encode_record(ex.record(c), zoo_tokenizer)  # the whole turn, template included
            ans = encode_answer(ex.record(c), zoo_tokenizer)
            assert ans.input_ids == full.input_ids
            scored = [lab != IGNORE_INDEX for lab in ans.labels]
            assert sum(scored) < sum(lab != IGNORE_INDEX for lab in full.labels)
            row.append(-sum(token_nll64(model, full.input_ids, scored)))
        want.append(row)
    want = torch.tensor(want, dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want, rtol=0, atol=5e-5)
    turn = choice_logprobs(model, zoo_tokenizer, EXAMPLES, batch_size=4)
    assert not torch.allclose(
        torch.tensor(turn, dtype=torch.float64), want
    )  # it did leave some out


def test_trim_after_target_keeps_the_answer_span(zoo_tokenizer):
    ex = encode_answer(EXAMPLES[0].record(1), zoo_tokenizer)
    cut = trim_after_target(ex)
    assert cut.input_ids == ex.input_ids[: len(cut)] and cut.labels[-1] != IGNORE_INDEX
    assert zoo_tokenizer.decode(ex.input_ids[len(cut) :]) == "<|im_end|>\n"
