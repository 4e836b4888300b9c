"""greedy_generate (batched, left-padded, KV cache) = decoding each prompt alone without a cache."""

from __future__ import annotations

import pytest
import torch
from common import family_params, random_tokens
from eval_reference import BigramLM, greedy64, probs_table

from olmokit.errors import DataError
from olmokit.eval import greedy_generate

#: p_max per step, float32 softmax after batched cached steps vs float64 softmax of a fresh full
#: forward: a few float32 ulps apart (measured: at most 2.5e-6 relative on the trained models).
#: Relative, not absolute: a random model's p_max is ~4e-4, where any absolute bound loose enough
#: for a trained model's p ~ 1 would pass anything.
RTOL = 1e-5


@pytest.mark.parametrize("case", family_params(trained=None))
def test_cached_batch_equals_no_cache_loop(case):
    """Prompts of different lengths (left padding) and 12 steps: past OLMo-3 tiny's window of 8."""
    model = case.load()
    prompts = [
        t[:n].tolist() for t, n in zip(random_tokens(3, 9, model.config.vocab_size), (9, 4, 1))
    ]
    got = greedy_generate(model, prompts, max_new_tokens=12)
    for i, prompt in enumerate(prompts):
        tokens, probs, stopped = greedy64(model, prompt, 12)
        assert got.tokens[i] == tokens, f"prompt {i}"
        torch.testing.assert_close(
            torch.tensor(got.max_probs[i], dtype=torch.float64),
            torch.tensor(probs, dtype=torch.float64),
            rtol=RTOL,
            atol=0,
        )
        assert got.stopped[i] is stopped is False


def test_stops_per_row_on_stop_ids_trained():
    """A trained model with its own first generated token as a stop id: that row stops at once, the
    others run on exactly as the no-cache loop with the same stop set."""
    from olmokit.loading import load_model

    model = load_model("olmo2-stdlib")
    prompts = [t.tolist() for t in random_tokens(3, 6, model.config.vocab_size)]
    free = greedy_generate(model, prompts, 6)
    stop = [free.tokens[0][0]]
    got = greedy_generate(model, prompts, 6, stop_ids=stop)
    assert got.tokens[0] == [] and got.stopped[0] and len(got.max_probs[0]) == 1
    for i, prompt in enumerate(prompts):
        tokens, probs, stopped = greedy64(model, prompt, 6, stop)
        assert (got.tokens[i], got.stopped[i]) == (tokens, stopped)
        torch.testing.assert_close(
            torch.tensor(got.max_probs[i], dtype=torch.float64),
            torch.tensor(probs, dtype=torch.float64),
            rtol=RTOL,
            atol=0,
        )


def test_known_chain_on_a_bigram_model():
    # 0 -> 1 (p .7), 1 -> 2 (p .6), 2 -> 1 (p .9), 3 (eos) -> 0
    table = probs_table(
        [[0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.6, 0.2], [0.05, 0.9, 0.0, 0.05], [1.0, 0.0, 0.0, 0.0]]
    )
    model = BigramLM(table)
    got = greedy_generate(model, [[0], [2, 2, 1]], max_new_tokens=4, stop_ids=[3], pad_token_id=3)
    assert got.tokens == [[1, 2, 1, 2], [2, 1, 2, 1]]
    torch.testing.assert_close(
        torch.tensor(got.max_probs), torch.tensor([[0.7, 0.6, 0.9, 0.6], [0.6, 0.9, 0.6, 0.9]])
    )
    assert got.stopped == [False, False]


def test_empty_prompt_and_zero_steps(tiny_model):
    with pytest.raises(DataError, match="prompt 1 is empty"):
        greedy_generate(tiny_model, [[5], []], 3)
    assert greedy_generate(tiny_model, [[5, 6]], 0).tokens == [[]]


def test_restores_training_mode(tiny_model):
    tiny_model.train()
    greedy_generate(tiny_model, [[5, 6]], 2)
    assert tiny_model.training


def test_sample_text_at_temperature_zero_is_the_greedy_continuation():
    """``olmokit zoo generate --temperature 0`` decodes exactly what the scorers' greedy loop does."""
    from olmokit.eval import sample_text
    from olmokit.loading import load_model, load_tokenizer

    model, tok = load_model("olmo2-stdlib"), load_tokenizer("olmo2-stdlib")
    prompt = "def read_file(path):\n    "
    text = sample_text(model, tok, prompt, max_new_tokens=8, temperature=0.0)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    greedy = greedy_generate(model, [ids], max_new_tokens=8, stop_ids=[tok.eos_token_id])
    assert text == tok.decode(greedy.tokens[0], skip_special_tokens=True)
    assert text  # the trained model continues code, it does not stop at once
