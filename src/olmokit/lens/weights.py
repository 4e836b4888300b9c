"""TransformerLens weight names (``W_Q``, ``W_O``, ``W_in`` ...) as views of the live HF weights.

TL stores weights in its own layout; olmokit keeps HF's modules untouched and *reshapes* them on
access: ``blocks[i].attn.W_Q`` is ``q_proj.weight`` viewed as ``[n_heads, d_model, d_head]`` (a view:
editing it edits the model, and an edit of the model shows through). Stacked properties on the model
(``model.W_Q`` ``[n_layers, n_heads, d_model, d_head]``) stack those views, which copies, as in TL.

Layout (TL's): ``x @ W_Q[h]`` is head ``h``'s query, ``z[h] @ W_O[h]`` its output, ``x @ W_in`` the MLP
up projection, ``post @ W_out`` the MLP output, ``resid @ W_U`` the logits. Biases OLMo does not have
(every generation's q/k/v/o without ``attention_bias``, all MLP and unembedding biases) are zeros of
the right shape, as TL's OLMo conversion writes them.

GQA: ``_W_K``/``_W_V``/``_b_K``/``_b_V`` have the ``n_key_value_heads`` real heads; ``W_K``/``W_V``
repeat each one for the query heads that share it (``repeat_interleave``, a copy), TL's convention.

OLMo-2/3 q/k-norm: the real query is ``RoPE(q_norm(x @ W_Q_flat))``, where ``q_norm`` is an RMSNorm over
*all heads' queries together* (width ``n_heads * d_head``) with a learned weight. ``W_Q`` is the
projection *before* that norm (HF's ``q_proj``), so ``QK = W_Q @ W_K.T`` ignores the norm's per-token
scale and weight and RoPE, exactly as TL's rotary models' ``QK`` ignores RoPE. The norm weights are
``blocks[i].attn.q_norm_w``/``k_norm_w``.
"""

from __future__ import annotations

import torch

from ..family import FamilyAdapter, NormSite

__all__ = ["AttnWeights", "MlpWeights", "layer_weight", "LAYER_WEIGHTS"]


def _zeros_like_out(lin: torch.nn.Linear, *shape: int) -> torch.Tensor:
    w = lin.weight
    return torch.zeros(*shape, dtype=w.dtype, device=w.device)


def _heads_in(lin: torch.nn.Linear, n: int, d_head: int) -> torch.Tensor:
    """``[out = n*d_head, d_model]`` weight as ``[n, d_model, d_head]`` (a view)."""
    return lin.weight.unflatten(0, (n, d_head)).transpose(-2, -1)


def _bias_heads(lin: torch.nn.Linear, n: int, d_head: int) -> torch.Tensor:
    if lin.bias is None:
        return _zeros_like_out(lin, n, d_head)
    return lin.bias.unflatten(0, (n, d_head))


class AttnWeights:
    """TL's attention weight names for one layer (``model.blocks[i].attn``)."""

    def __init__(self, adapter: FamilyAdapter, layer: int):
        self._adapter, self._i = adapter, layer

    @property
    def W_Q(self) -> torch.Tensor:
        adapter = self._adapter
        return _heads_in(adapter.q_proj(self._i), adapter.num_heads, adapter.head_dim)

    @property
    def _W_K(self) -> torch.Tensor:
        adapter = self._adapter
        return _heads_in(adapter.k_proj(self._i), adapter.num_kv_heads, adapter.head_dim)

    @property
    def _W_V(self) -> torch.Tensor:
        adapter = self._adapter
        return _heads_in(adapter.v_proj(self._i), adapter.num_kv_heads, adapter.head_dim)

    @property
    def W_K(self) -> torch.Tensor:
        return self._repeat(self._W_K)

    @property
    def W_V(self) -> torch.Tensor:
        return self._repeat(self._W_V)

    @property
    def W_O(self) -> torch.Tensor:
        adapter = self._adapter
        return adapter.o_proj(self._i).weight.T.unflatten(0, (adapter.num_heads, adapter.head_dim))

    @property
    def b_Q(self) -> torch.Tensor:
        adapter = self._adapter
        return _bias_heads(adapter.q_proj(self._i), adapter.num_heads, adapter.head_dim)

    @property
    def _b_K(self) -> torch.Tensor:
        adapter = self._adapter
        return _bias_heads(adapter.k_proj(self._i), adapter.num_kv_heads, adapter.head_dim)

    @property
    def _b_V(self) -> torch.Tensor:
        adapter = self._adapter
        return _bias_heads(adapter.v_proj(self._i), adapter.num_kv_heads, adapter.head_dim)

    @property
    def b_K(self) -> torch.Tensor:
        return self._repeat(self._b_K)

    @property
    def b_V(self) -> torch.Tensor:
        return self._repeat(self._b_V)

    @property
    def b_O(self) -> torch.Tensor:
        o = self._adapter.o_proj(self._i)
        return o.bias if o.bias is not None else _zeros_like_out(o, self._adapter.hidden_size)

    @property
    def q_norm_w(self) -> torch.Tensor | None:
        """OLMo-2/3 q-norm weight ``[n_heads * d_head]`` (``None`` for OLMo v1)."""
        norm = self._adapter.q_norm(self._i)
        return None if norm is None else norm.weight

    @property
    def k_norm_w(self) -> torch.Tensor | None:
        norm = self._adapter.k_norm(self._i)
        return None if norm is None else norm.weight

    @property
    def QK(self):
        from .factored import FactoredMatrix

        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self):
        from .factored import FactoredMatrix

        return FactoredMatrix(self.W_V, self.W_O)

    def _repeat(self, t: torch.Tensor) -> torch.Tensor:
        group = self._adapter.kv_group_size
        return t if group == 1 else t.repeat_interleave(group, dim=0)


class MlpWeights:
    """TL's gated-MLP weight names for one layer (``model.blocks[i].mlp``)."""

    def __init__(self, adapter: FamilyAdapter, layer: int):
        self._adapter, self._i = adapter, layer

    @property
    def W_in(self) -> torch.Tensor:
        return self._adapter.up_proj(self._i).weight.T

    @property
    def W_gate(self) -> torch.Tensor:
        return self._adapter.gate_proj(self._i).weight.T

    @property
    def W_out(self) -> torch.Tensor:
        return self._adapter.down_proj(self._i).weight.T

    @property
    def b_in(self) -> torch.Tensor:
        up = self._adapter.up_proj(self._i)
        return (
            up.bias if up.bias is not None else _zeros_like_out(up, self._adapter.intermediate_size)
        )

    @property
    def b_out(self) -> torch.Tensor:
        down = self._adapter.down_proj(self._i)
        return (
            down.bias if down.bias is not None else _zeros_like_out(down, self._adapter.hidden_size)
        )


#: stacked property name -> ("attn" | "mlp", per-layer attribute)
LAYER_WEIGHTS = {
    "W_Q": ("attn", "W_Q"),
    "W_K": ("attn", "W_K"),
    "W_V": ("attn", "W_V"),
    "W_O": ("attn", "W_O"),
    "_W_K": ("attn", "_W_K"),
    "_W_V": ("attn", "_W_V"),
    "b_Q": ("attn", "b_Q"),
    "b_K": ("attn", "b_K"),
    "b_V": ("attn", "b_V"),
    "b_O": ("attn", "b_O"),
    "_b_K": ("attn", "_b_K"),
    "_b_V": ("attn", "_b_V"),
    "W_in": ("mlp", "W_in"),
    "W_gate": ("mlp", "W_gate"),
    "W_out": ("mlp", "W_out"),
    "b_in": ("mlp", "b_in"),
    "b_out": ("mlp", "b_out"),
}


def layer_weight(adapter: FamilyAdapter, kind: str, name: str, layer: int) -> torch.Tensor:
    cls = AttnWeights if kind == "attn" else MlpWeights
    return getattr(cls(adapter, layer), name)


def norm_weight(adapter: FamilyAdapter, layer: int, site: NormSite) -> torch.Tensor | None:
    """A per-block norm's weight (``None`` for OLMo v1's parameter-free LayerNorm)."""
    return getattr(adapter.norm(layer, site), "weight", None)
