"""Slow, obviously-correct references for the eval tests (imported by name: pytest puts tests/eval
on sys.path).

Each runs one unpadded sequence at a time, without a KV cache, and turns logits into probabilities
in float64, one position at a time, with the textbook formula ``x[t] - (m + log sum exp(x - m))``.
The scorers under test batch, pad, cache and use float32; agreement with these pins all of that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import SimpleNamespace

import torch


def logprob64(row: torch.Tensor, target: int) -> float:
    """``log softmax(row)[target]`` in float64 (``row``: one position's logits ``[vocab]``)."""
    x = row.double()
    m = x.max()
    return float(x[target] - (m + torch.log(torch.exp(x - m).sum())))


def max_prob64(row: torch.Tensor) -> tuple[int, float]:
    """``(argmax, max softmax probability)`` in float64; ties go to the lowest id (torch.argmax)."""
    x = row.double()
    best = int(torch.argmax(x))
    return best, math.exp(logprob64(row, best))


@torch.no_grad()
def logits_of(model: torch.nn.Module, ids: Sequence[int]) -> torch.Tensor:
    """``[len(ids), vocab]`` logits of one unpadded sequence, no cache."""
    return model(input_ids=torch.tensor([list(ids)]), use_cache=False).logits[0]


def token_nll64(
    model: torch.nn.Module, ids: Sequence[int], scored: Sequence[bool] | None = None
) -> list[float]:
    """NLL of ``ids[t + 1]`` given ``ids[: t + 1]`` per t; 0.0 where ``scored[t + 1]`` is False."""
    logits = logits_of(model, ids)
    out = []
    for t in range(len(ids) - 1):
        keep = scored is None or scored[t + 1]
        out.append(-logprob64(logits[t], ids[t + 1]) if keep else 0.0)
    return out


@torch.no_grad()
def greedy64(
    model: torch.nn.Module, prompt: Sequence[int], steps: int, stop: Sequence[int] = ()
) -> tuple[list[int], list[float], bool]:
    """Arg-max decoding by re-running the whole sequence each step (the original olm.py's way).

    Returns (tokens without the stop token, max probability per step, stopped).
    """
    seq, tokens, probs = list(prompt), [], []
    for _ in range(steps):
        best, p = max_prob64(logits_of(model, seq)[-1])
        probs.append(p)
        if best in stop:
            return tokens, probs, True
        tokens.append(best)
        seq.append(best)
    return tokens, probs, False


class BigramLM(torch.nn.Module):
    """A hand-made causal LM: next-token logits depend only on the current token (``table[id]``).

    Its outputs are known in closed form, so metric values can be written down by hand. It accepts
    the HF keyword arguments the scorers pass (mask, positions, cache, ``logits_to_keep``); the
    cache is unnecessary (the last token is all it needs), so it hands back a placeholder.
    """

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table.float(), requires_grad=False)

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        cache=None,
        use_cache=None,
        logits_to_keep=0,
        **kwargs,
    ):
        logits = self.table[input_ids]
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, cache=object())


def probs_table(rows: Sequence[Sequence[float]]) -> torch.Tensor:
    """Logits whose softmax is exactly ``rows`` (each row a distribution; zeros allowed)."""
    p = torch.tensor(rows, dtype=torch.float64)
    return torch.log(p.clamp_min(1e-30))


class WordTokenizer:
    """A tokenizer stand-in for decoding: id ``i`` is the word ``words[i]``; ids in ``special`` are
    dropped with ``skip_special_tokens`` (like EOS)."""

    def __init__(self, words: Sequence[str], eos_token_id: int, pad_token_id: int = 0) -> None:
        self.words, self.eos_token_id, self.pad_token_id = list(words), eos_token_id, pad_token_id

    def get_vocab(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        keep = [
            i
            for i in ids
            if not (skip_special_tokens and i in (self.eos_token_id, self.pad_token_id))
        ]
        return " ".join(self.words[i] for i in keep)
