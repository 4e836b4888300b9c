"""Direct logit attribution (DLA): how much each head, MLP and the embedding push one logit directly.

The residual stream before the final norm is ``embed + Σ_i (attn_out_i + mlp_out_i)``, and attention
output is a sum over heads. The final norm is not linear, so DLA *linearises* it: the norm's scale is
frozen at its value on the actual final residual and applied to every component. Then the normalised
components add up exactly to the normalised residual, and their logits add up to the model's logit.

For post-norm OLMo-2/3 the same frozen-norm-scale linearisation is needed one step earlier: heads are
summed by ``o_proj`` and then pass through ``post_attention_layernorm`` (an RMSNorm over their sum). A
head's contribution is ``post_attention_layernorm`` applied to ``z_h @ W_O_h`` with that layer's scale
frozen. This is an attribution *at the point of the forward pass*: it says what each component
contributed given the norms' actual scales, not what would happen if a component were removed (for that,
use ablation or patching). OLMo v1's LayerNorm has no weights; frozen, it is centring times a scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..family import NormSite
from .cache import ActivationCache
from .hooked import HookedOlmo
from .norms import apply_norm_with_scale, norm_scale

__all__ = ["DLAResult", "direct_logit_attribution", "dla_names_filter"]


@dataclass
class DLAResult:
    labels: list[str]  #: "embed", "L{i}H{h}", "L{i}attn_bias" (only with an o_proj bias), "L{i}MLP"
    values: torch.Tensor  #: [n_components, batch] attribution to the logit (difference)
    total: torch.Tensor  #: [batch] the model's actual logit (difference); values.sum(0) ≈ total

    def top(self, n: int = 10) -> list[tuple[str, float]]:
        mean = self.values.mean(-1)
        order = mean.abs().argsort(descending=True)[:n]
        return [(self.labels[i], float(mean[i])) for i in order]


def dla_names_filter(model: HookedOlmo):
    """The hooks DLA needs (head outputs, post-norm inputs, MLP outputs, embeddings, final residual)."""
    last = f"blocks.{model.adapter.num_layers - 1}.hook_resid_post"

    def keep(name: str) -> bool:
        return name in ("hook_embed", last) or name.endswith(
            ("attn.hook_z", "attn.hook_raw_out", "hook_mlp_out")
        )

    return keep


@torch.no_grad()
def direct_logit_attribution(
    model: HookedOlmo,
    tokens: torch.Tensor | str,
    answer: int | torch.Tensor,
    wrong: int | torch.Tensor | None = None,
    pos: int = -1,
) -> DLAResult:
    """Per-component direct attribution to ``logit[answer]`` (minus ``logit[wrong]``) at ``pos``."""
    tokens = model._as_tokens(tokens)
    batch = tokens.shape[0]
    logits, cache = model.run_with_cache(tokens, names_filter=dla_names_filter(model))
    answer_t = torch.as_tensor(answer, device=tokens.device).expand(batch)
    wrong_t = None if wrong is None else torch.as_tensor(wrong, device=tokens.device).expand(batch)
    adapter = model.adapter
    parts, labels = [cache["hook_embed"][None]], ["embed"]
    for i in range(adapter.num_layers):
        parts.append(cache.head_results(i))
        labels += [f"L{i}H{h}" for h in range(adapter.num_heads)]
        bias = adapter.o_proj(i).bias
        if bias is not None:
            parts.append(_bias_component(cache, i, bias))
            labels.append(f"L{i}attn_bias")
        parts.append(cache[("mlp_out", i)][None])
        labels.append(f"L{i}MLP")
    stack = torch.cat(parts)[:, :, pos]  # [n, batch, d_model]
    scale = cache.final_scale()[:, pos]
    normed = _apply_final(model, stack, scale)
    w_u = adapter.lm_head().weight  # [d_vocab, d_model]
    direction = w_u[answer_t] - (w_u[wrong_t] if wrong_t is not None else 0)
    values = (normed * direction.to(normed.dtype)).sum(-1).float()
    rows = torch.arange(batch, device=tokens.device)
    total = logits[rows, pos, answer_t] - (logits[rows, pos, wrong_t] if wrong_t is not None else 0)
    return DLAResult(labels, values, total.float())


def _apply_final(model: HookedOlmo, stack: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    adapter = model.adapter
    return apply_norm_with_scale(stack, scale, adapter.final_norm(), adapter)


def _bias_component(cache: ActivationCache, layer: int, bias: torch.Tensor) -> torch.Tensor:
    """The o_proj bias as a component of its own (it belongs to no head), through the layer's
    frozen post-attention norm on post-norm OLMo-2/3."""
    adapter = cache.adapter
    z = cache[("z", layer)]
    b = bias.to(z.dtype).expand(*z.shape[:2], -1)[None]
    if adapter.norm_placement == "post":
        norm = adapter.norm(layer, NormSite.ATTN_OUTPUT)
        b = apply_norm_with_scale(
            b, norm_scale(cache[("attn_raw_out", layer)], norm, adapter), norm, adapter
        )
    return b
