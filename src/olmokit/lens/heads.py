"""Head-level analyses: zero/mean ablation of attention heads and the induction-head score.

Heads are *query* heads, ablated at ``hook_z`` (the head's output before ``o_proj``). Under GQA several
query heads share one key/value head; ablating ``z`` removes one query head's output without touching
its siblings, which ablating a key or value head would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..eval.nll import token_nll
from .hooked import HookedOlmo

__all__ = [
    "ablate_heads",
    "head_ablation_scan",
    "InductionResult",
    "induction_score",
    "previous_token_score",
    "repeated_tokens",
]


def _mean_z(
    model: HookedOlmo, tokens: torch.Tensor, layers: Iterable[int]
) -> dict[int, torch.Tensor]:
    names = [f"blocks.{i}.attn.hook_z" for i in set(layers)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    return {int(n.split(".")[1]): cache[n].mean(dim=(0, 1)) for n in names}  # [n_heads, d_head]


@torch.no_grad()
def ablate_heads(
    model: HookedOlmo,
    tokens: torch.Tensor,
    heads: Iterable[tuple[int, int]],
    mode: str = "zero",
    mean_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits with the given ``(layer, head)`` outputs replaced by zero or by their mean.

    ``mode="mean"`` uses each head's output averaged over batch and positions of ``mean_tokens``
    (default: ``tokens``), which keeps the downstream input on-distribution better than zeros.
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
    tokens = model._as_tokens(tokens)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer % model.adapter.num_layers, []).append(head)
    means = (
        _mean_z(model, tokens if mean_tokens is None else mean_tokens, by_layer)
        if mode == "mean"
        else {}
    )

    def make(layer: int, hs: list[int]) -> Callable:
        def hook(z: torch.Tensor, hook) -> torch.Tensor:
            z = z.clone()
            for h in hs:
                z[:, :, h] = means[layer][h] if mode == "mean" else 0.0
            return z

        return hook

    hooks = [(f"blocks.{layer}.attn.hook_z", make(layer, hs)) for layer, hs in by_layer.items()]
    return model.run_with_hooks(tokens, fwd_hooks=hooks)


@torch.no_grad()
def head_ablation_scan(
    model: HookedOlmo,
    tokens: torch.Tensor,
    metric: Callable[[torch.Tensor], torch.Tensor],
    mode: str = "zero",
) -> torch.Tensor:
    """``[n_layers, n_heads]``: metric(ablated) - metric(clean) for each head ablated alone."""
    tokens = model._as_tokens(tokens)
    base = float(metric(model(tokens)))
    a = model.adapter
    out = torch.zeros(a.num_layers, a.num_heads)
    for layer in range(a.num_layers):
        for head in range(a.num_heads):
            out[layer, head] = (
                float(metric(ablate_heads(model, tokens, [(layer, head)], mode))) - base
            )
    return out


def repeated_tokens(
    vocab_size: int,
    seq_len: int,
    batch: int = 4,
    seed: int = 0,
    low: int = 0,
    prefix: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[batch, len(prefix) + 2*seq_len]``: random tokens from ``[low, vocab)`` repeated once."""
    gen = torch.Generator().manual_seed(seed)
    half = torch.randint(low, vocab_size, (batch, seq_len), generator=gen)
    parts = [half, half]
    if prefix is not None:
        parts.insert(0, prefix.reshape(1, -1).expand(batch, -1))
    return torch.cat(parts, dim=1)


@dataclass
class InductionResult:
    scores: torch.Tensor  #: [n_layers, n_heads] mean attention to the token after the earlier copy
    tokens: torch.Tensor  #: the repeated sequences used
    seq_len: int  #: length of the repeated half
    #: [n_layers, n_heads] mean attention to the previous token
    previous_token: torch.Tensor | None = None
    #: mean NLL of the first copy minus the second (>0: in-context copying)
    copy_gain: float | None = None

    def top(self, n: int = 5) -> list[tuple[int, int, float]]:
        flat = self.scores.flatten()
        order = flat.argsort(descending=True)[:n]
        n_heads = self.scores.shape[1]
        return [(int(i) // n_heads, int(i) % n_heads, float(flat[i])) for i in order]


@torch.no_grad()
def induction_score(
    model: HookedOlmo, seq_len: int = 32, batch: int = 8, seed: int = 0, low: int | None = None
) -> InductionResult:
    """Mean attention from each token of the second copy to the token *after* its first occurrence.

    An induction head attends there (to predict the repeat); a random-init head scores about 1/position.
    Tokens are drawn from ``[low, vocab)``; ``low`` defaults to skipping the first 4 ids (special tokens
    in the zoo tokenizer). OLMo-3 sliding-window layers cannot reach back ``seq_len`` tokens when the
    window is shorter, so their scores are bounded by the window (the mask is respected).
    """
    vocab = model.adapter.vocab_size
    tokens = repeated_tokens(vocab, seq_len, batch, seed, low=4 if low is None else low).to(
        model._device()
    )
    logits, cache = model.run_with_cache(
        tokens, names_filter=lambda n: n.endswith("attn.hook_pattern")
    )
    n_layers = model.adapter.num_layers
    nll = token_nll(logits, tokens)  # [batch, 2 * seq_len - 1]
    copy_gain = float(nll[:, : seq_len - 1].mean() - nll[:, seq_len:].mean())
    scores = torch.stack(
        [
            # offset 1 - seq_len: query position q attends key q - seq_len + 1; keep the second copy only
            cache[("pattern", i)]
            .diagonal(offset=1 - seq_len, dim1=-2, dim2=-1)[..., 1:]
            .float()
            .mean(dim=(0, 2))
            for i in range(n_layers)
        ]
    )
    return InductionResult(
        scores, tokens, seq_len, previous_token_score(cache, n_layers), copy_gain
    )


def previous_token_score(cache, n_layers: int) -> torch.Tensor:
    """``[n_layers, n_heads]`` mean attention from each position to the one before it (from a cache
    holding the patterns). Previous-token heads are the first half of the induction circuit."""
    return torch.stack(
        [
            cache[("pattern", i)].diagonal(offset=-1, dim1=-2, dim2=-1).float().mean(dim=(0, 2))
            for i in range(n_layers)
        ]
    )
