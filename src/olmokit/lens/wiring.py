"""Wiring hook points into an unmodified HF OLMo model, only where and while they are needed.

There is no forked modeling code. Each hook point maps to a *site* on a module the family adapter names:

* most values are a module's output or first input, reached with ``torch`` forward/pre-forward hooks;
* ``hook_q/k/v`` (post-RoPE), ``hook_attn_scores`` and ``hook_pattern`` live inside HF's attention
  function. For a layer that needs them, that layer's attention module gets a private config copy whose
  ``_attn_implementation`` names a lens function registered with HF's ``AttentionInterface``. The lens
  function runs the q/k/v hooks and then either delegates to the model's own implementation (SDPA stays
  SDPA) or, only when scores/pattern are requested, runs the eager math with the layer's mask (causal,
  sliding-window, padding) so the pattern is real;
* ``hook_resid_mid`` has no module of its own (HF adds residuals inline), so an edit is applied at the
  MLP input and the block output is then rebuilt as ``resid_mid' + mlp_out`` — exactly what the block
  would have computed from the edited residual;
* OLMo v1's ``clip_qkv`` uses an in-place ``clamp_`` that breaks backward hooks; while any hook is active
  the lens switches HF's clamp off (config copy) and applies the same clamp out of place on the q/k/v
  projection outputs, counting clipped entries per layer.

Per HF module there is at most one pre-hook and one forward hook (a :class:`_Tap`), which runs its
callbacks in a fixed priority order; a tap is removed when its last callback is.

Everything this module needs to know about HF's modules (which module is which, how they pass hidden
states in and out, the attention registry and config fields) comes from the family adapter.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import OlmokitError
from ..family import FamilyAdapter, NormSite
from .hook_points import HookPoint
from .norms import apply_norm_with_scale, norm_scale
from .weights import AttnWeights

__all__ = ["LENS_ATTN_IMPL", "Wiring", "ATTENTION_SITES"]

#: Name under which the lens attention function is registered in HF's ``AttentionInterface``.
LENS_ATTN_IMPL = "olmokit_lens"
#: Hook short names that live inside the attention function.
ATTENTION_SITES = (
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
)
_EAGER_SITES = ("attn.hook_attn_scores", "attn.hook_pattern")


# ----------------------------------------------------------------------------------------------- taps
class _Tap:
    """One ``torch`` hook on one module that runs a priority-ordered list of callbacks."""

    def __init__(self, module: nn.Module, kind: str):
        self.module, self.kind = module, kind
        self.callbacks: list[tuple[int, int, Callable]] = []
        self.handle = None
        self._seq = 0

    def add(self, priority: int, cb: Callable) -> tuple[int, int, Callable]:
        entry = (priority, self._seq, cb)
        self._seq += 1
        self.callbacks.append(entry)
        self.callbacks.sort(key=lambda e: e[:2])
        if self.handle is None:
            if self.kind == "pre":
                self.handle = self.module.register_forward_pre_hook(self._run_pre, with_kwargs=True)
            else:
                self.handle = self.module.register_forward_hook(self._run_post, with_kwargs=True)
        return entry

    def discard(self, entry: tuple[int, int, Callable]) -> bool:
        """Remove a callback; returns True when the tap became empty (and its torch hook is gone)."""
        if entry in self.callbacks:
            self.callbacks.remove(entry)
        if not self.callbacks and self.handle is not None:
            self.handle.remove()
            self.handle = None
        return not self.callbacks

    def _run_pre(self, module, args, kwargs):
        changed = False
        for _, _, cb in list(self.callbacks):
            res = cb(args, kwargs)
            if res is not None:
                args, kwargs = res
                changed = True
        return (args, kwargs) if changed else None

    def _run_post(self, module, args, kwargs, output):
        changed = False
        for _, _, cb in list(self.callbacks):
            res = cb(args, kwargs, output)
            if res is not None:
                output = res
                changed = True
        return output if changed else None


_first = FamilyAdapter.module_input
_with_first = FamilyAdapter.replace_module_input
_out = FamilyAdapter.module_output
_with_out = FamilyAdapter.replace_module_output


# ----------------------------------------------------------------------------------------- attention
@dataclass
class _AttnContext:
    """What the lens attention function needs for one wired attention module."""

    adapter: FamilyAdapter
    layer: int
    base_impl: str  #: the attention implementation the model was loaded with ("sdpa", "eager", ...)
    sites: dict[str, HookPoint] = field(default_factory=dict)


_CONTEXTS: weakref.WeakKeyDictionary[nn.Module, _AttnContext] = weakref.WeakKeyDictionary()
_REGISTERED = False


def _additive_mask(
    mask: Any, query: torch.Tensor, key: torch.Tensor, sliding_window: int | None
) -> torch.Tensor:
    """The layer's mask as an additive float tensor (what eager attention adds to the scores).

    SDPA-style masks arrive as ``None`` (plain causal, skipped by HF) or boolean (True = attend); eager
    masks are already additive. Masked entries get ``finfo.min``, as in HF's eager masks.
    """
    min_value = torch.finfo(query.dtype).min
    if mask is None:
        q_len, k_len = query.shape[-2], key.shape[-2]
        q_pos = torch.arange(k_len - q_len, k_len, device=query.device)[:, None]
        k_pos = torch.arange(k_len, device=query.device)[None, :]
        allowed = k_pos <= q_pos
        if sliding_window is not None:
            allowed = allowed & (k_pos > q_pos - sliding_window)
        mask = allowed[None, None]
    if not isinstance(mask, torch.Tensor):
        raise OlmokitError(
            f"lens: attention patterns need an eager- or sdpa-style mask, got {type(mask).__name__}; "
            "load the model with attn_implementation='sdpa' or 'eager'"
        )
    if mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=query.dtype, device=query.device)
        return torch.where(
            mask, zero, torch.tensor(min_value, dtype=query.dtype, device=query.device)
        )
    return mask


def _lens_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """HF attention-interface function: q/k/v hooks, then base implementation or hooked eager math."""
    ctx = _CONTEXTS.get(module)
    if ctx is None:  # pragma: no cover - a config copy outlived its wiring
        raise OlmokitError("lens attention called for a module that is not wired")
    sites, adapter = ctx.sites, ctx.adapter
    for which, name in (("q", "attn.hook_q"), ("k", "attn.hook_k"), ("v", "attn.hook_v")):
        hp = sites.get(name)
        if hp is None:
            continue
        t = {"q": query, "k": key, "v": value}[which]
        view = t.transpose(1, 2)  # [batch, pos, heads, d_head]
        new = hp(view)
        if new is not view:
            new = new.transpose(1, 2)
            query, key, value = (
                (new, key, value)
                if which == "q"
                else (query, new, value)
                if which == "k"
                else (query, key, new)
            )
    if not any(name in sites for name in _EAGER_SITES):
        base = adapter.attention_function(module, ctx.base_impl)
        return base(module, query, key, value, attention_mask, **kwargs)

    # Eager math, op for op as HF's eager_attention_forward, with the two hook points in between.
    key_states = adapter.repeat_kv(module, key)
    value_states = adapter.repeat_kv(module, value)
    scaling = kwargs.get("scaling", adapter.attention_scaling(module))
    scores = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    window = kwargs.get("sliding_window", adapter.layer_sliding_window(ctx.layer))
    scores = scores + _additive_mask(attention_mask, query, key_states, window)
    if "attn.hook_attn_scores" in sites:
        scores = sites["attn.hook_attn_scores"](scores)
    pattern = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if "attn.hook_pattern" in sites:
        pattern = sites["attn.hook_pattern"](pattern)
    pattern = nn.functional.dropout(pattern, p=kwargs.get("dropout", 0.0), training=module.training)
    out = torch.matmul(pattern, value_states).transpose(1, 2).contiguous()
    return out, pattern


def _register_attention_function() -> None:
    global _REGISTERED
    if not _REGISTERED:
        FamilyAdapter.register_attention_function(LENS_ATTN_IMPL, _lens_attention)
        _REGISTERED = True


# --------------------------------------------------------------------------------------------- wiring
class _Modules:
    """Memoised module lookups through family-adapter accessors (a ``get_submodule`` walk per hook per
    run adds up); the HF module tree is not restructured while a model is wrapped.

    ``mod(adapter.o_proj, 3)`` returns ``adapter.o_proj(3)``, looked up once.
    """

    def __init__(self) -> None:
        self._memo: dict[tuple, nn.Module] = {}

    def __call__(self, accessor: Callable[..., nn.Module], *args: Any) -> nn.Module:
        key = (accessor, *args)  # bound methods hash by (adapter, function)
        module = self._memo.get(key)
        if module is None:
            module = self._memo[key] = accessor(*args)
        return module


class Wiring:
    """Connects the hook points of one model to its HF modules (see the module docstring)."""

    def __init__(self, adapter: FamilyAdapter):
        _register_attention_function()
        self.adapter = adapter
        self._mod = _Modules()
        self._config_copies: dict[tuple, tuple[Any, Any]] = {}
        self._taps: dict[tuple[int, str], _Tap] = {}
        self._active: dict[str, list[Callable[[], None]]] = {}
        self._attn_sites: dict[int, dict[str, HookPoint]] = {}
        self._orig_configs: dict[int, Any] = {}
        self._engaged = 0
        self._clip_removers: list[Callable[[], None]] = []
        self._mid_state: dict[int, list] = {}
        self._clip_counts: dict[int, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ bookkeeping
    @property
    def active_names(self) -> list[str]:
        return list(self._active)

    def _tap(self, module: nn.Module, kind: str, priority: int, cb: Callable) -> Callable[[], None]:
        key = (id(module), kind)
        tap = self._taps.get(key)
        if tap is None:
            tap = self._taps[key] = _Tap(module, kind)
        entry = tap.add(priority, cb)

        def remove() -> None:
            if tap.discard(entry):
                self._taps.pop(key, None)

        return remove

    def begin_forward(self) -> None:
        self._mid_state.clear()
        self._clip_counts.clear()

    def end_forward(self) -> None:
        self._mid_state.clear()

    def clip_counts(self) -> dict[int, dict[str, int]]:
        """Entries clipped by ``clip_qkv`` in the last lens forward, per layer and projection."""
        return {i: {k: int(v) for k, v in d.items()} for i, d in sorted(self._clip_counts.items())}

    # ------------------------------------------------------------------ activation
    def set_active(self, hp: HookPoint) -> None:
        """Wire ``hp`` if it has hooks and is not wired; unwire it if it has none."""
        if hp.has_hooks and hp.name not in self._active:
            if not self._active:
                self.engage()
            self._active[hp.name] = self._wire(hp)
        elif not hp.has_hooks and hp.name in self._active:
            for remove in self._active.pop(hp.name):
                remove()
            if not self._active:
                self.disengage()

    def engage(self) -> None:
        """Lens-owned clip_qkv (out of place, counted) while any hook is active or on request."""
        self._engaged += 1
        adapter = self.adapter
        if self._engaged == 1 and adapter.clip_qkv is not None:
            for i in range(adapter.num_layers):
                projections = (
                    ("q", adapter.q_proj),
                    ("k", adapter.k_proj),
                    ("v", adapter.v_proj),
                )
                for which, accessor in projections:
                    proj = self._mod(accessor, i)
                    self._clip_removers.append(self._tap(proj, "post", 0, self._clamp_cb(i, which)))
                self._refresh_attention(i)

    def disengage(self) -> None:
        self._engaged = max(0, self._engaged - 1)
        if self._engaged == 0 and self._clip_removers:
            for remove in self._clip_removers:
                remove()
            self._clip_removers.clear()
            for i in range(self.adapter.num_layers):
                self._refresh_attention(i)

    def _clamp_cb(self, layer: int, which: str) -> Callable:
        clip = float(self.adapter.clip_qkv)

        def cb(args, kwargs, output):
            counts = self._clip_counts.setdefault(layer, {})
            n = (output.abs() > clip).sum()
            counts[which] = counts[which] + n if which in counts else n
            return torch.clamp(
                output, min=-clip, max=clip
            )  # out of place: backward hooks stay valid

        return cb

    def _refresh_attention(self, i: int) -> None:
        """Give layer ``i``'s attention module the config it needs now (or its original back)."""
        adapter = self.adapter
        attn = self._mod(adapter.attention, i)
        sites = self._attn_sites.get(i)
        impl = LENS_ATTN_IMPL if sites else None
        clip_off = bool(self._engaged) and adapter.clip_qkv is not None
        orig = self._orig_configs.get(i, adapter.attention_config(attn))
        if impl is None and not clip_off:
            if i in self._orig_configs:
                adapter.set_attention_config(attn, self._orig_configs.pop(i))
            _CONTEXTS.pop(attn, None)
            return
        self._orig_configs[i] = orig
        # One private copy per (layer, overrides), made once: copying an HF config is slow.
        cache_key = (i, impl, clip_off)
        cached = self._config_copies.get(cache_key)
        if cached is None or cached[0] is not orig:
            cfg = adapter.attention_config_copy(
                orig, attn_implementation=impl, disable_clip_qkv=clip_off
            )
            cached = self._config_copies[cache_key] = (orig, cfg)
        adapter.set_attention_config(attn, cached[1])
        if sites:
            _CONTEXTS[attn] = _AttnContext(adapter, i, adapter.attn_implementation(orig), sites)
        else:
            _CONTEXTS.pop(attn, None)

    # ------------------------------------------------------------------ sites
    def _wire(self, hp: HookPoint) -> list[Callable[[], None]]:
        name, adapter, mod = hp.name, self.adapter, self._mod
        if name == "hook_embed":
            return [self._tap(mod(adapter.embed_tokens), "post", 10, self._out_cb(hp))]
        if name.startswith("ln_final."):
            return [self._norm_site(hp, mod(adapter.final_norm), name.endswith("hook_scale"))]
        _, layer_s, short = name.split(".", 2)
        i = int(layer_s)
        post = adapter.norm_placement == "post"
        if short in ATTENTION_SITES:
            self._attn_sites.setdefault(i, {})[short] = hp
            self._refresh_attention(i)

            def remove() -> None:
                self._attn_sites.get(i, {}).pop(short, None)
                if not self._attn_sites.get(i):
                    self._attn_sites.pop(i, None)
                self._refresh_attention(i)

            return [remove]
        if short == "attn.hook_result":
            return [self._tap(mod(adapter.o_proj, i), "post", 20, self._result_cb(hp, i))]
        if short in ("hook_q_input", "hook_k_input", "hook_v_input"):
            which = short[5]
            proj = {"q": adapter.q_proj, "k": adapter.k_proj, "v": adapter.v_proj}[which]
            # before the clip_qkv clamp (priority 0): the clamp applies to the recomputed output
            return [self._tap(mod(proj, i), "post", -10, self._split_input_cb(hp, i, which))]
        if short == "hook_mlp_in":
            module = mod(adapter.mlp, i) if post else mod(adapter.norm, i, NormSite.MLP_INPUT)
            return [self._tap(module, "pre", 20, self._in_cb(hp))]
        if short == "hook_resid_pre":
            return [self._tap(mod(adapter.layer, i), "pre", 10, self._in_cb(hp))]
        if short == "hook_resid_post":
            return [self._tap(mod(adapter.layer, i), "post", 10, self._out_cb(hp))]
        if short == "attn.hook_z":
            return [self._tap(mod(adapter.o_proj, i), "pre", 10, self._heads_in_cb(hp))]
        if short == "attn.hook_raw_out":
            return [self._tap(mod(adapter.attention, i), "post", 10, self._out_cb(hp))]
        if short == "mlp.hook_raw_out":
            return [self._tap(mod(adapter.mlp, i), "post", 10, self._out_cb(hp))]
        if short == "mlp.hook_pre":
            return [self._tap(mod(adapter.gate_proj, i), "post", 10, self._out_cb(hp))]
        if short == "mlp.hook_pre_linear":
            return [self._tap(mod(adapter.up_proj, i), "post", 10, self._out_cb(hp))]
        if short == "mlp.hook_post":
            return [self._tap(mod(adapter.down_proj, i), "pre", 10, self._in_cb(hp))]
        if short == "hook_attn_out":
            if post:
                return [
                    self._tap(
                        mod(adapter.norm, i, NormSite.ATTN_OUTPUT), "post", 10, self._out_cb(hp)
                    )
                ]
            return [self._tap(mod(adapter.attention, i), "post", 20, self._out_cb(hp))]
        if short == "hook_mlp_out":
            return [
                self._tap(self._mlp_out_module(i), "post", 10 if post else 20, self._out_cb(hp))
            ]
        if short == "hook_resid_mid":
            return self._resid_mid_site(hp, i)
        norm_sites = {
            "ln1": NormSite.ATTN_INPUT,
            "ln2": NormSite.MLP_INPUT,
            "ln1_post": NormSite.ATTN_OUTPUT,
            "ln2_post": NormSite.MLP_OUTPUT,
        }
        ln, _, leaf = short.partition(".")
        if ln in norm_sites:
            return [self._norm_site(hp, mod(adapter.norm, i, norm_sites[ln]), leaf == "hook_scale")]
        raise OlmokitError(f"lens: no site for hook {name!r}")  # pragma: no cover

    def _mlp_out_module(self, i: int) -> nn.Module:
        """The module whose output is what the MLP adds to the residual (post-norm: its norm)."""
        adapter, mod = self.adapter, self._mod
        if adapter.norm_placement == "post":
            return mod(adapter.norm, i, NormSite.MLP_OUTPUT)
        return mod(adapter.mlp, i)

    @staticmethod
    def _out_cb(hp: HookPoint) -> Callable:
        def cb(args, kwargs, output):
            value = _out(output)
            new = hp(value)
            return None if new is value else _with_out(output, new)

        return cb

    @staticmethod
    def _in_cb(hp: HookPoint) -> Callable:
        def cb(args, kwargs):
            value = _first(args, kwargs)
            new = hp(value)
            return None if new is value else _with_first(args, kwargs, new)

        return cb

    def _heads_in_cb(self, hp: HookPoint) -> Callable:
        n_heads, d_head = self.adapter.num_heads, self.adapter.head_dim

        def cb(args, kwargs):
            flat = _first(args, kwargs)
            view = flat.view(*flat.shape[:-1], n_heads, d_head)
            new = hp(view)
            if new is view:
                return None
            return _with_first(args, kwargs, new.reshape(*flat.shape))

        return cb

    def _result_cb(self, hp: HookPoint, i: int) -> Callable:
        """Per-head outputs ``z_h @ W_O[h]``; an edit replaces o_proj's output by their sum (+ bias)."""
        weights = AttnWeights(self.adapter, i)
        n_heads, d_head = self.adapter.num_heads, self.adapter.head_dim

        def cb(args, kwargs, output):
            z = _first(args, kwargs)
            w_o = weights.W_O
            result = torch.einsum(
                "...hd,hdm->...hm", z.view(*z.shape[:-1], n_heads, d_head), w_o.to(z.dtype)
            )
            new = hp(result)
            if new is result:
                return None
            out = new.sum(-2)
            bias = self._mod(self.adapter.o_proj, i).bias
            return out + bias if bias is not None else out

        return cb

    def _split_input_cb(self, hp: HookPoint, i: int, which: str) -> Callable:
        """A per-head copy of a projection's input; an edit recomputes each head from its own copy."""
        weights = AttnWeights(self.adapter, i)

        def cb(args, kwargs, output):
            x = _first(args, kwargs)
            w = {"q": weights.W_Q, "k": weights._W_K, "v": weights._W_V}[which]
            view = x.unsqueeze(-2).expand(*x.shape[:-1], w.shape[0], x.shape[-1])
            new = hp(view)
            if new is view:
                return None
            b = {"q": weights.b_Q, "k": weights._b_K, "v": weights._b_V}[which]
            heads = torch.einsum("...hm,hmd->...hd", new, w.to(new.dtype)) + b.to(new.dtype)
            return heads.flatten(-2)

        return cb

    def _norm_site(self, hp: HookPoint, norm: nn.Module, is_scale: bool) -> Callable[[], None]:
        if not is_scale:
            return self._tap(norm, "post", 10, self._out_cb(hp))
        adapter = self.adapter

        def cb(args, kwargs, output):
            x = _first(args, kwargs)
            scale = norm_scale(x, norm, adapter)
            new = hp(scale)
            if new is scale:
                return None
            return _with_out(
                output, apply_norm_with_scale(x, new, norm, adapter, out_dtype=_out(output).dtype)
            )

        return self._tap(norm, "post", 5, cb)

    def _resid_mid_site(self, hp: HookPoint, i: int) -> list[Callable[[], None]]:
        adapter, mod = self.adapter, self._mod
        if adapter.norm_placement == "post":
            mid_module = mod(adapter.mlp, i)
        else:
            mid_module = mod(adapter.norm, i, NormSite.MLP_INPUT)
        state = self._mid_state

        def on_input(args, kwargs):
            value = _first(args, kwargs)
            new = hp(value)
            if new is value:
                return None
            state[i] = [new, None]
            return _with_first(args, kwargs, new)

        def record_mlp_out(args, kwargs, output):
            if i in state:
                state[i][1] = _out(output)

        def rebuild_block_out(args, kwargs, output):
            # HF added the *unedited* residual; rebuild resid_post from the edited one, same op order.
            if i not in state:
                return None
            new_mid, mlp_out = state.pop(i)
            return _with_out(output, new_mid + mlp_out)

        return [
            self._tap(mid_module, "pre", 10, on_input),
            self._tap(self._mlp_out_module(i), "post", 90, record_mlp_out),
            self._tap(mod(adapter.layer, i), "post", 0, rebuild_block_out),
        ]
