"""The OLM merge metrics: hand-computed values on a bigram model, a float64 per-step loop on every
family, and the Unicode script table against the Unicode character names."""

from __future__ import annotations

import unicodedata

import pytest
import torch
from common import family_params, random_tokens
from eval_reference import (
    BigramLM,
    WordTokenizer,
    greedy64,
    logits_of,
    logprob64,
    max_prob64,
    probs_table,
    token_nll64,
)

from olmokit.errors import DataError
from olmokit.eval import (
    DIVERSITY_SCALE,
    ContextResponse,
    bigram_loss,
    diversity,
    diversity_score,
    exact_match_score,
    greedy_generate,
    merge_metric,
    response_nll,
    script_of,
    scripts_in,
    uses_script,
)

#: Scores are means of terms 1 - p or 1 + p (or NLLs), float32 vs float64 of the same logits: a few
#: float32 ulps per term. 1e-5 fails on any wrong position, token or branch (each moves a term by
#: at least the smallest p here, ~1e-4 on a random 4k-vocab model).
ATOL = 1e-5

# Next-token distributions of a 5-token bigram model; token 3 is EOS (and padding), token 4 is "日".
TABLE = probs_table(
    [
        [0.1, 0.7, 0.1, 0.1, 0.0],  # 0 -> 1
        [0.1, 0.1, 0.6, 0.2, 0.0],  # 1 -> 2
        [0.05, 0.3, 0.0, 0.6, 0.05],  # 2 -> 3 (EOS)
        [0.9, 0.1, 0.0, 0.0, 0.0],  # 3 -> 0
        [0.0, 0.0, 0.0, 0.1, 0.9],  # 4 -> 4
    ]
)
WORDS = WordTokenizer(["a", "b", "c", "</s>", "日"], eos_token_id=3, pad_token_id=3)


def test_bigram_loss_by_hand():
    model = BigramLM(TABLE)
    # context [0], response [1, 2, 0]: s = (1 - .7, 1 - .6, 1) (2 -> 0 has p .05 < max .6)
    #   score = (s0 + s1 + s1 + s2) / (R - 1) = (.3 + .4 + .4 + 1) / 2
    # context [3, 0], response [2, 2]: 0 -> 2 is .1 < .7, 2 -> 2 is 0 < .6: (1 + 1) / 1
    got = bigram_loss(model, [([0], [1, 2, 0]), ContextResponse([3, 0], [2, 2])], pad_token_id=3)
    torch.testing.assert_close(torch.tensor(got), torch.tensor([(0.3 + 0.4 + 0.4 + 1.0) / 2, 2.0]))
    with pytest.raises(DataError, match="sample 0 has a response of 1 token"):
        bigram_loss(model, [([0], [1])])
    with pytest.raises(DataError, match="sample 1 has an empty context"):
        bigram_loss(model, [([0], [1, 2]), ([], [1, 2])])


def test_exact_match_score_by_hand():
    model = BigramLM(TABLE)
    # context [0], want [1, 2, 2]: greedy 1 (.7, right), 2 (.6, right), 3 (.6, wrong)
    #   -> (.3 + .4 + 1.6) / 3
    # context [3], want [1]: greedy 0 (.9, wrong): 1.9
    got = exact_match_score(model, [([0], [1, 2, 2]), ([3], [1])], pad_token_id=3)
    torch.testing.assert_close(torch.tensor(got), torch.tensor([(0.3 + 0.4 + 1.6) / 3, 1.9]))


def test_diversity_by_hand():
    model = BigramLM(TABLE)
    # [0] -> "b c" then EOS: 2 unique words; [4] -> "日 日 日": penalised, or 1 unique word if not
    got = diversity(model, WORDS, [[0], [4]], max_new_tokens=3, scale=100.0, penalty=1000.0)
    assert got == [50.0, 1000.0]
    got = diversity(
        model, WORDS, [[0], [4]], max_new_tokens=3, scale=100.0, penalized_scripts=("hangul",)
    )
    assert got == [50.0, 100.0]
    assert diversity(model, WORDS, [[4]], max_new_tokens=3) == [
        DIVERSITY_SCALE
    ]  # the original's 4096
    with pytest.raises(ValueError, match="unknown script"):
        diversity(model, WORDS, [[0]], penalized_scripts=("klingon",))


def test_diversity_score():
    assert diversity_score("the cat saw the dog") == DIVERSITY_SCALE / 4
    assert diversity_score("") == DIVERSITY_SCALE  # no words counts as one
    assert diversity_score("the cat 猫") == DIVERSITY_SCALE
    assert diversity_score("the cat 猫", penalized_scripts=("cjk",), penalty=7.0) == 7.0
    assert diversity_score("ねこ", penalized_scripts=("cjk",)) == DIVERSITY_SCALE  # 1 word, not CJK


@pytest.mark.parametrize(
    "text, scripts",
    [
        ("Hello, world! äöü ß Привет Γειά", set()),
        ("日本語", {"cjk"}),
        ("ひらがな", {"hiragana"}),
        ("カタカナー", {"katakana"}),
        ("ｶﾀｶﾅ", {"katakana"}),  # halfwidth
        ("한국어 ㄱ", {"hangul"}),
        ("漢字とカタカナ", {"cjk", "hiragana", "katakana"}),
        ("𠀀 (extension B)", {"cjk"}),
        ("。、「」", set()),  # CJK punctuation is not a script letter
    ],
)
def test_script_classification_samples(text, scripts):
    assert scripts_in(text) == scripts
    assert uses_script(text, scripts or ["cjk"]) == bool(scripts)


def _script_by_name(name: str) -> str | None:
    if name.startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH")):
        return "cjk"
    if name.startswith(("HIRAGANA LETTER", "HENTAIGANA LETTER")):
        return "hiragana"
    if name.startswith(("KATAKANA LETTER", "HALFWIDTH KATAKANA LETTER")):
        return "katakana"
    hangul = ("SYLLABLE", "CHOSEONG", "JUNGSEONG", "JONGSEONG", "LETTER")
    if name.startswith(tuple(f"HANGUL {h}" for h in hangul) + ("HALFWIDTH HANGUL LETTER",)):
        return "hangul"
    return None


def test_script_table_agrees_with_unicode_names():
    """Every letter Unicode names as CJK/kana/Hangul is classified so; Latin, Greek, Cyrillic,
    Arabic, Hebrew, Devanagari, Thai letters and digits are not."""
    other = ("LATIN", "CYRILLIC", "GREEK", "DIGIT", "ARABIC", "HEBREW", "DEVANAGARI", "THAI")
    checked = 0
    for code in range(0x110000):
        name = unicodedata.name(chr(code), "")
        want = _script_by_name(name)
        if want is None and not name.startswith(other):
            continue
        assert script_of(chr(code)) == want, f"U+{code:04X} {name}"
        checked += 1
    assert checked > 100_000  # ~98k CJK ideographs + 11k Hangul syllables + the rest


# ----------------------------------------------------------------- against float64 per-step loops
def _samples(model, tokenizer):
    """Real text for trained models (their predictions are often right) plus a response that starts
    with the model's own greedy tokens, so both the right and the wrong branch are exercised."""
    ctx = [
        tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in ("def add(a, b):\n    return", "import os\nimport")
    ]
    own = greedy_generate(model, ctx[:1], 3).tokens[0]
    rnd = random_tokens(2, 9, model.config.vocab_size)
    return [
        ContextResponse(ctx[0], own + tokenizer(" x\n", add_special_tokens=False)["input_ids"]),
        ContextResponse(ctx[1], tokenizer(" sys\n", add_special_tokens=False)["input_ids"]),
        ContextResponse(rnd[0, :4].tolist(), rnd[0, 4:].tolist()),
        ContextResponse(rnd[1, :1].tolist(), rnd[1, 1:3].tolist()),
        ContextResponse(ctx[0], own),  # every step right: every term is 1 - p
    ]


def _bigram64(model, s: ContextResponse) -> float:
    logits = logits_of(model, s.context_ids + s.response_ids)
    c, r = len(s.context_ids), len(s.response_ids)
    terms = []
    for k in range(r):
        row = logits[c - 1 + k]
        label = logprob64(row, s.response_ids[k])
        best, p_max = max_prob64(row)
        terms.append(1.0 if label < logprob64(row, best) else 1.0 - p_max)
    return (sum(terms[:-1]) + sum(terms[1:])) / (r - 1)


def _exact64(model, s: ContextResponse) -> float:
    tokens, probs, _ = greedy64(model, s.context_ids, len(s.response_ids))
    e = [1.0 - p if t == w else 1.0 + p for t, p, w in zip(tokens, probs, s.response_ids)]
    return sum(e) / len(e)


@pytest.mark.parametrize("case", family_params(trained=None))
def test_metrics_match_float64_loops(case, zoo_tokenizer):
    model = case.load()
    samples = _samples(model, zoo_tokenizer)
    pad = zoo_tokenizer.pad_token_id
    f64 = torch.float64
    want = torch.tensor([_bigram64(model, s) for s in samples], dtype=f64)
    got = torch.tensor(bigram_loss(model, samples, batch_size=3, pad_token_id=pad), dtype=f64)
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    want = torch.tensor([_exact64(model, s) for s in samples], dtype=f64)
    got = torch.tensor(exact_match_score(model, samples, batch_size=3, pad_token_id=pad), dtype=f64)
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    assert want[-1] < 1.0 and all(w > 1.0 for w in want[2:4])  # right steps; random: wrong ones
    want = []
    for s in samples:
        scored = [False] * len(s.context_ids) + [True] * len(s.response_ids)
        want.append(
            sum(token_nll64(model, s.context_ids + s.response_ids, scored)) / len(s.response_ids)
        )
    got = response_nll(model, samples, batch_size=3, pad_token_id=pad)
    torch.testing.assert_close(
        torch.tensor(got, dtype=f64), torch.tensor(want, dtype=f64), rtol=0, atol=ATOL
    )


@pytest.mark.parametrize("case", family_params(trained=None))
def test_diversity_matches_no_cache_loop(case, zoo_tokenizer):
    model = case.load()
    contexts = [s.context_ids for s in _samples(model, zoo_tokenizer)]
    stop = [zoo_tokenizer.eos_token_id, zoo_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    want = []
    for c in contexts:
        tokens, _, _ = greedy64(model, c, 10, stop)
        words = zoo_tokenizer.decode(tokens, skip_special_tokens=True).split()
        want.append(DIVERSITY_SCALE / max(len(set(words)), 1))
    assert diversity(model, zoo_tokenizer, contexts, max_new_tokens=10, batch_size=3) == want


def test_merge_metric_dispatches_by_mode():
    model = BigramLM(TABLE)
    samples = [([0], [1, 2, 2]), ([3], [1, 0])]
    assert merge_metric("bigram_loss", model, WORDS, samples) == bigram_loss(model, samples, 8, 3)
    assert merge_metric("exact_match", model, WORDS, samples) == exact_match_score(
        model, samples, 8, 3
    )
    assert merge_metric("nll", model, WORDS, samples) == response_nll(model, samples, 8, 3)
    got = merge_metric("diversity", model, WORDS, samples, max_new_tokens=3, scale=100.0)
    assert got == [50.0, 100.0 / 3]  # "b c" then EOS; "a b c" (3 -> 0 -> 1 -> 2)
    with pytest.raises(ValueError, match="unknown merge metric 'bleu'; valid: bigram_loss, exact"):
        merge_metric("bleu", model, WORDS, samples)
