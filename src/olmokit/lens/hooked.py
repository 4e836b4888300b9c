"""``HookedOlmo``: TransformerLens-style hooks and caching on an unmodified HF OLMo v1/2/3 model.

Start here. ``HookedOlmo(model)`` (or ``HookedOlmo.from_pretrained()`` for the zoo model) exposes
``hook_dict`` (name → :class:`HookPoint`), ``run_with_cache``, ``run_with_hooks``, the ``hooks()``
context manager and ``plan_cache``. The HF model is never copied or re-implemented: with no hooks,
``forward`` *is* HF's forward (same attention implementation, same kernels, same logits, bit for bit).
Hooks are wired into the HF modules only while they exist (see :mod:`olmokit.lens.wiring`), and the
``hooks()`` context removes its hooks in ``finally``, so an exception inside a hook or a forward never
leaves the model modified.

Semantics worth knowing (see ``docs/lens.md``):

* ``hook_attn_out``/``hook_mlp_out`` are what is *added to the residual stream*: for post-norm OLMo-2/3
  that is the output of ``post_attention_layernorm``/``post_feedforward_layernorm``, not of the
  attention/MLP modules (those are ``attn.hook_raw_out``/``mlp.hook_raw_out``). So
  ``resid_pre + attn_out == resid_mid`` and ``resid_mid + mlp_out == resid_post`` hold exactly.
* ``attn.hook_q``/``hook_k`` are after q/k-norm (OLMo-2/3), clip_qkv (v1) and RoPE; ``hook_v`` has no
  RoPE. Keys and values have ``n_kv_heads`` heads (GQA), queries, z and patterns ``n_heads``.
* Requesting ``hook_pattern``/``hook_attn_scores`` runs eager attention math in that layer only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..eval.nll import mean_nll
from ..family import FamilyAdapter, get_adapter
from .cache import ActivationCache
from .hook_points import HookFn, HookPoint, LensHandle, NamesFilter, make_names_filter
from .names import HookSpec, hook_specs, resolve_name
from .planner import CachePlan, plan_cache
from .wiring import Wiring

__all__ = ["HookedOlmo"]

HookList = Sequence[tuple[str | Callable[[str], bool], HookFn]]


class _Container(nn.Module):
    """A node of the hook-point tree (``blocks``, ``blocks.3``, ``blocks.3.attn``); indexable by layer."""

    def __getitem__(self, i: int) -> nn.Module:
        return getattr(self, str(i))


class HookedOlmo(nn.Module):
    """Hook points with TransformerLens names around an HF ``Olmo{,2,3}ForCausalLM``."""

    def __init__(self, model: nn.Module, tokenizer: Any = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.adapter: FamilyAdapter = get_adapter(model)
        self.specs: dict[str, HookSpec] = hook_specs(self.adapter)
        self.hook_dict: dict[str, HookPoint] = {}
        for name in self.specs:
            hp = HookPoint(name, on_change=self._on_hook_change)
            self._attach(name, hp)
            self.hook_dict[name] = hp
        self.wiring = Wiring(self.adapter)
        self._context_level = 0

    def _attach(self, name: str, hp: HookPoint) -> None:
        parent: nn.Module = self
        *path, leaf = name.split(".")
        for part in path:
            child = parent._modules.get(part)
            if child is None:
                child = _Container()
                parent.add_module(part, child)
            parent = child
        parent.add_module(leaf, hp)

    def _on_hook_change(self, hp: HookPoint) -> None:
        self.wiring.set_active(hp)

    # ------------------------------------------------------------------ construction & info
    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, **load_kwargs: Any) -> HookedOlmo:
        """Load a model (default: the shipped zoo model) and its tokenizer, then wrap it."""
        from ..loading import load_model, load_tokenizer

        model = load_model(name_or_path, **load_kwargs)
        try:
            tokenizer = load_tokenizer(name_or_path)
        except Exception:  # a model directory without a tokenizer is still usable with token ids
            tokenizer = None
        return cls(model, tokenizer)

    @property
    def cfg(self) -> dict[str, Any]:
        """TransformerLens-style sizes: n_layers, d_model, n_heads, n_kv_heads, d_head, d_mlp, d_vocab."""
        a = self.adapter
        return {
            "n_layers": a.num_layers,
            "d_model": a.hidden_size,
            "n_heads": a.num_heads,
            "n_kv_heads": a.num_kv_heads,
            "d_head": a.head_dim,
            "d_mlp": a.intermediate_size,
            "d_vocab": a.vocab_size,
            "generation": a.generation,
            "norm_placement": a.norm_placement,
        }

    def hook_names(self) -> list[str]:
        return list(self.hook_dict)

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding ``[d_model, d_vocab]`` (the lm_head weight, transposed view)."""
        return self.adapter.lm_head().weight.T

    @property
    def clip_counts(self) -> dict[int, dict[str, int]]:
        """Entries clipped by ``clip_qkv`` (OLMo v1) per layer in the last hooked or tracked forward."""
        return self.wiring.clip_counts()

    # ------------------------------------------------------------------ tokens
    def to_tokens(self, text: str | list[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise ValueError("no tokenizer: pass token ids, or build HookedOlmo(model, tokenizer)")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or any(t == "" for t in texts):
            # zero tokens would fail deep inside HF's forward; whitespace is a valid prompt
            raise ConfigError("empty prompt: give the text the model should read")
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        if len({len(x) for x in ids}) != 1:
            raise ValueError(
                "prompts tokenize to different lengths; pass token ids with an attention mask"
            )
        return torch.tensor(ids, dtype=torch.long, device=self._device())

    def to_str_tokens(self, tokens: torch.Tensor | str) -> list[str]:
        if isinstance(tokens, str):
            tokens = self.to_tokens(tokens)[0]
        if tokens.dim() > 1:
            tokens = tokens[0]
        return [self.tokenizer.decode([int(t)]) for t in tokens]

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _as_tokens(self, tokens: torch.Tensor | str | list[str]) -> torch.Tensor:
        if isinstance(tokens, (str, list)):
            tokens = self.to_tokens(tokens)
        if tokens.dim() == 1:
            tokens = tokens[None]
        return tokens

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        tokens: torch.Tensor | str | list[str],
        attention_mask: torch.Tensor | None = None,
        return_type: str | None = "logits",
        track_clipping: bool = False,
    ) -> torch.Tensor | None:
        """Logits ``[batch, pos, d_vocab]`` (or the mean next-token ``"loss"``, or ``None``).

        With no hooks anywhere this is exactly ``model(input_ids=tokens, use_cache=False).logits``.
        ``track_clipping`` records :attr:`clip_counts` even with no hooks (OLMo v1 with clip_qkv).
        """
        tokens = self._as_tokens(tokens)
        wiring = self.wiring
        if not wiring.active_names and not track_clipping:
            logits = self.model(
                input_ids=tokens, attention_mask=attention_mask, use_cache=False
            ).logits
        else:
            if track_clipping:
                wiring.engage()
            wiring.begin_forward()
            try:
                logits = self.model(
                    input_ids=tokens, attention_mask=attention_mask, use_cache=False
                ).logits
            finally:
                wiring.end_forward()
                if track_clipping:
                    wiring.disengage()
        if return_type == "logits":
            return logits
        if return_type == "loss":
            return mean_nll(logits, tokens)
        if return_type is None:
            return None
        raise ValueError(f"return_type must be 'logits', 'loss' or None, got {return_type!r}")

    # ------------------------------------------------------------------ hooks
    def _matching(self, name_or_filter: str | tuple | Callable[[str], bool]) -> list[HookPoint]:
        if callable(name_or_filter):
            return [hp for name, hp in self.hook_dict.items() if name_or_filter(name)]
        name = resolve_name(name_or_filter, self.adapter.num_layers)
        if name not in self.hook_dict:
            raise ValueError(f"unknown hook name {name!r}; see HookedOlmo.hook_names()")
        return [self.hook_dict[name]]

    def add_hook(
        self,
        name: str | tuple | Callable[[str], bool],
        hook: HookFn,
        dir: str = "fwd",
        is_permanent: bool = False,
    ) -> list[LensHandle]:
        """Attach ``hook`` to one hook point, or to every one whose name the predicate accepts."""
        level = None if is_permanent else self._context_level
        return [
            hp.add_hook(hook, dir=dir, is_permanent=is_permanent, level=level)
            for hp in self._matching(name)
        ]

    def reset_hooks(self, including_permanent: bool = False) -> None:
        for hp in self.hook_dict.values():
            hp.remove_hooks("both", including_permanent=including_permanent)

    @contextlib.contextmanager
    def hooks(
        self,
        fwd_hooks: HookList = (),
        bwd_hooks: HookList = (),
        reset_hooks_end: bool = True,
    ) -> Iterator[HookedOlmo]:
        """Attach hooks for the duration of a ``with`` block; they are removed even on exceptions.

        Backward hooks fire during ``.backward()`` calls made *inside* the block.
        """
        self._context_level += 1
        handles: list[LensHandle] = []
        try:
            for name, fn in fwd_hooks:
                handles += self.add_hook(name, fn, dir="fwd")
            for name, fn in bwd_hooks:
                handles += self.add_hook(name, fn, dir="bwd")
            yield self
        finally:
            if reset_hooks_end:
                for handle in handles:
                    handle.remove()
            self._context_level -= 1

    def run_with_hooks(
        self,
        tokens: torch.Tensor | str | list[str],
        fwd_hooks: HookList = (),
        bwd_hooks: HookList = (),
        reset_hooks_end: bool = True,
        **forward_kwargs: Any,
    ) -> torch.Tensor | None:
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end=reset_hooks_end):
            return self(tokens, **forward_kwargs)

    # ------------------------------------------------------------------ caching
    def plan_cache(
        self,
        tokens_or_shape: torch.Tensor | tuple[int, int],
        names_filter: NamesFilter = None,
        dtype: torch.dtype | None = None,
    ) -> CachePlan:
        """Bytes a ``run_with_cache`` with this filter would store, computed before running."""
        shape = (
            tuple(tokens_or_shape.shape)
            if isinstance(tokens_or_shape, torch.Tensor)
            else tuple(tokens_or_shape)
        )
        if len(shape) == 1:
            shape = (1, shape[0])
        dtype = dtype or next(self.model.parameters()).dtype
        keep = make_names_filter(names_filter, self.hook_dict)
        return plan_cache(
            self.specs, self.cfg, shape[0], shape[1], dtype, [n for n in self.hook_dict if keep(n)]
        )

    def run_with_cache(
        self,
        tokens: torch.Tensor | str | list[str],
        names_filter: NamesFilter = None,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        backward_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        max_cache_bytes: int | None = None,
        fwd_hooks: HookList = (),
        **forward_kwargs: Any,
    ) -> tuple[torch.Tensor | None, ActivationCache]:
        """Run once and return ``(logits, cache)`` with the activations the filter selects.

        ``max_cache_bytes`` refuses (before running) a run whose planned cache is larger. With
        ``incl_bwd`` the gradients of the cached activations of ``backward_fn(logits)`` (default: the
        loss) are stored as ``name + "_grad"``. Extra ``fwd_hooks`` run before caching (cache the
        edited values). Without ``incl_bwd`` the run is under ``torch.no_grad``.
        """
        tokens = self._as_tokens(tokens)
        keep = make_names_filter(names_filter, self.hook_dict)
        names = [n for n in self.hook_dict if keep(n)]
        if max_cache_bytes is not None:
            self.plan_cache(tokens, names).check(max_cache_bytes)
        store: dict[str, torch.Tensor] = {}

        def save(key: str) -> HookFn:
            def fn(x: torch.Tensor, hook: HookPoint) -> None:
                x = x.detach()
                store[key] = x.to(device) if device is not None else x

            return fn

        cache_hooks = [(n, save(n)) for n in names]
        bwd = [(n, save(n + "_grad")) for n in names] if incl_bwd else []
        grad_ctx = contextlib.nullcontext() if incl_bwd else torch.no_grad()
        with grad_ctx, self.hooks(list(fwd_hooks) + cache_hooks, bwd):
            logits = self(tokens, **forward_kwargs)
            if incl_bwd:
                target = (
                    backward_fn(logits) if backward_fn is not None else self._loss(logits, tokens)
                )
                target.backward()
        cache = ActivationCache(store, self.adapter)
        if remove_batch_dim:
            cache = cache.remove_batch_dim()
        return logits, cache

    @staticmethod
    def _loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return mean_nll(logits, tokens)
