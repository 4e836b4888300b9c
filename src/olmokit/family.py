"""The OLMo family adapter: the one place that knows where layers, heads, norms and embeddings live.

Every olmokit tool (JoLA, merging, memory, lens) asks this module instead of hard-coding module paths.
The three generations differ in ways that silently break code written for one of them:

========================  ===========================  ===========================  ===========================
                          OLMo v1 (``olmo``)           OLMo-2 (``olmo2``)           OLMo-3 (``olmo3``)
========================  ===========================  ===========================  ===========================
norm                      LayerNorm, *no parameters*   RMSNorm (weight)             RMSNorm (weight)
norm placement            pre-norm                     post-norm                    post-norm
``post_attention_``       the **pre-MLP** input norm   a true post-attention norm   a true post-attention norm
``layernorm``
q/k norm                  none                         RMSNorm over the whole       same as OLMo-2
                                                       projection, before the
                                                       head split (GQA: k is
                                                       n_kv·head_dim wide)
``clip_qkv``              optional (in-place clamp)    none                         none
attention                 full causal                  full causal                  sliding window on 3 of 4
                                                                                    layers (``layer_types``)
========================  ===========================  ===========================  ===========================

This module holds all of olmokit's knowledge of how HF ``transformers`` lays OLMo out, in three parts:

* the per-generation facts, as data (:data:`FAMILIES`): module names, norm type and placement, q/k norm,
  ``clip_qkv``, sliding windows, the HF config class, transformers versions known to compute a
  generation wrongly;
* :class:`FamilyAdapter`: accessors for a loaded model (layers, heads, norms, embeddings, projections)
  and *parameter units* derived from the model's real ``state_dict``;
* the HF runtime conventions that code hooking a running model needs (call/return shapes of modules,
  the attention-function registry, the config fields that select the attention kernel), so that a
  transformers upgrade is fixed here and nowhere else.

``tests/test_family_boundary.py`` checks that no other module imports ``transformers.models.olmo*`` or
names an OLMo submodule.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import torch
from packaging.version import InvalidVersion, Version
from torch import nn

from .errors import FamilyError

__all__ = [
    "FAMILIES",
    "FamilySpec",
    "FamilyAdapter",
    "NormSite",
    "ParameterUnit",
    "get_adapter",
    "get_family",
    "register_family",
    "supported_model_types",
    "check_transformers_version",
]


class NormSite(str, Enum):
    """Where a per-layer norm sits relative to its sublayer."""

    ATTN_INPUT = "attn_input"
    """Pre-norm: normalises the residual stream before attention (OLMo v1 ``input_layernorm``)."""
    MLP_INPUT = "mlp_input"
    """Pre-norm: normalises the residual before the MLP (OLMo v1 ``post_attention_layernorm``!)."""
    ATTN_OUTPUT = "attn_output"
    """Post-norm: normalises the attention output before it is added (OLMo-2/3 ``post_attention_layernorm``)."""
    MLP_OUTPUT = "mlp_output"
    """Post-norm: normalises the MLP output before it is added (OLMo-2/3 ``post_feedforward_layernorm``)."""


@dataclass(frozen=True)
class FamilySpec:
    """Static facts about one OLMo generation, as HF ``transformers`` lays it out."""

    model_type: str  #: ``config.model_type``
    generation: int  #: 1, 2 or 3
    causal_lm_class: str  #: the ``transformers`` class name
    config_class: str  #: the ``transformers`` config class name (zoo presets build configs from it)
    display_name: str
    norm_type: str  #: "layernorm_nonparametric" or "rmsnorm"
    norm_placement: str  #: "pre" or "post"
    layer_norms: Mapping[NormSite, str]  #: norm site -> module name inside a decoder layer
    has_qk_norm: bool
    supports_clip_qkv: bool
    has_sliding_window: bool
    #: eps of a norm that ignores the config (HF's OlmoLayerNorm hard-codes 1e-5); ``None``: the norm
    #: module's own ``variance_epsilon`` (HF's RMSNorm), read through :meth:`FamilyAdapter.norm_eps`
    fixed_norm_eps: float | None = None
    #: (first bad, first good again) transformers versions that compute this family wrongly
    broken_transformers: tuple[tuple[str, str], ...] = ()
    min_transformers: str = "4.40.0"
    #: config key of the norm epsilon; ``None`` when the generation has none (OLMo v1's fixed 1e-5)
    norm_eps_key: str | None = None
    #: with sliding-window attention, every this-many-th layer attends fully (OLMo-3: layers 3, 7, ...)
    full_attention_every: int | None = None
    # Module layout (shared by all three generations today, kept as data so a Llama-layout family
    # can be registered later without touching any tool).
    base_model_attr: str = "model"
    layers_attr: str = "layers"
    embed_attr: str = "embed_tokens"
    final_norm_attr: str = "norm"
    rotary_attr: str = "rotary_emb"
    lm_head_attr: str = "lm_head"
    attn_attr: str = "self_attn"
    mlp_attr: str = "mlp"
    attn_projections: Mapping[str, str] = field(
        default_factory=lambda: {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
    )
    qk_norms: Mapping[str, str] = field(default_factory=lambda: {"q": "q_norm", "k": "k_norm"})
    mlp_projections: Mapping[str, str] = field(
        default_factory=lambda: {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
    )


_OLMO1 = FamilySpec(
    model_type="olmo",
    generation=1,
    causal_lm_class="OlmoForCausalLM",
    config_class="OlmoConfig",
    display_name="OLMo v1",
    norm_type="layernorm_nonparametric",
    norm_placement="pre",
    layer_norms={
        NormSite.ATTN_INPUT: "input_layernorm",
        NormSite.MLP_INPUT: "post_attention_layernorm",
    },
    has_qk_norm=False,
    supports_clip_qkv=True,
    has_sliding_window=False,
    fixed_norm_eps=1e-5,
    min_transformers="4.40.0",
)
_OLMO2 = FamilySpec(
    model_type="olmo2",
    generation=2,
    causal_lm_class="Olmo2ForCausalLM",
    config_class="Olmo2Config",
    display_name="OLMo-2",
    norm_type="rmsnorm",
    norm_placement="post",
    layer_norms={
        NormSite.ATTN_OUTPUT: "post_attention_layernorm",
        NormSite.MLP_OUTPUT: "post_feedforward_layernorm",
    },
    has_qk_norm=True,
    supports_clip_qkv=False,
    has_sliding_window=False,
    min_transformers="4.47.0",
    norm_eps_key="rms_norm_eps",
)
#: OLMo-3 is OLMo-2's layout plus sliding-window attention on some layers.
_OLMO3 = replace(
    _OLMO2,
    model_type="olmo3",
    generation=3,
    causal_lm_class="Olmo3ForCausalLM",
    config_class="Olmo3Config",
    display_name="OLMo-3",
    has_sliding_window=True,
    full_attention_every=4,
    # transformers 5.0-5.12.1 feed YaRN-scaled RoPE to the sliding-window layers too (PR #39847);
    # 4.57.0 is yanked on PyPI.
    broken_transformers=(("4.57.0", "4.57.1"), ("5.0.0", "5.13.0")),
    min_transformers="4.57.1",
)

#: One entry per supported ``model_type``. Tools never branch on the model type themselves; they read
#: these facts through :class:`FamilyAdapter`.
FAMILIES: dict[str, FamilySpec] = {s.model_type: s for s in (_OLMO1, _OLMO2, _OLMO3)}

_CLASS_TO_TYPE = {spec.causal_lm_class: mt for mt, spec in FAMILIES.items()}

#: Keyword names under which HF modules receive their hidden-state input.
_INPUT_KWARGS = ("hidden_states", "input", "x")


def register_family(spec: FamilySpec) -> None:
    """Register another family whose HF layout matches an existing entry's (a Llama-layout model, say).

    Only do this for a family whose layout facts you have verified; every tool trusts these facts.
    ``spec.causal_lm_class`` must name a class exported by ``transformers``.
    """
    import transformers

    if not hasattr(transformers, spec.causal_lm_class):
        raise FamilyError(f"transformers has no class {spec.causal_lm_class!r}")
    FAMILIES[spec.model_type] = spec
    _CLASS_TO_TYPE[spec.causal_lm_class] = spec.model_type


def supported_model_types() -> list[str]:
    """The ``model_type`` values olmokit supports."""
    return list(FAMILIES)


def _supported_text() -> str:
    return ", ".join(f"{s.causal_lm_class} (model_type '{mt}')" for mt, s in FAMILIES.items())


def _release(version: str) -> Version:
    """The release a version string names (``5.13.0`` for ``5.13.0.dev0+local``).

    Pre-, dev- and local builds count as their release, so a source build of a fixed release passes;
    a string ``packaging`` cannot parse falls back to its leading dotted numbers.
    """
    try:
        return Version(Version(version).base_version)
    except InvalidVersion:
        leading = re.match(r"\d+(?:\.\d+)*", version.strip())
        if leading is None:
            raise FamilyError(f"cannot read the transformers version {version!r}") from None
        return Version(leading.group(0))


def check_transformers_version(spec: FamilySpec, version: str | None = None) -> None:
    """Refuse to run a family on a ``transformers`` version known to compute it wrongly."""
    if version is None:
        import transformers

        version = transformers.__version__
    v = _release(version)
    if v < _release(spec.min_transformers):
        raise FamilyError(
            f"{spec.display_name} needs transformers>={spec.min_transformers}; you have {version}. "
            "Run: pip install -U 'transformers>=5.13'"
        )
    for bad, good in spec.broken_transformers:
        if _release(bad) <= v < _release(good):
            raise FamilyError(
                f"transformers {version} computes {spec.display_name} incorrectly (RoPE/YaRN is applied "
                f"to sliding-window layers in {bad} up to but excluding {good}). "
                "Run: pip install -U 'transformers>=5.13'"
            )


def get_family(obj: Any) -> FamilySpec:
    """The :class:`FamilySpec` of a model, config, ``model_type`` string or class name.

    Raises :class:`FamilyError` naming the supported classes for anything else.
    """
    model_type = None
    if isinstance(obj, str):
        model_type = obj if obj in FAMILIES else _CLASS_TO_TYPE.get(obj)
        label = repr(obj)
    elif isinstance(obj, nn.Module):
        # isinstance, so subclasses (e.g. a user's wrapper class) are recognised too.
        model_type = next(
            (mt for mt, cls in _causal_lm_classes().items() if isinstance(obj, cls)), None
        )
        label = f"{type(obj).__name__} (model_type {getattr(getattr(obj, 'config', None), 'model_type', None)!r})"
    else:
        mt = getattr(obj, "model_type", None)
        archs = getattr(obj, "architectures", None) or []
        model_type = (
            mt
            if mt in FAMILIES
            else next((_CLASS_TO_TYPE[a] for a in archs if a in _CLASS_TO_TYPE), None)
        )
        label = f"{type(obj).__name__} (model_type {mt!r})"
    if model_type is None:
        raise FamilyError(f"unsupported model {label}; olmokit supports: {_supported_text()}")
    return FAMILIES[model_type]


def _causal_lm_classes() -> dict[str, type]:
    import transformers

    return {mt: getattr(transformers, s.causal_lm_class) for mt, s in FAMILIES.items()}


@dataclass(frozen=True)
class ParameterUnit:
    """A named group of tensors that belong together (one module's weight and bias, say).

    Units are what merging swaps and what evolution strategies perturb; they are derived from a real
    ``state_dict`` so a tensor the templates did not foresee is still covered (never silently dropped).
    """

    name: str  #: stable id, e.g. ``layers.3.attn.q_proj`` or ``embed_tokens``
    module: str  #: dotted module path in the model, e.g. ``model.layers.3.self_attn.q_proj``
    keys: tuple[str, ...]  #: state_dict keys of this unit
    layer: int | None  #: decoder layer index, ``None`` for boundary units
    block: str  #: "attention", "mlp", "norm" or "boundary"
    role: str  #: "q_proj", "q_norm", "post_attention_layernorm", "embed_tokens", ... or "other"
    tied_to: str | None = None  #: for a tied ``lm_head``: the unit it shares its tensor with

    @property
    def is_norm(self) -> bool:
        return self.block == "norm" or self.role in ("q_norm", "k_norm", "final_norm")


class FamilyAdapter:
    """Accessors for one OLMo model (or, without a model, for its config only).

    >>> adapter = FamilyAdapter.for_model(model)
    >>> adapter.o_proj(3)             # the nn.Linear whose input is the concatenated head outputs
    >>> adapter.layer_types           # ["sliding_attention", ..., "full_attention", ...] (OLMo-3)
    >>> adapter.units()               # parameter units covering every state_dict key once
    """

    def __init__(self, spec: FamilySpec, config: Any, model: nn.Module | None = None):
        self.spec = spec
        self.config = config
        self.model = model

    # ---------------------------------------------------------------- construction
    @classmethod
    def for_model(cls, model: nn.Module, check_version: bool = True) -> FamilyAdapter:
        spec = get_family(model)
        if check_version:
            check_transformers_version(spec)
        return cls(spec, model.config, model)

    @classmethod
    def for_config(cls, config: Any, check_version: bool = True) -> FamilyAdapter:
        spec = get_family(config)
        if check_version:
            check_transformers_version(spec)
        return cls(spec, config, None)

    def _require_model(self) -> nn.Module:
        if self.model is None:
            raise FamilyError("this adapter was built from a config only; pass a loaded model")
        return self.model

    # ---------------------------------------------------------------- sizes and layout
    @property
    def model_type(self) -> str:
        return self.spec.model_type

    @property
    def generation(self) -> int:
        return self.spec.generation

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def intermediate_size(self) -> int:
        return int(self.config.intermediate_size)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def num_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def num_kv_heads(self) -> int:
        kv = getattr(self.config, "num_key_value_heads", None)
        return int(kv if kv is not None else self.num_heads)

    @property
    def head_dim(self) -> int:
        # An explicit head_dim wins over hidden/heads (the JoLA reference got this wrong).
        hd = getattr(self.config, "head_dim", None)
        return int(hd if hd else self.hidden_size // self.num_heads)

    @property
    def kv_group_size(self) -> int:
        """Query heads per KV head (1 for MHA)."""
        return self.num_heads // self.num_kv_heads

    @property
    def clip_qkv(self) -> float | None:
        clip = getattr(self.config, "clip_qkv", None) if self.spec.supports_clip_qkv else None
        return float(clip) if clip is not None else None

    @property
    def layer_types(self) -> list[str]:
        """Per-layer attention type: "full_attention" or "sliding_attention"."""
        types = getattr(self.config, "layer_types", None) if self.spec.has_sliding_window else None
        return list(types) if types else ["full_attention"] * self.num_layers

    @property
    def sliding_window(self) -> int | None:
        if not self.spec.has_sliding_window or "sliding_attention" not in self.layer_types:
            return None
        return int(self.config.sliding_window)

    def sliding_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == "sliding_attention"]

    @property
    def tied_embeddings(self) -> bool:
        if self.model is not None:
            emb, head = self.embed_tokens().weight, self.lm_head().weight
            return emb.data_ptr() == head.data_ptr()
        return bool(getattr(self.config, "tie_word_embeddings", False))

    @property
    def norm_placement(self) -> str:
        return self.spec.norm_placement

    @property
    def norm_sites(self) -> list[NormSite]:
        return list(self.spec.layer_norms)

    # ---------------------------------------------------------------- module paths
    def layer_path(self, i: int) -> str:
        self._check_layer(i)
        return f"{self.spec.base_model_attr}.{self.spec.layers_attr}.{i}"

    def module_path(self, i: int, role: str) -> str:
        """Dotted path of a per-layer module by role: "layer" (the decoder layer itself), "attn",
        "mlp", "q_proj".."o_proj", "q_norm"/"k_norm", "gate_proj"/"up_proj"/"down_proj", or a
        :class:`NormSite` value."""
        s = self.spec
        base = self.layer_path(i)
        if role == "layer":
            return base
        if role == "attn":
            return f"{base}.{s.attn_attr}"
        if role == "mlp":
            return f"{base}.{s.mlp_attr}"
        if role in s.attn_projections.values():
            return f"{base}.{s.attn_attr}.{role}"
        if role in s.qk_norms.values():
            if not s.has_qk_norm:
                raise FamilyError(f"{s.display_name} has no {role}")
            return f"{base}.{s.attn_attr}.{role}"
        if role in s.mlp_projections.values():
            return f"{base}.{s.mlp_attr}.{role}"
        try:
            site = NormSite(role)
        except ValueError:
            site = None
        if site is not None:
            if site not in s.layer_norms:
                raise FamilyError(
                    f"{s.display_name} has no {site.value} norm; it has {[n.value for n in s.layer_norms]}"
                )
            return f"{base}.{s.layer_norms[site]}"
        raise FamilyError(f"unknown module role {role!r}")

    def boundary_path(self, role: str) -> str:
        s = self.spec
        paths = {
            "embed_tokens": f"{s.base_model_attr}.{s.embed_attr}",
            "final_norm": f"{s.base_model_attr}.{s.final_norm_attr}",
            "rotary_emb": f"{s.base_model_attr}.{s.rotary_attr}",
            "lm_head": s.lm_head_attr,
            "decoder": s.base_model_attr,
        }
        if role not in paths:
            raise FamilyError(f"unknown boundary role {role!r}; valid: {sorted(paths)}")
        return paths[role]

    def _check_layer(self, i: int) -> None:
        if not -self.num_layers <= i < self.num_layers:
            raise IndexError(f"layer {i} out of range for a {self.num_layers}-layer model")

    # ---------------------------------------------------------------- module access
    def get(self, path: str) -> nn.Module:
        return self._require_model().get_submodule(path)

    def decoder(self) -> nn.Module:
        """The bare decoder (``OlmoModel``/``Olmo2Model``/``Olmo3Model``)."""
        return self.get(self.boundary_path("decoder"))

    def layers(self) -> nn.ModuleList:
        return self.get(f"{self.spec.base_model_attr}.{self.spec.layers_attr}")

    def layer(self, i: int) -> nn.Module:
        return self.get(self.layer_path(i % self.num_layers))

    def attention(self, i: int) -> nn.Module:
        return self.get(self.module_path(i % self.num_layers, "attn"))

    def mlp(self, i: int) -> nn.Module:
        return self.get(self.module_path(i % self.num_layers, "mlp"))

    def q_proj(self, i: int) -> nn.Linear:
        return self.get(self.module_path(i % self.num_layers, self.spec.attn_projections["q"]))

    def k_proj(self, i: int) -> nn.Linear:
        return self.get(self.module_path(i % self.num_layers, self.spec.attn_projections["k"]))

    def v_proj(self, i: int) -> nn.Linear:
        return self.get(self.module_path(i % self.num_layers, self.spec.attn_projections["v"]))

    def o_proj(self, i: int) -> nn.Linear:
        """The output projection; its *input* is the concatenation of per-head outputs ``[.., H*d]``."""
        return self.get(self.module_path(i % self.num_layers, self.spec.attn_projections["o"]))

    def q_norm(self, i: int) -> nn.Module | None:
        """Norm over the whole q projection (before the head split), or ``None`` for OLMo v1."""
        if not self.spec.has_qk_norm:
            return None
        return self.get(self.module_path(i % self.num_layers, self.spec.qk_norms["q"]))

    def k_norm(self, i: int) -> nn.Module | None:
        if not self.spec.has_qk_norm:
            return None
        return self.get(self.module_path(i % self.num_layers, self.spec.qk_norms["k"]))

    def gate_proj(self, i: int) -> nn.Linear:
        return self.get(self.module_path(i % self.num_layers, self.spec.mlp_projections["gate"]))

    def up_proj(self, i: int) -> nn.Linear:
        return self.get(self.module_path(i % self.num_layers, self.spec.mlp_projections["up"]))

    def down_proj(self, i: int) -> nn.Linear:
        return self.get(self.module_path(i % self.num_layers, self.spec.mlp_projections["down"]))

    def norm(self, i: int, site: NormSite | str) -> nn.Module:
        return self.get(self.module_path(i % self.num_layers, NormSite(site).value))

    def norms(self, i: int) -> dict[NormSite, nn.Module]:
        return {site: self.norm(i, site) for site in self.spec.layer_norms}

    def embed_tokens(self) -> nn.Embedding:
        return self.get(self.boundary_path("embed_tokens"))

    def final_norm(self) -> nn.Module:
        return self.get(self.boundary_path("final_norm"))

    def lm_head(self) -> nn.Linear:
        return self.get(self.boundary_path("lm_head"))

    def rotary_emb(self) -> nn.Module:
        return self.get(self.boundary_path("rotary_emb"))

    # ---------------------------------------------------------------- attention bias
    @property
    def attention_bias(self) -> bool:
        """Whether the q/k/v/o projections carry a bias (all OLMo generations: one config switch)."""
        return bool(getattr(self.config, "attention_bias", False))

    def attention_projections(self, i: int) -> list[nn.Linear]:
        """Layer ``i``'s q, k, v and o projections, in that order."""
        return [self.q_proj(i), self.k_proj(i), self.v_proj(i), self.o_proj(i)]

    @torch.no_grad()
    def enable_attention_bias(self) -> None:
        """Give every q/k/v/o projection of every layer a bias and set ``config.attention_bias``.

        Stock OLMo configs can express an attention bias only for all four projections of all layers
        at once, so projections without one get exact zeros: the model computes the same function and
        its ``save_pretrained`` directory loads in stock ``from_pretrained`` with no missing keys.
        """
        for i in range(self.num_layers):
            for lin in self.attention_projections(i):
                if lin.bias is None:
                    w = lin.weight
                    lin.bias = nn.Parameter(
                        torch.zeros(w.shape[0], dtype=w.dtype, device=w.device), requires_grad=False
                    )
        self.config.attention_bias = True

    # ---------------------------------------------------------------- HF runtime conventions
    # What code that hooks a running HF model (the lens) must know about transformers' internals:
    # call and return conventions of the modules, the attention-function registry, config fields
    # that select the attention kernel. Kept here so a transformers upgrade is fixed in one file.

    def norm_eps(self, module: nn.Module) -> float:
        """The eps a norm module adds to the variance (v1: hard-coded 1e-5; v2/3: the module's own)."""
        if self.spec.fixed_norm_eps is not None:
            return self.spec.fixed_norm_eps
        return float(module.variance_epsilon)

    @staticmethod
    def module_input(args: tuple, kwargs: dict) -> torch.Tensor:
        """The hidden-state input of a module call as seen by a forward pre-hook (positional or named)."""
        if args:
            return args[0]
        for key in _INPUT_KWARGS:
            if key in kwargs:
                return kwargs[key]
        raise FamilyError("could not find the tensor input of a hooked module")

    @staticmethod
    def replace_module_input(args: tuple, kwargs: dict, new: torch.Tensor) -> tuple[tuple, dict]:
        """``(args, kwargs)`` with the hidden-state input replaced (what a pre-hook returns)."""
        if args:
            return (new, *args[1:]), kwargs
        for key in _INPUT_KWARGS:
            if key in kwargs:
                return args, {**kwargs, key: new}
        raise FamilyError("could not find the tensor input of a hooked module")

    @staticmethod
    def module_output(output: Any) -> torch.Tensor:
        """The hidden-state output of a module: decoder layers return a bare tensor in
        transformers >= 4.57 and a tuple before; attention modules return ``(output, weights)``."""
        return output if isinstance(output, torch.Tensor) else output[0]

    @staticmethod
    def replace_module_output(output: Any, new: torch.Tensor) -> Any:
        """``output`` with its hidden state replaced, in the same container shape."""
        if isinstance(output, torch.Tensor):
            return new
        return (new, *output[1:])

    @staticmethod
    def attention_position_embeddings(
        args: tuple, kwargs: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(cos, sin)`` rotary tables an attention module call received (hook view)."""
        pe = kwargs.get("position_embeddings")
        if pe is None and len(args) > 1:
            pe = args[1]
        if pe is None:
            raise FamilyError("the attention call carries no position_embeddings")
        return pe

    @staticmethod
    def call_attention(
        attn: nn.Module,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Any = None,
    ) -> torch.Tensor:
        """Run an attention module on ``hidden_states`` with an explicit ``[batch, 1, q, k]`` additive
        mask (and optionally a private KV cache); returns its output hidden states. Tools use it to
        attend over extra tokens (persistent or retrieved memory) with the module's own weights.
        The cache keyword is ``cache`` in transformers >= 5.x, ``past_key_values`` before."""
        kw: dict[str, Any] = {
            "hidden_states": hidden_states,
            "position_embeddings": position_embeddings,
            "attention_mask": attention_mask,
        }
        if cache is not None:
            kw[FamilyAdapter.cache_keyword(attn)] = cache
        return FamilyAdapter.module_output(attn(**kw))

    @staticmethod
    def cache_keyword(module: nn.Module) -> str:
        """The keyword a model/attention module takes its KV cache under: ``cache`` in
        transformers >= 5.x (``past_key_values`` is deprecated there), ``past_key_values`` before."""
        params = inspect.signature(type(module).forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    @staticmethod
    def cache_keys_values(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(keys, values)`` an HF ``Cache`` holds per decoder layer, ``[batch, kv_heads, n,
        head_dim]`` (a sliding-window layer holds at most window - 1 tokens): what a tool carries
        from one call to the next (memory's ``carry_context``)."""
        return [(layer.keys, layer.values) for layer in cache.layers]

    @staticmethod
    def attention_config(attn: nn.Module) -> Any:
        """The config object an attention module (``adapter.attention(i)``) reads at run time."""
        return attn.config

    @staticmethod
    def set_attention_config(attn: nn.Module, config: Any) -> None:
        """Give one attention module another config (a private copy; see below)."""
        attn.config = config

    def attention_config_copy(
        self, config: Any, *, attn_implementation: str | None = None, disable_clip_qkv: bool = False
    ) -> Any:
        """A shallow copy of an attention module's config that selects another attention function
        (a name registered with :meth:`register_attention_function`) and/or turns HF's in-place
        ``clip_qkv`` off. HF configs route ``_attn_implementation`` through a property with side
        effects on sub-configs, so the private field is set directly on the copy."""
        cfg = copy.copy(config)
        if attn_implementation is not None:
            object.__setattr__(cfg, "_attn_implementation_internal", attn_implementation)
        if disable_clip_qkv:
            object.__setattr__(cfg, "clip_qkv", None)
        return cfg

    @contextlib.contextmanager
    def bypass_layers(self, indices: Iterable[int]) -> Iterator[None]:
        """While open, the given decoder layers return their hidden-state input unchanged and fire none
        of their own torch hooks.

        The lens starts a forward at a later block from a given residual (TransformerLens's
        ``start_at_layer``) by feeding it as ``inputs_embeds`` and bypassing the earlier blocks; HF
        still builds the masks and RoPE of the remaining blocks, so they compute exactly as usual.
        """
        layers = [self.layer(i) for i in indices]
        saved = []
        for layer in layers:
            saved.append((layer, layer._forward_hooks, layer._forward_pre_hooks))
            layer._forward_hooks, layer._forward_pre_hooks = (
                type(layer._forward_hooks)(),
                type(layer._forward_pre_hooks)(),
            )
            layer.forward = lambda *args, **kwargs: FamilyAdapter.module_input(args, kwargs)
        try:
            yield
        finally:
            for layer, hooks, pre_hooks in saved:
                del layer.forward
                layer._forward_hooks, layer._forward_pre_hooks = hooks, pre_hooks

    def kv_cache_kwargs(self, cache: Any) -> dict[str, Any]:
        """The keyword that hands a KV cache to the causal LM's forward: ``cache`` in transformers
        >= 5.2x (``past_key_values`` is deprecated there), ``past_key_values`` before."""
        params = inspect.signature(type(self._require_model()).forward).parameters
        return {("cache" if "cache" in params else "past_key_values"): cache}

    @staticmethod
    def output_kv_cache(output: Any) -> Any:
        """The KV cache a causal LM's forward returned (``cache`` or, before, ``past_key_values``)."""
        for key in ("cache", "past_key_values"):
            value = output.get(key) if hasattr(output, "get") else getattr(output, key, None)
            if value is not None:
                return value
        return None

    def attn_implementation(self, config: Any = None) -> str:
        """The attention kernel name a config selects (``"sdpa"``, ``"eager"``, ...)."""
        impl = getattr(config, "_attn_implementation", None) if config is not None else None
        return impl or getattr(self.config, "_attn_implementation", None) or "eager"

    @staticmethod
    def register_attention_function(name: str, fn: Any) -> None:
        """Register ``fn`` under ``name`` in HF's ``AttentionInterface`` (global, idempotent)."""
        from transformers import AttentionInterface

        AttentionInterface.register(name, fn)

    def attention_function(self, attn: nn.Module, name: str) -> Any:
        """HF's attention function registered as ``name`` (the family's eager math for "eager")."""
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        return ALL_ATTENTION_FUNCTIONS.get_interface(name, self.eager_attention_function(attn))

    @staticmethod
    def eager_attention_function(attn: nn.Module) -> Any:
        """The modeling file's own ``eager_attention_forward`` for this attention module."""
        return sys.modules[type(attn).__module__].eager_attention_forward

    @staticmethod
    def repeat_kv(attn: nn.Module, states: torch.Tensor) -> torch.Tensor:
        """Keys/values ``[batch, n_kv, pos, d]`` expanded to every query head, as HF's eager path does."""
        modeling = sys.modules[type(attn).__module__]
        return modeling.repeat_kv(states, attn.num_key_value_groups)

    @staticmethod
    def attention_scaling(attn: nn.Module) -> float:
        """The factor HF multiplies ``q @ k.T`` by (``head_dim ** -0.5`` unless configured)."""
        return attn.scaling

    def layer_sliding_window(self, i: int) -> int | None:
        """The sliding window of layer ``i``'s attention, ``None`` for full attention."""
        if self.layer_types[i % self.num_layers] != "sliding_attention":
            return None
        return self.sliding_window

    # ---------------------------------------------------------------- parameter units
    def units(
        self, state_dict: Mapping[str, torch.Tensor] | Iterable[str] | None = None
    ) -> list[ParameterUnit]:
        """Group every ``state_dict`` key into exactly one :class:`ParameterUnit`.

        With no argument the loaded model's own ``state_dict`` is used. Keys are grouped by owning module
        (``<module>.weight`` and ``<module>.bias`` together); modules are classified by the family's
        known names, and anything unforeseen becomes a unit with role "other" rather than being lost.
        """
        if state_dict is None:
            state_dict = self._require_model().state_dict()
        keys = list(state_dict.keys()) if isinstance(state_dict, Mapping) else list(state_dict)
        by_module: dict[str, list[str]] = {}
        for key in keys:
            module, _, _ = key.rpartition(".")
            by_module.setdefault(module, []).append(key)

        s = self.spec
        layer_re = re.compile(
            rf"^{re.escape(s.base_model_attr)}\.{re.escape(s.layers_attr)}\.(\d+)\.(.+)$"
        )
        attn_roles = set(s.attn_projections.values()) | set(s.qk_norms.values())
        mlp_roles = set(s.mlp_projections.values())
        norm_roles = set(s.layer_norms.values())
        boundary = {
            self.boundary_path("embed_tokens"): "embed_tokens",
            self.boundary_path("final_norm"): "final_norm",
            self.boundary_path("lm_head"): "lm_head",
        }
        units = []
        for module, mkeys in by_module.items():
            m = layer_re.match(module)
            if m:
                layer, rest = int(m.group(1)), m.group(2)
                role = rest.rsplit(".", 1)[-1]
                if rest == f"{s.attn_attr}.{role}" and role in attn_roles:
                    block, short = "attention", f"attn.{role}"
                elif rest == f"{s.mlp_attr}.{role}" and role in mlp_roles:
                    block, short = "mlp", f"mlp.{role}"
                elif rest in norm_roles:
                    block, short, role = "norm", rest, rest
                else:
                    block, short, role = "other", rest, "other"
                units.append(
                    ParameterUnit(
                        f"layers.{layer}.{short}", module, tuple(mkeys), layer, block, role
                    )
                )
            else:
                role = boundary.get(module, "other")
                name = role if role != "other" else module
                units.append(ParameterUnit(name, module, tuple(mkeys), None, "boundary", role))

        tied = self.tied_embeddings
        if tied:
            units = [
                ParameterUnit(
                    u.name, u.module, u.keys, u.layer, u.block, u.role, tied_to="embed_tokens"
                )
                if u.role == "lm_head"
                else u
                for u in units
            ]
        order = {"embed_tokens": 0, "final_norm": 2, "lm_head": 3}
        units.sort(
            key=lambda u: (
                (1, u.layer, u.name) if u.layer is not None else (order.get(u.role, 4), -1, u.name)
            )
        )
        return units

    def layer_units(
        self, i: int, state_dict: Mapping[str, torch.Tensor] | None = None
    ) -> list[ParameterUnit]:
        return [u for u in self.units(state_dict) if u.layer == i]

    # ---------------------------------------------------------------- summaries
    def num_parameters(self) -> int:
        """Unique parameters (a tied lm_head counts once)."""
        model = self._require_model()
        seen, total = set(), 0
        for p in model.parameters():
            if p.data_ptr() in seen:
                continue
            seen.add(p.data_ptr())
            total += p.numel()
        return total

    def describe(self) -> dict[str, Any]:
        """JSON-safe summary used by ``olmokit info``."""
        info: dict[str, Any] = {
            "family": self.spec.display_name,
            "model_type": self.model_type,
            "generation": self.generation,
            "class": self.spec.causal_lm_class,
            "layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "heads": self.num_heads,
            "kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "gqa_group_size": self.kv_group_size,
            "norm": f"{self.spec.norm_type}, {self.norm_placement}-norm",
            "qk_norm": self.spec.has_qk_norm,
            "clip_qkv": self.clip_qkv,
            "sliding_window": self.sliding_window,
            "sliding_layers": self.sliding_layers(),
            "full_attention_layers": [
                i for i, t in enumerate(self.layer_types) if t == "full_attention"
            ],
            "tied_embeddings": self.tied_embeddings,
            "max_position_embeddings": getattr(self.config, "max_position_embeddings", None),
        }
        if self.model is not None:
            first = next(self.model.parameters())
            info["parameters"] = self.num_parameters()
            info["dtype"] = str(first.dtype).replace("torch.", "")
            info["device"] = str(first.device)
            info["attn_implementation"] = getattr(self.config, "_attn_implementation", None)
        return info


def get_adapter(model_or_config: Any, check_version: bool = True) -> FamilyAdapter:
    """The :class:`FamilyAdapter` for a loaded model (or for a config when no weights are needed)."""
    if isinstance(model_or_config, nn.Module):
        return FamilyAdapter.for_model(model_or_config, check_version=check_version)
    return FamilyAdapter.for_config(model_or_config, check_version=check_version)
