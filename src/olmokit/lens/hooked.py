"""``HookedOlmo``: TransformerLens's ``HookedTransformer`` API on an unmodified HF OLMo v1/2/3 model.

Start here. ``HookedOlmo(model, tokenizer)`` (or ``HookedOlmo.from_pretrained(name)``) exposes what a
TransformerLens notebook uses: ``cfg`` with TL's field names, ``to_tokens``/``to_str_tokens`` with TL's
BOS rules, ``forward`` options (``return_type``, ``loss_per_token``, ``stop_at_layer``,
``start_at_layer``, ``attention_mask``, ``past_kv_cache``), ``generate`` with hooks active, weights
(``W_Q`` ... ``W_U``, ``blocks[i].attn.W_Q``, ``QK``/``OV`` as :class:`FactoredMatrix`), ``hook_dict``,
``run_with_cache``, ``run_with_hooks`` and the ``hooks()`` context manager. ``HookedTransformer`` is
the same class under TL's name.

The HF model is never copied or re-implemented: with no hooks, ``forward`` *is* HF's forward (same
attention implementation, same kernels, same logits, bit for bit). Hooks are wired into the HF modules
only while they exist (see :mod:`olmokit.lens.wiring`), and the ``hooks()`` context removes its hooks in
``finally``, so an exception inside a hook or a forward never leaves the model modified.

Semantics worth knowing (see ``docs/lens.md``, "Coming from TransformerLens"):

* ``hook_attn_out``/``hook_mlp_out`` are what is *added to the residual stream*: for post-norm OLMo-2/3
  that is the output of ``post_attention_layernorm``/``post_feedforward_layernorm``, not of the
  attention/MLP modules (those are ``attn.hook_raw_out``/``mlp.hook_raw_out``). So
  ``resid_pre + attn_out == resid_mid`` and ``resid_mid + mlp_out == resid_post`` hold exactly.
* ``attn.hook_q``/``hook_k`` are after q/k-norm (OLMo-2/3), clip_qkv (v1) and RoPE (TL's
  ``hook_rot_q``/``hook_rot_k``; those names are accepted too); ``hook_v`` has no RoPE. Keys and values
  have ``n_kv_heads`` heads (GQA), queries, z and patterns ``n_heads``.
* Requesting ``hook_pattern``/``hook_attn_scores`` runs eager attention math in that layer only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..eval.nll import IGNORE_INDEX, mean_nll, token_nll
from ..family import FamilyAdapter, get_adapter
from .cache import ActivationCache
from .cfg import HookedOlmoConfig, config_from_adapter
from .factored import FactoredMatrix
from .generate import GenerateMixin
from .hook_points import HookFn, HookPoint, LensHandle, NamesFilter, make_names_filter
from .names import HookSpec, hook_specs, optional_specs, resolve_name
from .planner import CachePlan, plan_cache
from .tokens import TokenMixin
from .weights import LAYER_WEIGHTS, AttnWeights, MlpWeights, layer_weight
from .wiring import Wiring

__all__ = ["HookedOlmo", "HookedTransformer"]

HookList = Sequence[tuple[str | Callable[[str], bool], HookFn]]


class _Container(nn.Module):
    """A node of the hook-point tree (``blocks``, ``blocks.3``, ``blocks.3.attn``); indexable by layer."""

    def __getitem__(self, i: int) -> nn.Module:
        return getattr(self, str(i))

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self._modules.values())


class _WeightContainer(_Container):
    """A container that also answers TL weight names (``blocks[i].attn.W_Q``, ``embed.W_E``)."""

    def __init__(self, weights: Any):
        super().__init__()
        self._weights = weights

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            weights = self.__dict__.get("_weights")
            if weights is None or name.startswith("__"):
                raise
            return getattr(weights, name)


class _EmbedWeights:
    def __init__(self, adapter: FamilyAdapter):
        self._adapter = adapter

    @property
    def W_E(self) -> torch.Tensor:
        """Token embeddings ``[d_vocab, d_model]`` (the HF embedding weight itself)."""
        return self._adapter.embed_tokens().weight


class _UnembedWeights:
    def __init__(self, adapter: FamilyAdapter):
        self._adapter = adapter

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding ``[d_model, d_vocab]`` (the lm_head weight, transposed view)."""
        return self._adapter.lm_head().weight.T

    @property
    def b_U(self) -> torch.Tensor:
        """Unembedding bias ``[d_vocab]``: OLMo has none, so zeros (as TL's OLMo conversion)."""
        head = self._adapter.lm_head()
        if head.bias is not None:
            return head.bias
        return torch.zeros(head.weight.shape[0], dtype=head.weight.dtype, device=head.weight.device)


class _StopForward(Exception):
    """Raised by the ``stop_at_layer`` hook to end a forward with the residual it caught."""

    def __init__(self, value: torch.Tensor):
        super().__init__("stop_at_layer")
        self.value = value


class HookedOlmo(TokenMixin, GenerateMixin, nn.Module):
    """TransformerLens's ``HookedTransformer`` API around an HF ``Olmo{,2,3}ForCausalLM``."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        default_prepend_bos: bool = True,
        model_name: str | None = None,
    ):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.adapter: FamilyAdapter = get_adapter(model)
        self._cfg: HookedOlmoConfig = config_from_adapter(
            self.adapter, model, tokenizer, model_name, default_prepend_bos
        )
        self.specs: dict[str, HookSpec] = hook_specs(self.adapter)
        self.hook_dict: dict[str, HookPoint] = {}
        a = self.adapter
        self.embed = _WeightContainer(_EmbedWeights(a))
        self.unembed = _WeightContainer(_UnembedWeights(a))
        self.blocks = _Container()
        for i in range(a.num_layers):
            block = _Container()
            block.add_module("attn", _WeightContainer(AttnWeights(a, i)))
            block.add_module("mlp", _WeightContainer(MlpWeights(a, i)))
            self.blocks.add_module(str(i), block)
        for name in self.specs:
            self._add_hook_point(name)
        self.wiring = Wiring(self.adapter)
        self._context_level = 0
        self.context_level = 0  # TL's public name of the same counter

    def _add_hook_point(self, name: str) -> None:
        hp = HookPoint(name, on_change=self._on_hook_change)
        self._attach(name, hp)
        self.hook_dict[name] = hp

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
    def from_pretrained(
        cls,
        name_or_path: str | None = None,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        center_unembed: bool = False,
        refactor_factored_attn_matrices: bool = False,
        fold_value_biases: bool = False,
        default_prepend_bos: bool = True,
        tokenizer: Any = None,
        device: str | torch.device | None = None,
        **load_kwargs: Any,
    ) -> HookedOlmo:
        """Load a model (default: the shipped zoo model) and its tokenizer, then wrap it.

        TL's weight-processing flags are accepted (default off, like TL's ``from_pretrained_no_processing``
        and its bridge): those that are exact for this OLMo generation are applied to the freshly
        loaded weights; the others warn, naming the flag and why (see :mod:`olmokit.lens.processing`).
        """
        from ..loading import load_model, load_tokenizer
        from .processing import process_weights

        if device is not None:
            load_kwargs.setdefault("device", device)
        model = load_model(name_or_path, **load_kwargs)
        if tokenizer is None:
            try:
                tokenizer = load_tokenizer(name_or_path)
            except (
                Exception
            ):  # a model directory without a tokenizer is still usable with token ids
                tokenizer = None
        process_weights(
            get_adapter(model),
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
            fold_value_biases=fold_value_biases,
        )
        return cls(
            model, tokenizer, default_prepend_bos=default_prepend_bos, model_name=name_or_path
        )

    @classmethod
    def from_pretrained_no_processing(
        cls, name_or_path: str | None = None, **kwargs: Any
    ) -> HookedOlmo:
        """TL's name for loading without weight processing (here the default)."""
        return cls.from_pretrained(name_or_path, **kwargs)

    def process_weights_(
        self,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        center_unembed: bool = False,
        refactor_factored_attn_matrices: bool = False,
        fold_value_biases: bool = False,
    ) -> HookedOlmo:
        """Apply TL's processing flags to the wrapped model in place (see ``from_pretrained``)."""
        from .processing import process_weights

        process_weights(
            self.adapter,
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
            fold_value_biases=fold_value_biases,
        )
        return self

    @property
    def cfg(self) -> HookedOlmoConfig:
        """TransformerLens-named config (attribute access; ``cfg["d_model"]`` also works)."""
        param = next(self.model.parameters())
        self._cfg.device, self._cfg.dtype = param.device, param.dtype
        return self._cfg

    def hook_names(self) -> list[str]:
        return list(self.hook_dict)

    def hook_points(self) -> list[HookPoint]:
        return list(self.hook_dict.values())

    @property
    def mod_dict(self) -> dict[str, nn.Module]:
        """Every module of the hook tree by name (hook points and their containers), as in TL."""
        return {n: m for n, m in self.named_modules() if n and not n.startswith("model")}

    @property
    def clip_counts(self) -> dict[int, dict[str, int]]:
        """Entries clipped by ``clip_qkv`` (OLMo v1) per layer in the last hooked or tracked forward."""
        return self.wiring.clip_counts()

    # ------------------------------------------------------------------ weights
    @property
    def W_E(self) -> torch.Tensor:
        return self.embed.W_E

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding ``[d_model, d_vocab]`` (the lm_head weight, transposed view)."""
        return self.adapter.lm_head().weight.T

    @property
    def b_U(self) -> torch.Tensor:
        return self.unembed.b_U

    @property
    def QK(self) -> FactoredMatrix:
        """``[n_layers, n_heads, d_model, d_model]`` factored ``W_Q @ W_K.T`` (no RoPE, no q/k-norm)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """``[n_layers, n_heads, d_model, d_model]`` factored ``W_V @ W_O``."""
        return FactoredMatrix(self.W_V, self.W_O)

    def tl_named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(TL name, tensor)`` for every weight in TL's layout (views where TL's layout allows)."""
        yield "embed.W_E", self.W_E
        for i in range(self.adapter.num_layers):
            for stacked, (kind, attr) in LAYER_WEIGHTS.items():
                if not stacked.startswith("_") or self.adapter.kv_group_size > 1:
                    yield f"blocks.{i}.{kind}.{attr}", layer_weight(self.adapter, kind, attr, i)
        yield "unembed.W_U", self.W_U
        yield "unembed.b_U", self.b_U

    # ------------------------------------------------------------------ tokens
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _as_tokens(self, tokens: torch.Tensor | str | list[str], prepend_bos: bool | None = None):
        return self._as_tokens_and_mask(tokens, prepend_bos)[0]

    def _as_tokens_and_mask(
        self,
        tokens: Any,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(tokens, str) or (
            isinstance(tokens, list) and (not tokens or isinstance(tokens[0], str))
        ):
            return self._tokenize(tokens, prepend_bos, padding_side)
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 1:
            tokens = tokens[None]
        return tokens.to(self._device()), None

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input: Any,
        return_type: str | None = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        start_at_layer: int | None = None,
        tokens: torch.Tensor | None = None,
        stop_at_layer: int | None = None,
        attention_mask: torch.Tensor | None = None,
        past_kv_cache: Any = None,
        track_clipping: bool = False,
    ) -> Any:
        """Logits ``[batch, pos, d_vocab]``, the loss, both, or ``None`` (``return_type``).

        ``input`` is text, a list of texts (padded; padded positions masked) or tokens; with
        ``start_at_layer`` it is the residual stream ``[batch, pos, d_model]`` entering that block (and
        ``tokens`` is needed for a loss). ``stop_at_layer=k`` runs blocks ``0..k-1`` and returns the
        residual entering block ``k`` (negative counts from the end). ``past_kv_cache`` is an HF cache
        object (see :meth:`generate`); it is updated in place.

        With no hooks anywhere this is exactly ``model(input_ids=tokens, use_cache=False).logits``.
        ``track_clipping`` records :attr:`clip_counts` even with no hooks (OLMo v1 with clip_qkv).
        """
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(
                f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}"
            )
        n_layers = self.adapter.num_layers
        if start_at_layer is None:
            toks, auto_mask = self._as_tokens_and_mask(input, prepend_bos, padding_side)
            if attention_mask is None:
                attention_mask = auto_mask
            hf_kwargs: dict[str, Any] = {"input_ids": toks}
            skip: list[int] = []
        else:
            start = start_at_layer % n_layers if start_at_layer < 0 else start_at_layer
            hf_kwargs = {"inputs_embeds": input}
            toks = tokens
            skip = list(range(start))
        if attention_mask is not None:
            hf_kwargs["attention_mask"] = attention_mask
            if bool((attention_mask == 0).any()):
                # TL offsets positions of left-padded rows so every prompt starts at position 0
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
                if past_kv_cache is not None:
                    positions = positions[:, -hf_kwargs.get("input_ids", input).shape[1] :]
                hf_kwargs["position_ids"] = positions
        if past_kv_cache is not None:
            hf_kwargs.update(self.adapter.kv_cache_kwargs(past_kv_cache), use_cache=True)
        else:
            hf_kwargs["use_cache"] = False

        with contextlib.ExitStack() as stack:
            if skip:
                stack.enter_context(self.adapter.bypass_layers(skip))
            if stop_at_layer is not None:
                stop = stop_at_layer + n_layers if stop_at_layer < 0 else stop_at_layer
                stack.enter_context(self._stop_at(stop))
            try:
                logits = self._run_hf(hf_kwargs, track_clipping)
            except _StopForward as stopped:
                return stopped.value
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        if toks is None:
            raise ValueError("a loss with start_at_layer needs tokens=...")
        loss = self.loss_fn(logits, toks, attention_mask=attention_mask, per_token=loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    def _run_hf(self, hf_kwargs: dict[str, Any], track_clipping: bool) -> torch.Tensor:
        wiring = self.wiring
        if not wiring.active_names and not track_clipping:
            return self.model(**hf_kwargs).logits
        if track_clipping:
            wiring.engage()
        wiring.begin_forward()
        try:
            return self.model(**hf_kwargs).logits
        finally:
            wiring.end_forward()
            if track_clipping:
                wiring.disengage()

    @contextlib.contextmanager
    def _stop_at(self, stop: int) -> Iterator[None]:
        """Abort the forward when block ``stop`` (or, past the last block, the final norm) starts."""
        a = self.adapter
        if not 0 <= stop <= a.num_layers:
            raise ValueError(f"stop_at_layer must be in [-{a.num_layers}, {a.num_layers}]")
        module = a.layer(stop) if stop < a.num_layers else a.final_norm()

        def hook(mod, args, kwargs):
            raise _StopForward(FamilyAdapter.module_input(args, kwargs))

        handle = module.register_forward_pre_hook(hook, with_kwargs=True, prepend=True)
        try:
            yield
        finally:
            handle.remove()

    def _forward_with_kv(
        self, tokens: torch.Tensor, mask: torch.Tensor | None, cache: Any
    ) -> tuple[torch.Tensor, Any]:
        """One generation step on HF's KV cache: logits of ``tokens`` and the updated cache."""
        kwargs: dict[str, Any] = {"input_ids": tokens, "use_cache": True}
        if cache is not None:
            kwargs.update(self.adapter.kv_cache_kwargs(cache))
        if mask is not None:
            kwargs["attention_mask"] = mask
            kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)[
                :, -tokens.shape[1] :
            ]
        wiring = self.wiring
        if wiring.active_names:
            wiring.begin_forward()
            try:
                out = self.model(**kwargs)
            finally:
                wiring.end_forward()
        else:
            out = self.model(**kwargs)
        return out.logits, self.adapter.output_kv_cache(out)

    def loss_fn(
        self,
        logits: torch.Tensor,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        per_token: bool = False,
    ) -> torch.Tensor:
        """Next-token NLL: ``[batch, pos - 1]`` with ``per_token``, else the mean over counted tokens.

        Padded positions (``attention_mask == 0``) are not predicted and not counted.
        """
        labels = (
            tokens
            if attention_mask is None
            else tokens.masked_fill(attention_mask == 0, IGNORE_INDEX)
        )
        if per_token:
            return token_nll(logits, labels)
        return mean_nll(logits, labels)

    # ------------------------------------------------------------------ hooks
    def _matching(self, name_or_filter: str | tuple | Callable[[str], bool]) -> list[HookPoint]:
        if callable(name_or_filter):
            return [hp for name, hp in self.hook_dict.items() if name_or_filter(name)]
        name = resolve_name(name_or_filter, self.adapter.num_layers, self.hook_dict)
        return [self.hook_dict[name]]

    def add_hook(
        self,
        name: str | tuple | Callable[[str], bool],
        hook: HookFn,
        dir: str = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> list[LensHandle]:
        """Attach ``hook`` to one hook point, or to every one whose name the predicate accepts."""
        if level is None and not is_permanent:
            level = self._context_level
        return [
            hp.add_hook(hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)
            for hp in self._matching(name)
        ]

    def add_perma_hook(
        self, name: str | tuple | Callable[[str], bool], hook: HookFn, dir: str = "fwd"
    ) -> list[LensHandle]:
        """A hook that survives ``reset_hooks()`` (remove with ``reset_hooks(including_permanent=True)``)."""
        return self.add_hook(name, hook, dir=dir, is_permanent=True)

    def reset_hooks(
        self,
        clear_contexts: bool = True,
        direction: str = "both",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        for hp in self.hook_dict.values():
            hp.remove_hooks(direction, including_permanent=including_permanent, level=level)
            if clear_contexts:
                hp.clear_context()

    def clear_contexts(self) -> None:
        for hp in self.hook_dict.values():
            hp.clear_context()

    @contextlib.contextmanager
    def hooks(
        self,
        fwd_hooks: HookList = (),
        bwd_hooks: HookList = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Iterator[HookedOlmo]:
        """Attach hooks for the duration of a ``with`` block; they are removed even on exceptions.

        Backward hooks fire during ``.backward()`` calls made *inside* the block.
        """
        self._context_level += 1
        self.context_level = self._context_level
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
                if clear_contexts:
                    self.clear_contexts()
            self._context_level -= 1
            self.context_level = self._context_level

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: HookList = (),
        bwd_hooks: HookList = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **model_kwargs: Any,
    ) -> Any:
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self(*model_args, **model_kwargs)

    # ------------------------------------------------------------------ TL switches
    def _set_optional(self, group: str, use: bool) -> None:
        names = optional_specs(self.adapter, group)
        for name, spec in names.items():
            if use and name not in self.hook_dict:
                self.specs[name] = spec
                self._add_hook_point(name)
            elif not use and name in self.hook_dict:
                hp = self.hook_dict.pop(name)
                hp.remove_hooks("both", including_permanent=True)
                self.specs.pop(name)
                *path, leaf = name.split(".")
                parent: nn.Module = self
                for part in path:
                    parent = parent._modules[part]
                del parent._modules[leaf]

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Add (or remove) ``blocks.i.attn.hook_result`` ``[batch, pos, n_heads, d_model]``: each
        head's output through ``o_proj`` (before OLMo-2/3's post-attention norm); edits change the
        attention output to the sum of the edited heads (plus any ``o_proj`` bias)."""
        self._set_optional("attn_result", use_attn_result)
        self._cfg.use_attn_result = use_attn_result

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Add (or remove) ``blocks.i.hook_q_input``/``hook_k_input``/``hook_v_input``
        ``[batch, pos, n_heads (k, v: n_kv_heads), d_model]``: a per-head copy of what the q/k/v
        projections read, so one head's input can be patched alone."""
        self._set_optional("split_qkv_input", use_split_qkv_input)
        self._cfg.use_split_qkv_input = use_split_qkv_input

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Add (or remove) ``blocks.i.hook_mlp_in`` ``[batch, pos, d_model]``: the MLP sublayer's input
        (v1: before its pre-norm; v2/3: the MLP's input), editable without changing the residual."""
        self._set_optional("mlp_in", use_hook_mlp_in)
        self._cfg.use_hook_mlp_in = use_hook_mlp_in

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
        *model_args: Any,
        names_filter: NamesFilter = None,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        return_cache_object: bool = True,
        backward_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        max_cache_bytes: int | None = None,
        fwd_hooks: HookList = (),
        **model_kwargs: Any,
    ) -> tuple[Any, ActivationCache | dict[str, torch.Tensor]]:
        """Run once and return ``(output, cache)`` with the activations the filter selects.

        ``output`` is whatever :meth:`forward` returns for ``model_kwargs`` (logits by default).
        ``max_cache_bytes`` refuses (before running) a run whose planned cache is larger. With
        ``incl_bwd`` the gradients of the cached activations of ``backward_fn(output)`` (default: the
        loss; TL: ``output.backward()`` of a scalar output) are stored as ``name + "_grad"``. Extra
        ``fwd_hooks`` run before caching (cache the edited values). Without ``incl_bwd`` the run is
        under ``torch.no_grad``. ``return_cache_object=False`` returns a plain dict.
        """
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if isinstance(names_filter, (list, tuple, set)):  # TL's other names for the same hooks
            n_layers = self.adapter.num_layers
            names_filter = [resolve_name(n, n_layers, self.hook_dict) for n in names_filter]
        keep = make_names_filter(names_filter, self.hook_dict)
        names = [n for n in self.hook_dict if keep(n)]
        if max_cache_bytes is not None:
            first = model_args[0] if model_args else model_kwargs.get("input")
            toks = self._as_tokens_and_mask(first, model_kwargs.get("prepend_bos"))[0]
            self.plan_cache(toks, names).check(max_cache_bytes)
        store: dict[str, torch.Tensor] = {}

        def save(key: str) -> HookFn:
            def fn(x: torch.Tensor, hook: HookPoint) -> None:
                x = x.detach()
                store[key] = x.to(device) if device is not None else x

            return fn

        cache_hooks = [(n, save(n)) for n in names]
        bwd = [(n, save(n + "_grad")) for n in names] if incl_bwd else []
        grad_ctx = contextlib.nullcontext() if incl_bwd else torch.no_grad()
        with (
            grad_ctx,
            self.hooks(list(fwd_hooks) + cache_hooks, bwd, reset_hooks_end, clear_contexts),
        ):
            out = self(*model_args, **model_kwargs)
            if incl_bwd:
                if backward_fn is not None:
                    target = backward_fn(out)
                elif isinstance(out, torch.Tensor) and out.dim() == 0:
                    target = out
                else:
                    first = model_args[0] if model_args else model_kwargs["input"]
                    toks = self._as_tokens_and_mask(first, model_kwargs.get("prepend_bos"))[0]
                    target = self._loss(out, toks)
                target.backward()
        if not return_cache_object:
            if remove_batch_dim:
                store = {k: v[0] for k, v in store.items()}
            return out, store
        cache = ActivationCache(store, self.adapter, model=self)
        if remove_batch_dim:
            cache = cache.remove_batch_dim()
        return out, cache

    @staticmethod
    def _loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return mean_nll(logits, tokens)


def _stacked(kind: str, attr: str) -> property:
    def get(self: HookedOlmo) -> torch.Tensor:
        n = self.adapter.num_layers
        return torch.stack([layer_weight(self.adapter, kind, attr, i) for i in range(n)])

    get.__doc__ = f"``{attr}`` of every layer stacked on a new first dimension (a copy, as in TL)."
    return property(get)


for _name, (_kind, _attr) in LAYER_WEIGHTS.items():
    setattr(HookedOlmo, _name, _stacked(_kind, _attr))

#: TransformerLens's class name, so ``from olmokit.lens import HookedTransformer`` notebooks run.
HookedTransformer = HookedOlmo
