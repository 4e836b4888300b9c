"""Logit lens: decode the residual stream after every block with the final norm and the unembedding.

Each residual is normalised with *its own* statistics (a real pass through the final norm; reusing the
last layer's scale for every layer was TransformerLens bug #1076), so the last row reproduces the
model's logits exactly. OLMo-2/3's residual stream is an un-normalised sum that grows with depth; only
the final norm sits before the unembedding, so this is the same "lens" the model itself reads with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .hooked import HookedOlmo

__all__ = ["LogitLensResult", "logit_lens"]


@dataclass
class LogitLensResult:
    labels: list[str]  #: "0_pre" (= embeddings), "1_pre", ..., "final_post"
    logits: torch.Tensor  #: [n_labels, pos, d_vocab] (batch element 0)
    top_ids: torch.Tensor  #: [n_labels, pos, k]
    top_probs: torch.Tensor  #: [n_labels, pos, k]
    #: [n_labels, pos] probability of the next token (or of the given targets)
    target_probs: torch.Tensor | None


@torch.no_grad()
def logit_lens(
    model: HookedOlmo, tokens: torch.Tensor | str, k: int = 5, targets: torch.Tensor | None = None
) -> LogitLensResult:
    """Top-``k`` predictions at every layer and position of the first batch element.

    ``targets [pos]`` defaults to the next input token (the last position gets none: probability NaN).
    """
    tokens = model._as_tokens(tokens)
    _, cache = model.run_with_cache(
        tokens[:1], names_filter=lambda n: n.endswith(("hook_resid_pre", "hook_resid_post"))
    )
    normed, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
    logits = model.adapter.lm_head()(normed[:, 0]).float()  # [n, pos, vocab]
    probs = logits.softmax(-1)
    top_probs, top_ids = probs.topk(k, dim=-1)
    if targets is None:
        targets = torch.full((tokens.shape[-1],), -1, dtype=torch.long, device=tokens.device)
        targets[:-1] = tokens[0, 1:]
    valid = targets >= 0
    target_probs = probs.gather(-1, targets.clamp(min=0)[None, :, None].expand(len(labels), -1, 1))[
        ..., 0
    ]
    target_probs = torch.where(
        valid[None], target_probs, torch.full_like(target_probs, float("nan"))
    )
    return LogitLensResult(labels, logits, top_ids, top_probs, target_probs)
