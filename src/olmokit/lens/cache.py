"""``ActivationCache``: a dict of cached activations plus the residual-stream helpers.

Index it like TransformerLens's cache: ``cache["blocks.2.attn.hook_pattern"]``, ``cache["pattern", 2]``,
``cache["pattern2"]`` or ``cache["resid_post", -1]``. Methods return new tensors or new caches and never
modify this one.

Residual helpers and OLMo's norms:

* :meth:`accumulated_resid` stacks the residual stream after each block (the logit-lens input); with
  ``apply_ln=True`` each entry is normalised by the final norm *with its own statistics* (a real
  forward through the norm, so the last entry gives the model's logits exactly).
* :meth:`decompose_resid` and :meth:`stack_head_results` split the residual into additive components
  (embedding, per-layer attention/MLP outputs, per-head outputs). With ``apply_ln=True`` they use the
  *frozen-norm-scale linearisation*: the final norm's scale is taken from the actual final residual and
  applied to every component, so the normalised components sum exactly to the normalised residual.
  Per-head outputs of post-norm OLMo-2/3 pass through ``post_attention_layernorm`` the same way (frozen
  scale of the layer's summed attention output): heads are not additive through an RMSNorm otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ..family import FamilyAdapter, NormSite
from .names import resolve_name
from .norms import apply_norm_with_scale, norm_scale

__all__ = ["ActivationCache"]


class ActivationCache:
    """Mapping from hook name to a cached tensor, bound to the family adapter of the model that
    produced it (the adapter gives the sizes, norms and weights the helpers need; the cache never
    runs the model, so it does not hold the :class:`~olmokit.lens.HookedOlmo` itself)."""

    def __init__(
        self, cache: dict[str, torch.Tensor], adapter: FamilyAdapter, has_batch_dim: bool = True
    ):
        self.cache_dict = cache
        self.adapter = adapter
        self.has_batch_dim = has_batch_dim

    # ------------------------------------------------------------------ mapping
    def _key(self, key: str | tuple) -> str:
        return resolve_name(key, self.adapter.num_layers)

    def __getitem__(self, key: str | tuple) -> torch.Tensor:
        name = self._key(key)
        if name not in self.cache_dict:
            raise KeyError(
                f"{name!r} is not in the cache (it holds {len(self.cache_dict)} hooks; widen names_filter)"
            )
        return self.cache_dict[name]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (str, tuple)) and self._key(key) in self.cache_dict

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    def keys(self):
        return self.cache_dict.keys()

    def values(self):
        return self.cache_dict.values()

    def items(self):
        return self.cache_dict.items()

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} hooks: {list(self.cache_dict)[:4]}{' ...' if len(self) > 4 else ''})"

    # ------------------------------------------------------------------ new caches
    def to(self, device: str | torch.device) -> ActivationCache:
        return ActivationCache(
            {k: v.to(device) for k, v in self.items()}, self.adapter, self.has_batch_dim
        )

    def remove_batch_dim(self) -> ActivationCache:
        if not self.has_batch_dim:
            return self
        for name, v in self.items():
            if v.shape[0] != 1:
                raise ValueError(f"remove_batch_dim needs batch size 1; {name} has {v.shape[0]}")
        return ActivationCache(
            {k: v[0] for k, v in self.items()}, self.adapter, has_batch_dim=False
        )

    def apply_slice_to_batch_dim(self, batch_slice: int | slice) -> ActivationCache:
        sl = slice(batch_slice, batch_slice + 1) if isinstance(batch_slice, int) else batch_slice
        return ActivationCache(
            {k: v[sl] for k, v in self.items()}, self.adapter, self.has_batch_dim
        )

    def nbytes(self) -> int:
        """Bytes held, each underlying storage counted once (aliases and views share storage)."""
        seen: dict[int, int] = {}
        for v in self.values():
            storage = v.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return sum(seen.values())

    # ------------------------------------------------------------------ stacking
    def stack_activation(self, name: str, layer: int | None = None) -> torch.Tensor:
        """``[n_layers_used, ...]`` of a per-layer activation (``"resid_post"``, ``"pattern"``, ...)."""
        n = self.adapter.num_layers if layer is None else layer
        return torch.stack([self[(name, i)] for i in range(n)])

    def _final_resid(self) -> torch.Tensor:
        return self[("resid_post", self.adapter.num_layers - 1)]

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: int | slice | None = None,
        return_labels: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """Residual stream before each block up to ``layer`` (all blocks plus the final one by default).

        ``[n, batch, pos, d_model]``; labels ``0_pre, 0_mid, 1_pre, ..., final_post``. ``apply_ln``
        normalises every entry with the final norm using its own statistics (logit lens).
        """
        n_layers = self.adapter.num_layers
        layer = n_layers if layer is None else layer % (n_layers + 1)
        parts, labels = [], []
        for i in range(layer):
            parts.append(self[("resid_pre", i)])
            labels.append(f"{i}_pre")
            if incl_mid:
                parts.append(self[("resid_mid", i)])
                labels.append(f"{i}_mid")
        if layer == n_layers:
            parts.append(self._final_resid())
            labels.append("final_post")
        stack = torch.stack(parts)
        if pos_slice is not None:
            stack = _slice_pos(stack, pos_slice, self.has_batch_dim)
        if apply_ln:
            with torch.no_grad():
                stack = self.adapter.final_norm()(stack)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        incl_embeds: bool = True,
        apply_ln: bool = False,
        pos_slice: int | slice | None = None,
        return_labels: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """Additive components of the residual before ``layer``: embed, ``i_attn_out``, ``i_mlp_out``.

        They sum to ``resid_pre[layer]`` (``resid_mid`` with ``mlp_input``; the final residual with
        ``layer=None``). ``apply_ln`` applies the final norm with its frozen scale (see module docstring).
        """
        n_layers = self.adapter.num_layers
        layer = n_layers if layer is None else layer
        parts, labels = [], []
        if incl_embeds:
            parts.append(self["hook_embed"])
            labels.append("embed")
        for i in range(layer):
            parts += [self[("attn_out", i)], self[("mlp_out", i)]]
            labels += [f"{i}_attn_out", f"{i}_mlp_out"]
        if mlp_input and layer < n_layers:
            parts.append(self[("attn_out", layer)])
            labels.append(f"{layer}_attn_out")
        stack = torch.stack(parts)
        return self._finish_stack(stack, labels, apply_ln, pos_slice, return_labels)

    def _finish_stack(self, stack, labels, apply_ln, pos_slice, return_labels):
        """Shared tail of the stacking helpers: optional frozen final norm, position slice, labels."""
        if apply_ln:
            stack = self.apply_ln_to_stack(stack)
        if pos_slice is not None:
            stack = _slice_pos(stack, pos_slice, self.has_batch_dim)
        return (stack, labels) if return_labels else stack

    def final_scale(self) -> torch.Tensor:
        """The final norm's fp32 scale at the actual final residual (cached or recomputed exactly)."""
        if "ln_final.hook_scale" in self.cache_dict:
            return self.cache_dict["ln_final.hook_scale"]
        adapter = self.adapter
        return norm_scale(self._final_resid(), adapter.final_norm(), adapter)

    def apply_ln_to_stack(self, stack: torch.Tensor) -> torch.Tensor:
        """Final norm applied to each component with the frozen final scale (linear in the component)."""
        adapter = self.adapter
        with torch.no_grad():
            return apply_norm_with_scale(stack, self.final_scale(), adapter.final_norm(), adapter)

    def stack_head_results(
        self,
        layer: int | None = None,
        apply_ln: bool = False,
        pos_slice: int | slice | None = None,
        return_labels: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """Per-head contributions to the residual, ``[n_layers*n_heads, batch, pos, d_model]``, labels ``L{i}H{h}``.

        OLMo v1: ``z_h @ W_O_h`` exactly (an o_proj bias, if any, is not a head's and is left out).
        OLMo-2/3: ``post_attention_layernorm`` applied to each ``z_h @ W_O_h`` with the layer's frozen
        scale (needs ``blocks.i.attn.hook_raw_out`` or ``blocks.i.ln1_post.hook_scale`` in the cache);
        the heads then sum to ``hook_attn_out``.
        """
        adapter = self.adapter
        n = adapter.num_layers if layer is None else layer
        parts, labels = [], []
        for i in range(n):
            parts.append(self.head_results(i))
            labels += [f"L{i}H{h}" for h in range(adapter.num_heads)]
        stack = torch.cat(parts)
        return self._finish_stack(stack, labels, apply_ln, pos_slice, return_labels)

    def head_results(self, layer: int) -> torch.Tensor:
        """``[n_heads, batch, pos, d_model]``: each head's additive contribution in ``layer``."""
        adapter = self.adapter
        z = self[("z", layer)]  # [batch, pos, n_heads, d_head]
        w_o = adapter.o_proj(layer).weight  # [d_model, n_heads*d_head]
        w_o = w_o.T.reshape(adapter.num_heads, adapter.head_dim, adapter.hidden_size)
        with torch.no_grad():
            per_head = torch.einsum("...hd,hdm->h...m", z, w_o.to(z.dtype))
            if adapter.norm_placement == "post":
                norm = adapter.norm(layer, NormSite.ATTN_OUTPUT)
                scale_name = f"blocks.{layer}.ln1_post.hook_scale"
                if scale_name in self.cache_dict:
                    scale = self.cache_dict[scale_name]
                else:
                    scale = norm_scale(self[("attn_raw_out", layer)], norm, adapter)
                per_head = apply_norm_with_scale(per_head, scale, norm, adapter)
        return per_head

    def logit_attrs(
        self,
        residual_stack: torch.Tensor,
        tokens: torch.Tensor,
        incorrect_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Project already-normalised components onto unembedding directions.

        ``residual_stack [n, batch, d_model]`` (one position), ``tokens [batch]``; returns ``[n, batch]``
        (logit of ``tokens`` minus logit of ``incorrect_tokens`` when given).
        """
        w_u = self.adapter.lm_head().weight  # [d_vocab, d_model]
        direction = w_u[tokens]
        if incorrect_tokens is not None:
            direction = direction - w_u[incorrect_tokens]
        with torch.no_grad():
            return (residual_stack * direction.to(residual_stack.dtype)).sum(-1)


def _slice_pos(stack: torch.Tensor, pos_slice: int | slice, has_batch: bool) -> torch.Tensor:
    dim = 2 if has_batch else 1
    if isinstance(pos_slice, int):
        return stack.select(dim, pos_slice)
    index: list[Any] = [slice(None)] * stack.dim()
    index[dim] = pos_slice
    return stack[tuple(index)]
