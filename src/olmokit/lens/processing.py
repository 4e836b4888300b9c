"""TransformerLens's weight-processing flags, applied only where they are exact for OLMo.

TL's ``from_pretrained`` rewrites GPT-2-style weights so analyses read more simply: ``fold_ln`` folds
LayerNorm weights into the next linear map, ``center_writing_weights`` removes the mean over
``d_model`` from everything that writes to the residual (invisible to a following LayerNorm),
``center_unembed`` removes the mean over the vocabulary from ``W_U`` (softmax ignores a constant),
``refactor_factored_attn_matrices`` rebalances ``W_Q``/``W_K`` and ``W_V``/``W_O``. Each is a promise
that the model computes the same function. Here is when that promise holds for OLMo:

* ``fold_ln``: OLMo v1's LayerNorm has no weights, so there is nothing to fold (exact no-op).
  OLMo-2/3's block norms are *post*-norms on the sublayer outputs: there is no following linear map to
  fold them into (TL refuses too, ``supports_fold_ln=False``). Warned and skipped.
* ``center_writing_weights``: exact for OLMo v1, whose every reader of the residual (``ln1``, ``ln2``,
  ``ln_final``) is a centring LayerNorm: ``W_E``, ``W_O`` and ``W_out`` are centred. Not for OLMo-2/3's
  RMSNorm, which does not subtract the mean: warned and skipped. Skipped with tied embeddings (``W_E``
  is ``W_U`` there, and centring it would change the logits).
* ``center_unembed``: exact up to a per-position constant on the logits (probabilities, log-probs
  differences and the argmax are unchanged; raw logits are not bit-identical to HF any more). Skipped
  with tied embeddings.
* ``refactor_factored_attn_matrices``: TL asserts it cannot be done with rotary embeddings (QK depends
  on positions), and q/k-norm (OLMo-2/3) would make it wrong too: warned and skipped.
* ``fold_value_biases``: OLMo has no value biases (unless ``attention_bias``): no-op, warned if biases.

All processing edits the freshly loaded weights in place (``from_pretrained`` owns them).
"""

from __future__ import annotations

import warnings

import torch

from ..family import FamilyAdapter

__all__ = ["process_weights"]


def _skip(flag: str, reason: str) -> None:
    warnings.warn(
        f"{flag}=True is not applied to this OLMo model: {reason}", UserWarning, stacklevel=4
    )


@torch.no_grad()
def process_weights(
    adapter: FamilyAdapter,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    refactor_factored_attn_matrices: bool = False,
    fold_value_biases: bool = False,
) -> list[str]:
    """Apply the flags that are exact for this model; warn for the others. Returns the applied ones."""
    applied: list[str] = []
    post = adapter.norm_placement == "post"
    tied = adapter.tied_embeddings
    if fold_ln:
        if post:
            _skip(
                "fold_ln",
                "OLMo-2/3 normalise the attention/MLP *outputs* (post-norm), so no linear map follows "
                "a block norm to fold it into (TransformerLens refuses fold_ln for OLMo-2 as well)",
            )
        else:
            applied.append("fold_ln")  # v1's LayerNorm has no weights: nothing to fold
    if center_writing_weights:
        if post:
            _skip(
                "center_writing_weights",
                "OLMo-2/3 read the residual through RMSNorm, which does not subtract the mean, so "
                "centring the weights that write to it would change the model",
            )
        elif tied:
            _skip("center_writing_weights", "the embeddings are tied to the unembedding")
        else:
            _center_writers(adapter)
            applied.append("center_writing_weights")
    if center_unembed:
        if tied:
            _skip("center_unembed", "the unembedding is tied to the embeddings")
        else:
            w = adapter.lm_head().weight  # [d_vocab, d_model]
            w.sub_(w.mean(0, keepdim=True))
            if adapter.lm_head().bias is not None:
                b = adapter.lm_head().bias
                b.sub_(b.mean())
            applied.append("center_unembed")
    if refactor_factored_attn_matrices:
        _skip(
            "refactor_factored_attn_matrices",
            "OLMo uses rotary embeddings (and OLMo-2/3 q/k-norm), so QK cannot be rebalanced without "
            "changing attention (TransformerLens refuses this for rotary models too)",
        )
    if fold_value_biases:
        if adapter.attention_bias:
            _skip("fold_value_biases", "not implemented for OLMo models with attention_bias")
        else:
            applied.append("fold_value_biases")  # no value biases: nothing to fold
    return applied


def _center_writers(adapter: FamilyAdapter) -> None:
    """Subtract the mean over ``d_model`` from every weight (and bias) that writes to the residual."""
    emb = adapter.embed_tokens().weight  # [d_vocab, d_model]
    emb.sub_(emb.mean(-1, keepdim=True))
    for i in range(adapter.num_layers):
        for lin in (adapter.o_proj(i), adapter.down_proj(i)):  # weight [d_model, in]
            lin.weight.sub_(lin.weight.mean(0, keepdim=True))
            if lin.bias is not None:
                lin.bias.sub_(lin.bias.mean())
