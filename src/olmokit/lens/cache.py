"""``ActivationCache``: cached activations plus TransformerLens's residual-stream methods.

Index it like TransformerLens's cache: ``cache["blocks.2.attn.hook_pattern"]``, ``cache["pattern", 2]``,
``cache["pattern", 2, "attn"]``, ``cache["pattern2"]`` or ``cache["resid_post", -1]``. Methods have TL's
signatures and meanings and never modify the cache (except :meth:`compute_head_results`, which adds
``hook_result`` entries as TL's does).

How OLMo's norms are handled (TL's methods assume GPT-2's pre-LayerNorm with folded weights):

* :meth:`accumulated_resid` with ``apply_ln=True`` at the final layer normalises every entry with the
  final norm *with its own statistics* (a real forward through the norm: the logit lens; the last entry
  gives the model's logits exactly), as TL's ``recompute_ln``.
* :meth:`apply_ln_to_stack` (and everything built on it: ``decompose_resid``, ``stack_head_results``,
  ``logit_attrs`` ...) uses the *frozen-norm-scale linearisation*: the scale the norm divided the real
  residual by, applied to each component, so normalised components sum exactly to the normalised
  residual. For OLMo-2/3's final RMSNorm this includes the norm's weight (TL folds it into ``W_U`` with
  ``fold_ln``, which OLMo-2/3 cannot use), so a component's ``logit_attrs`` are its real direct effect
  on the logits. A block's own norm (``layer < n_layers``) exists only for pre-norm OLMo v1.
* Per-head results of post-norm OLMo-2/3 (:meth:`stack_head_results`) pass through
  ``post_attention_layernorm`` with the layer's frozen scale, and per-neuron results
  (:meth:`stack_neuron_results`) through ``post_feedforward_layernorm``: then heads sum to
  ``hook_attn_out`` and neurons to ``hook_mlp_out``. ``hook_result`` itself (TL's name) is the raw
  ``z_h @ W_O[h]``, which sums to ``attn.hook_raw_out``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..family import FamilyAdapter, NormSite
from .names import resolve_name
from .norms import apply_norm_with_scale, norm_scale

__all__ = ["ActivationCache"]

SliceLike = int | slice | Sequence[int] | torch.Tensor | None


def apply_slice(t: torch.Tensor, sl: SliceLike, dim: int) -> torch.Tensor:
    """TL's ``Slice``: ``None`` keeps all, an int selects (dropping the dim), a slice or indices keep."""
    if sl is None:
        return t
    if isinstance(sl, int):
        return t.select(dim, sl)
    if isinstance(sl, slice):
        index: list[Any] = [slice(None)] * t.dim()
        index[dim] = sl
        return t[tuple(index)]
    idx = torch.as_tensor(sl, device=t.device)
    return t.index_select(dim, idx)


class ActivationCache:
    """Mapping from hook name to a cached tensor, bound to the family adapter of the model that
    produced it (sizes, norms and weights) and, when made by ``run_with_cache``, the model itself (for
    TL methods that take token strings)."""

    def __init__(
        self,
        cache: dict[str, torch.Tensor],
        adapter: FamilyAdapter,
        has_batch_dim: bool = True,
        model: Any = None,
    ):
        self.cache_dict = cache
        self.adapter = adapter
        self.has_batch_dim = has_batch_dim
        self.model = model

    def _new(self, cache: dict[str, torch.Tensor], has_batch_dim: bool | None = None):
        return ActivationCache(
            cache,
            self.adapter,
            self.has_batch_dim if has_batch_dim is None else has_batch_dim,
            self.model,
        )

    # ------------------------------------------------------------------ mapping
    def _key(self, key: str | tuple) -> str:
        """The full name of a key; a name the model does not have raises, listing the valid ones."""
        if isinstance(key, str) and key in self.cache_dict:  # the common case, kept cheap
            return key
        valid = None
        if self.model is not None:
            valid = set(self.model.hook_dict) | set(self.cache_dict)
        return resolve_name(key, self.adapter.num_layers, valid)

    def __getitem__(self, key: str | tuple) -> torch.Tensor:
        name = self._key(key)
        if name not in self.cache_dict:
            raise KeyError(
                f"{name!r} is not in the cache (it holds {len(self.cache_dict)} hooks; widen names_filter)"
            )
        return self.cache_dict[name]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, (str, tuple)):
            return False
        try:
            return self._key(key) in self.cache_dict
        except (KeyError, ValueError):
            return False

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
        return self._new({k: v.to(device) for k, v in self.items()})

    def toggle_autodiff(self, mode: bool = False) -> None:
        """TL compatibility: gradients are already off for cached values (they are detached)."""
        torch.set_grad_enabled(mode)

    def remove_batch_dim(self) -> ActivationCache:
        if not self.has_batch_dim:
            return self
        for name, v in self.items():
            if v.shape[0] != 1:
                raise ValueError(f"remove_batch_dim needs batch size 1; {name} has {v.shape[0]}")
        return self._new({k: v[0] for k, v in self.items()}, has_batch_dim=False)

    def apply_slice_to_batch_dim(self, batch_slice: int | slice) -> ActivationCache:
        if isinstance(batch_slice, int):
            return self._new({k: v[batch_slice] for k, v in self.items()}, has_batch_dim=False)
        return self._new({k: v[batch_slice] for k, v in self.items()})

    def nbytes(self) -> int:
        """Bytes held, each underlying storage counted once (aliases and views share storage)."""
        seen: dict[int, int] = {}
        for v in self.values():
            storage = v.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return sum(seen.values())

    # ------------------------------------------------------------------ helpers
    def _n_layers(self) -> int:
        return self.adapter.num_layers

    def _layer_arg(self, layer: int | None) -> int:
        n = self._n_layers()
        if layer is None or layer == -1:
            return n
        if not 0 <= layer <= n:
            raise ValueError(f"layer must be in [0, {n}] or -1/None, got {layer}")
        return layer

    def stack_activation(
        self, activation_name: str, layer: int = -1, sublayer_type: str | None = None
    ) -> torch.Tensor:
        """``[n_layers_used, ...]`` of a per-layer activation (``"resid_post"``, ``"pattern"``, ...)."""
        n = self._layer_arg(layer)
        return torch.stack([self[(activation_name, i, sublayer_type)] for i in range(n)])

    def _final_resid(self) -> torch.Tensor:
        return self[("resid_post", self._n_layers() - 1)]

    # ------------------------------------------------------------------ residual stream
    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """The residual stream at the start of every block up to and including ``layer`` (TL).

        ``layer=None``/``-1``: every block and the final residual (``n_layers + 1`` entries, labels
        ``0_pre ... final_post``); ``incl_mid`` adds ``i_mid``; ``mlp_input`` adds ``layer``'s
        ``resid_mid``. ``apply_ln`` at the final layer runs the final norm on each entry with its own
        statistics (logit lens); before it, the block's frozen norm scale (OLMo v1 only).
        """
        n = self._n_layers()
        layer = self._layer_arg(layer)
        parts, labels = [], []
        for i in range(layer + 1):
            if i == n:
                parts.append(self._final_resid())
                labels.append("final_post")
                continue
            parts.append(self[("resid_pre", i)])
            labels.append(f"{i}_pre")
            if (incl_mid and i < layer) or (mlp_input and i == layer):
                parts.append(self[("resid_mid", i)])
                labels.append(f"{i}_mid")
        stack = torch.stack([apply_slice(p, pos_slice, -2) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(
                stack, layer, mlp_input, pos_slice=pos_slice, recompute_ln=layer == n
            )
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """Additive components of the residual entering ``layer``: ``embed``, ``i_attn_out``, ``i_mlp_out``.

        They sum to ``resid_pre[layer]`` (``resid_mid`` with ``mlp_input``; the final residual for
        ``None``/``-1``). ``mode`` keeps ``"all"``, only ``"attn"`` or only ``"mlp"`` outputs. OLMo has
        no positional embedding (rotary), so there is no ``pos_embed`` component.
        """
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        layer = self._layer_arg(layer)
        parts, labels = [], []
        if incl_embeds:
            parts.append(self["hook_embed"])
            labels.append("embed")
        for i in range(layer):
            if mode != "mlp":
                parts.append(self[("attn_out", i)])
                labels.append(f"{i}_attn_out")
            if mode != "attn":
                parts.append(self[("mlp_out", i)])
                labels.append(f"{i}_mlp_out")
        if mlp_input and mode != "mlp" and layer < self._n_layers():
            parts.append(self[("attn_out", layer)])
            labels.append(f"{layer}_attn_out")
        stack = torch.stack([apply_slice(p, pos_slice, -2) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def final_scale(self) -> torch.Tensor:
        """The final norm's fp32 scale at the actual final residual (cached or recomputed exactly)."""
        if "ln_final.hook_scale" in self.cache_dict:
            return self.cache_dict["ln_final.hook_scale"]
        adapter = self.adapter
        return norm_scale(self._final_resid(), adapter.final_norm(), adapter)

    def _block_norm_scale(
        self, layer: int, mlp_input: bool
    ) -> tuple[torch.Tensor, torch.nn.Module]:
        adapter = self.adapter
        if adapter.norm_placement == "post":
            raise ValueError(
                f"OLMo-2/3 have no norm in front of block {layer}'s "
                f"{'MLP' if mlp_input else 'attention'} (they are post-norm): apply_ln only exists "
                "for the final norm here; pass layer=None or -1"
            )
        site, ln, resid = (
            (NormSite.MLP_INPUT, "ln2", "resid_mid")
            if mlp_input
            else (NormSite.ATTN_INPUT, "ln1", "resid_pre")
        )
        norm = adapter.norm(layer, site)
        name = f"blocks.{layer}.{ln}.hook_scale"
        if name in self.cache_dict:
            return self.cache_dict[name], norm
        return norm_scale(self[(resid, layer)], norm, adapter), norm

    def apply_ln_to_stack(
        self,
        residual_stack: torch.Tensor,
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: SliceLike = None,
        batch_slice: SliceLike = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> torch.Tensor:
        """Normalise each component as the norm in front of ``layer`` did the real residual (TL).

        The scale is frozen at its value on the real residual and sliced by ``pos_slice`` and
        ``batch_slice`` like the stack (which must already be position-sliced); ``recompute_ln`` at the
        final layer instead runs the final norm on each component with its own statistics.
        """
        n = self._n_layers()
        layer = self._layer_arg(layer)
        adapter = self.adapter
        if has_batch_dim and batch_slice is not None:
            residual_stack = apply_slice(residual_stack, batch_slice, 1)
        with torch.no_grad():
            if layer == n:
                norm = adapter.final_norm()
                if recompute_ln:
                    return norm(residual_stack)
                scale = self.final_scale()
            else:
                scale, norm = self._block_norm_scale(layer, mlp_input)
            scale = apply_slice(scale, pos_slice, -2)
            if self.has_batch_dim and batch_slice is not None:
                scale = apply_slice(scale, batch_slice, 0)
            return apply_norm_with_scale(residual_stack, scale, norm, adapter)

    # ------------------------------------------------------------------ heads
    def head_results(self, layer: int) -> torch.Tensor:
        """``[n_heads, batch, pos, d_model]``: each head's additive contribution to the residual in
        ``layer`` (v2/3: through ``post_attention_layernorm`` with the layer's frozen scale)."""
        raw = self._raw_head_results(layer)  # [batch, pos, n_heads, d_model]
        per_head = raw.movedim(-2, 0)
        return self._through_post_norm(per_head, layer, NormSite.ATTN_OUTPUT)

    def _raw_head_results(self, layer: int) -> torch.Tensor:
        name = f"blocks.{layer}.attn.hook_result"
        if name in self.cache_dict:
            return self.cache_dict[name]
        adapter = self.adapter
        z = self[("z", layer)]  # [batch, pos, n_heads, d_head]
        w_o = adapter.o_proj(layer).weight  # [d_model, n_heads*d_head]
        w_o = w_o.T.reshape(adapter.num_heads, adapter.head_dim, adapter.hidden_size)
        with torch.no_grad():
            return torch.einsum("...hd,hdm->...hm", z, w_o.to(z.dtype))

    def _through_post_norm(self, parts: torch.Tensor, layer: int, site: NormSite) -> torch.Tensor:
        """Post-norm OLMo-2/3: the sublayer norm with its frozen scale (identity for OLMo v1)."""
        adapter = self.adapter
        if adapter.norm_placement != "post":
            return parts
        norm = adapter.norm(layer, site)
        ln, raw = (
            ("ln1_post", "attn_raw_out")
            if site == NormSite.ATTN_OUTPUT
            else ("ln2_post", "mlp_raw_out")
        )
        scale_name = f"blocks.{layer}.{ln}.hook_scale"
        if scale_name in self.cache_dict:
            scale = self.cache_dict[scale_name]
        else:
            scale = norm_scale(self[(raw, layer)], norm, adapter)
        with torch.no_grad():
            return apply_norm_with_scale(parts, scale, norm, adapter)

    def compute_head_results(self) -> None:
        """Add ``blocks.i.attn.hook_result`` (``z_h @ W_O[h]``, ``[batch, pos, n_heads, d_model]``)."""
        for i in range(self._n_layers()):
            name = f"blocks.{i}.attn.hook_result"
            if name not in self.cache_dict:
                self.cache_dict[name] = self._raw_head_results(i)

    def stack_head_results(
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: SliceLike = None,
        apply_ln: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """``[layer * n_heads (+1), ...batch/pos, d_model]``: every head's additive output in the blocks
        before ``layer`` (``-1``: all), labels ``L{i}H{h}``; ``incl_remainder`` adds the rest of the
        residual entering ``layer`` (``remainder``) so the stack sums to it."""
        layer = self._layer_arg(layer)
        adapter = self.adapter
        parts, labels = [], []
        for i in range(layer):
            parts.append(apply_slice(self.head_results(i), pos_slice, -2))
            labels += [f"L{i}H{h}" for h in range(adapter.num_heads)]
        target = None
        if incl_remainder:
            target = apply_slice(self._resid_entering(layer), pos_slice, -2)
        if parts:
            stack = torch.cat(parts)
        else:
            like = apply_slice(self["hook_embed"], pos_slice, -2)
            stack = like.new_zeros((0, *like.shape))
        if target is not None:
            stack = torch.cat([stack, (target - stack.sum(0))[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def _resid_entering(self, layer: int) -> torch.Tensor:
        return self._final_resid() if layer == self._n_layers() else self[("resid_pre", layer)]

    # ------------------------------------------------------------------ neurons
    def get_neuron_results(
        self, layer: int, neuron_slice: SliceLike = None, pos_slice: SliceLike = None
    ) -> torch.Tensor:
        """``[batch, pos, neurons, d_model]``: ``post[n] * W_out[n]`` (before OLMo-2/3's post-norm)."""
        if isinstance(neuron_slice, int):
            neuron_slice = [neuron_slice]
        post = apply_slice(apply_slice(self[("post", layer)], pos_slice, -2), neuron_slice, -1)
        w_out = apply_slice(self.adapter.down_proj(layer).weight.T, neuron_slice, 0)  # [n, d_model]
        with torch.no_grad():
            return post[..., None] * w_out.to(post.dtype)

    def stack_neuron_results(
        self,
        layer: int,
        pos_slice: SliceLike = None,
        neuron_slice: SliceLike = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """``[layer * neurons (+1), ..., d_model]``: every neuron's additive output in the blocks before
        ``layer`` (OLMo-2/3: through ``post_feedforward_layernorm`` with its frozen scale, so a layer's
        neurons sum to ``hook_mlp_out``), labels ``L{i}N{n}``."""
        layer = self._layer_arg(layer)
        parts, labels = [], []
        n_mlp = self.adapter.intermediate_size
        if isinstance(neuron_slice, int):
            neuron_slice = [neuron_slice]
        ids = apply_slice(torch.arange(n_mlp), neuron_slice, 0).tolist()
        for i in range(layer):
            res = self.get_neuron_results(i, neuron_slice, pos_slice).movedim(-2, 0)
            parts.append(self._through_post_norm(res, i, NormSite.MLP_OUTPUT))
            labels += [f"L{i}N{n}" for n in ids]
        like = apply_slice(self["hook_embed"], pos_slice, -2)
        stack = torch.cat(parts) if parts else like.new_zeros((0, *like.shape))
        if incl_remainder:
            target = apply_slice(self._resid_entering(layer), pos_slice, -2)
            stack = torch.cat([stack, (target - stack.sum(0))[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        return_labels: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """Every head, every neuron (or MLP layer) and the embedding: components that sum to the
        residual entering ``layer`` (its ``resid_mid`` with ``mlp_input``). A ``bias`` entry holds the
        projection biases when the model has them (``attention_bias``)."""
        layer = self._layer_arg(layer)
        n = self._n_layers()
        heads, labels = self.stack_head_results(layer, True, pos_slice=pos_slice)
        parts, labels = [heads], list(labels)
        if mlp_input and layer < n:
            parts.append(apply_slice(self.head_results(layer), pos_slice, -2))
            labels += [f"L{layer}H{h}" for h in range(self.adapter.num_heads)]
        if expand_neurons:
            neurons, nlabels = self.stack_neuron_results(layer, pos_slice, return_labels=True)
            parts.append(neurons)
            labels += nlabels
        else:
            for i in range(layer):
                parts.append(apply_slice(self[("mlp_out", i)], pos_slice, -2)[None])
                labels.append(f"{i}_mlp_out")
        parts.append(apply_slice(self["hook_embed"], pos_slice, -2)[None])
        labels.append("embed")
        stack = torch.cat(parts)
        if self.adapter.attention_bias:
            target = (
                self[("resid_mid", layer)]
                if mlp_input and layer < n
                else self._resid_entering(layer)
            )
            stack = torch.cat([stack, (apply_slice(target, pos_slice, -2) - stack.sum(0))[None]])
            labels.append("bias")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    # ------------------------------------------------------------------ logits
    def logit_attrs(
        self,
        residual_stack: torch.Tensor,
        tokens: str | int | torch.Tensor,
        incorrect_tokens: str | int | torch.Tensor | None = None,
        pos_slice: SliceLike = None,
        batch_slice: SliceLike = None,
        has_batch_dim: bool = True,
    ) -> torch.Tensor:
        """Direct logit attribution (TL): the final norm (frozen scale) applied to each component, then
        the dot product with the unembedding direction of ``tokens`` (minus ``incorrect_tokens``).

        ``tokens`` may be a string (one token), an id, or ids ``[batch]``/``[batch, pos]``; the result
        is ``residual_stack``'s shape without ``d_model``.
        """
        directions = self._directions(tokens)
        if incorrect_tokens is not None:
            wrong = self._directions(incorrect_tokens)
            if wrong.shape != directions.shape:
                raise ValueError(
                    f"tokens and incorrect_tokens must have the same shape ({tuple(directions.shape[:-1])} "
                    f"vs {tuple(wrong.shape[:-1])})"
                )
            directions = directions - wrong
        scaled = self.apply_ln_to_stack(
            residual_stack,
            -1,
            pos_slice=pos_slice,
            batch_slice=batch_slice,
            has_batch_dim=has_batch_dim,
        )
        if (
            has_batch_dim
            and scaled.dim() == 4
            and directions.dim() == 2
            and directions.shape[0] == scaled.shape[1]
        ):
            directions = directions[:, None]  # per-example directions broadcast over positions
        with torch.no_grad():
            return (scaled * directions.to(scaled.dtype)).sum(-1)

    def _directions(self, tokens: str | int | torch.Tensor) -> torch.Tensor:
        if self.model is not None:
            return self.model.tokens_to_residual_directions(tokens)
        if isinstance(tokens, str):
            raise ValueError("token strings need a cache made by HookedOlmo.run_with_cache")
        w_u = self.adapter.lm_head().weight  # [d_vocab, d_model]
        return w_u[torch.as_tensor(tokens, device=w_u.device)]
