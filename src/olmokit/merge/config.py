"""Merge configuration: the model pool, the evaluation datasets, the search steps and the ES settings.

An olmokit merge config::

    models: [olmo2-stdlib, runs/expert-prose/model, runs/expert-code/model]   # pool order = tie order
    base_model: olmo2-stdlib          # default: models[0]; inserted first into the pool if missing
    datasets:
      - {path: data/prose.jsonl, mode: bigram_loss, samples: 64}
      - {path: data/code.jsonl, mode: exact_match, samples: 32}
    layer_swap: true
    tensor_swap: true
    es_svd: true

Every key is validated strictly (an unknown key is an error listing the valid ones). The seed's
``olm_config.yaml`` (jeffmeloy/olm; keys ``dataset``, ``dataset_dir``, ``base_model_name``,
``improve_all``, ``samples``, ...) is accepted as well: :meth:`MergeConfig.from_dict` recognises it by
its keys and maps it (:func:`from_olm_dict`, whose docstring lists every mapping). A seed key inside
an olmokit-style config is an error naming the key that replaced it, so a half-converted file never
runs with a setting silently ignored.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, Literal

from pydantic import Field, model_validator

from ..config import OlmokitConfig, apply_overrides, read_yaml
from ..errors import ConfigError

__all__ = [
    "DatasetSpec",
    "MergeConfig",
    "MERGE_MODES",
    "OLM_ONLY_KEYS",
    "RENAMED_KEYS",
    "REASONING_MASK",
    "from_olm_dict",
    "is_olm_config",
]

#: The dataset ``mode`` names, as :data:`olmokit.eval.merge_metrics.MERGE_METRICS` (kept literal here
#: so loading a config does not import torch; a test pins the two equal).
MERGE_MODES = ("bigram_loss", "exact_match", "diversity", "nll")

#: dtype names the run accepts (those of :func:`olmokit.loading.resolve_dtype`, pinned by a test).
DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")

#: The seed's ``think: false`` suffix, with the real newlines the original meant (its Python escaping
#: produced literal backslash-n characters).
REASONING_MASK = "<think>\n\n</think>\n\nCorrect answer:"

Mode = Literal["bigram_loss", "exact_match", "diversity", "nll"]
Script = Literal["cjk", "hiragana", "katakana", "hangul"]


class DatasetSpec(OlmokitConfig):
    """One evaluation dataset: a JSON/JSONL file of conversations and how to score it."""

    path: str = Field(description="JSON/JSONL of ShareGPT or olmokit chat records")
    mode: Mode = Field(description="metric: bigram_loss, exact_match, diversity or nll")
    samples: int = Field(200, ge=1, description="the first this many records are scored")
    name: str | None = Field(None, description="name in reports (default: the file's stem)")
    max_new_tokens: int = Field(256, ge=1, description="diversity: generation bound")
    script_penalty: list[Script] = Field(
        default_factory=lambda: ["cjk"],
        description="diversity: scripts whose use scores the penalty (cjk, hiragana, katakana, hangul)",
    )
    prompt_suffix: str = Field(
        "",
        description="text appended to every prompt after the chat template's generation prompt "
        "(the seed's think: false maps to its reasoning mask)",
    )

    @model_validator(mode="after")
    def _default_name(self) -> DatasetSpec:
        if self.name is None:
            object.__setattr__(self, "name", PurePath(self.path).stem)
        if not self.name:
            raise ValueError("a dataset name may not be empty")
        return self


class MergeConfig(OlmokitConfig):
    """A whole merge run (``olmokit merge run CONFIG``)."""

    models: list[str] = Field(
        description="the pool: local dirs, hub ids or zoo names; order breaks ties"
    )
    base_model: str | None = Field(
        None, description="base of the merge (default: models[0]; inserted first if not in models)"
    )
    base_select: bool = Field(
        False, description="choose the base by ranking every pool model (Borda)"
    )
    boundary_select: bool = Field(
        False, description="choose embed_tokens, final norm and lm_head together from one donor"
    )
    layer_swap: bool = Field(True, description="choose a donor per decoder layer")
    tensor_swap: bool = Field(False, description="choose a donor per parameter unit")
    direction: Literal["forward", "backward"] = Field(
        "forward", description="layer order of the layer- and tensor-wise steps"
    )
    skip_norm: bool = Field(True, description="tensor step: leave norm units to their layer")
    datasets: list[DatasetSpec] = Field(description="evaluation datasets (at least one)")
    selection: Literal["copeland", "borda", "pareto"] = Field(
        "copeland", description="how a winner is chosen among candidates"
    )
    epsilon: float = Field(
        0.0, ge=0, description="a candidate is degraded where metric > reference + epsilon"
    )
    improve_against: Literal["current", "current_and_base"] = Field(
        "current", description="references for the degradation check"
    )
    max_models: int | None = Field(
        None, ge=1, description="keep the base and the best-ranked models up to this pool size"
    )
    es_svd: bool = Field(False, description="SVD-ES on each newly applied 2-D weight")
    es_svd_generations: int = Field(1, ge=1)
    es_svd_sigma: float = Field(0.05, gt=0)
    es_svd_step_rule: Literal["one_fifth", "fixed"] = Field(
        "one_fifth", description="sigma update: 1/5th success rule or the original's fixed factor"
    )
    es_noise_clamp: float = Field(3.0, gt=0, description="SVD-ES noise is clamped to +-this")
    es_norm: bool = Field(False, description="row-norm ES on each newly applied 2-D weight")
    es_norm_generations: int = Field(1, ge=1)
    es_norm_sigma: float = Field(0.005, gt=0)
    es_norm_step_rule: Literal["one_fifth", "fixed"] = Field(
        "fixed", description="norm-ES sigma update: the original's 0.9 decay or the 1/5th rule"
    )
    es_lambda: int | None = Field(
        None, ge=1, description="offspring per generation (default 4 + floor(3 ln dim))"
    )
    es_max_evaluations: int | None = Field(
        None, ge=1, description="ES budget in evaluations per tensor"
    )
    es_max_seconds: float | None = Field(None, gt=0, description="ES budget in seconds per tensor")
    seed: int = Field(0, ge=0)
    dtype: str = Field("float32", description=f"working model dtype: {', '.join(DTYPES)}")
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:1', 'auto'")
    batch_size: int = Field(8, ge=1, description="evaluation batch size")
    candidate_batch: int = Field(
        8,
        ge=1,
        description="candidates evaluated together: their layers above the step's layer run as "
        "one batch (the same scores up to the last float32 bit; memory: this many copies of the "
        "cached hidden states, at most 1 GiB at a time); 1 evaluates one at a time; fixed for a "
        "run (changing it on --resume is refused)",
    )
    output_dir: str = Field("runs/merge", description="run directory")

    @model_validator(mode="before")
    @classmethod
    def _insert_base(cls, data: Any) -> Any:
        """Default the base to the first pool model and make sure it is in the pool (first)."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        models = data.get("models")
        if isinstance(models, list) and models and all(isinstance(m, str) for m in models):
            base = data.get("base_model")
            if base is None:
                data["base_model"] = models[0]
            elif isinstance(base, str) and base not in models:
                data["models"] = [base, *models]
        return data

    @model_validator(mode="after")
    def _check(self) -> MergeConfig:
        if not self.models:
            raise ValueError("models: the pool is empty; list at least one model")
        dupes = sorted({m for m in self.models if self.models.count(m) > 1})
        if dupes:
            raise ValueError(f"models: listed more than once: {', '.join(dupes)}")
        if not self.datasets:
            raise ValueError("datasets: list at least one evaluation dataset")
        names = [d.name for d in self.datasets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(
                f"datasets: names must be unique, repeated: {', '.join(map(str, dupes))} "
                "(set 'name' on one of them)"
            )
        if not (self.base_select or self.boundary_select or self.layer_swap or self.tensor_swap):
            raise ValueError(
                "nothing to do: enable at least one of base_select, boundary_select, layer_swap, "
                "tensor_swap"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} unknown; valid: {', '.join(DTYPES)}")
        return self

    @property
    def dataset_names(self) -> list[str]:
        """Dataset names in config order (the key order of every metrics dict)."""
        return [str(d.name) for d in self.datasets]

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any] | None,
        *,
        source: str = "",
        strict: bool = True,
    ) -> MergeConfig:
        """Validate an olmokit-style mapping, or map a seed-style ``olm_config.yaml`` mapping first."""
        if isinstance(data, Mapping) and strict:
            if is_olm_config(data):
                data = from_olm_dict(data, source=source)
            else:
                _refuse_renamed(data, source)
        return super().from_dict(data, source=source, strict=strict)

    @classmethod
    def from_olm_yaml(
        cls, path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()
    ) -> MergeConfig:
        """Load a seed-style ``olm_config.yaml`` (overrides use the seed's key names)."""
        raw = apply_overrides(read_yaml(path), overrides)
        return cls.from_dict(from_olm_dict(raw, source=str(path)), source=str(path))


#: Keys of the seed's olm_config.yaml that olmokit spells differently, with the new spelling.
RENAMED_KEYS: dict[str, str] = {
    "base_model_name": "base_model",
    "dataset": "datasets (a list of {path, mode, samples, name})",
    "dataset_dir": "datasets[].path (each dataset's own path)",
    "samples": "datasets[].samples (per dataset)",
    "improve_all": "improve_against (current | current_and_base)",
    "load_merge_report": "the --resume flag of 'olmokit merge run'",
    "models_dir": "nothing: hub models use the Hugging Face cache, random zoo models <output_dir>/pool_cache",
    "metric_dir": "nothing (the original never used it)",
    "markov": "nothing (markov windows are not supported)",
}

#: Keys only a seed-style config has; any of them (and no olmokit-only key) marks one.
OLM_ONLY_KEYS = frozenset(RENAMED_KEYS)

#: Keys the seed's olm.py / model_scanner.py read that olmokit spells the same way.
_OLM_SAME_KEYS = (
    "models",
    "output_dir",
    "base_select",
    "boundary_select",
    "layer_swap",
    "tensor_swap",
    "direction",
    "skip_norm",
    "es_svd",
    "es_svd_generations",
    "es_svd_sigma",
    "es_norm",
    "es_norm_generations",
    "es_norm_sigma",
    "max_models",
)


def _olmokit_only_keys() -> set[str]:
    return set(MergeConfig.model_fields) - set(_OLM_SAME_KEYS) - {"selection"}


def is_olm_config(data: Mapping[str, Any]) -> bool:
    """Whether ``data`` is shaped like the seed's ``olm_config.yaml``: it has a seed-only key and
    no key that only an olmokit config has."""
    keys = {k for k in data if isinstance(k, str)}
    return bool(keys & OLM_ONLY_KEYS) and not (keys & _olmokit_only_keys())


def _refuse_renamed(data: Mapping[str, Any], source: str) -> None:
    old = [k for k in data if isinstance(k, str) and k in RENAMED_KEYS]
    if old:
        where = f"{source}: " if source else ""
        raise ConfigError(
            where
            + "; ".join(f"'{k}' is a seed olm_config.yaml key; use {RENAMED_KEYS[k]}" for k in old)
        )


_IMPROVE_ALL = {
    None: "current",
    "": "current",
    "base": "current_and_base",
    "all": "current_and_base",
}


def from_olm_dict(data: Mapping[str, Any], source: str = "") -> dict[str, Any]:
    """Map a seed-style ``olm_config.yaml`` mapping to olmokit's keys.

    * ``models``, ``output_dir``, the step switches, ``direction``, ``skip_norm``, ``es_*``,
      ``max_models``: unchanged.
    * ``base_model_name`` → ``base_model`` (also inserted first into the pool when missing, as
      model_scanner did).
    * ``dataset: {file: {mode, think}}`` + ``dataset_dir`` + ``samples`` → ``datasets``: one entry
      per file, ``path = dataset_dir/file``, ``samples`` for each (default 200), ``name`` = the file
      name's stem; ``think: false`` (the seed's default) appends :data:`REASONING_MASK` to the prompt,
      with real newlines. Diversity keeps the original's CJK-only penalty (the default) but a bounded
      ``max_new_tokens`` (256, not 8192).
    * ``improve_all``: ``base`` and ``all`` → ``improve_against: current_and_base``; empty/absent →
      ``current``. The per-mode values (``diversity``, ``bigram``, ``exact``, ...) are refused: the
      original applied them to one dataset only (or, for ``bigram``/``exact``, never) and olmokit
      checks every dataset, always against the current state.
    * ``selection``: ``ranks`` (the original's Copeland) → ``copeland``; any other value the original
      treated as Borda → ``borda``; olmokit's names pass through.
    * ``load_merge_report``: resuming is ``olmokit merge run --resume``; ``true`` is refused so the
      user knows the file alone no longer resumes. ``models_dir`` and ``metric_dir`` are dropped
      with a warning (hub downloads use the HF cache); ``markov`` > 0 is refused (not supported).
    """
    where = f"{source}: " if source else ""
    data = dict(data)
    out: dict[str, Any] = {}
    notes: list[str] = []
    for key in _OLM_SAME_KEYS:
        if key in data:
            out[key] = data.pop(key)
    if "base_model_name" in data:
        out["base_model"] = data.pop("base_model_name")
    if "base_model" in data:  # read (never set) by olm.py; accept it like base_model_name
        out.setdefault("base_model", data.pop("base_model"))
    dataset_dir = data.pop("dataset_dir", None)
    samples = data.pop("samples", 200)
    datasets = data.pop("dataset", None)
    if not isinstance(datasets, Mapping) or not datasets:
        raise ConfigError(
            f"{where}seed-style olm_config.yaml: 'dataset' must map file names to "
            "{mode: ..., think: ...} (in an olmokit config the key is 'datasets', a list of "
            f"{{path, mode, samples}}); got {type(datasets).__name__}"
        )
    out["datasets"] = []
    for file, opts in datasets.items():
        opts = {} if opts is None else opts
        if not isinstance(opts, Mapping):
            raise ConfigError(f"{where}dataset.{file}: expected {{mode, think}}, got {opts!r:.60}")
        unknown = sorted(set(opts) - {"mode", "think"}, key=str)
        if unknown:
            raise ConfigError(
                f"{where}dataset.{file}: unknown keys {unknown}; valid keys here: mode, think"
            )
        path = str(Path(str(dataset_dir)) / str(file)) if dataset_dir else str(file)
        spec: dict[str, Any] = {"path": path, "mode": opts.get("mode"), "samples": samples}
        spec["name"] = PurePath(str(file)).stem
        if not opts.get("think", False):
            spec["prompt_suffix"] = REASONING_MASK
        out["datasets"].append(spec)
    improve = data.pop("improve_all", None)
    if improve not in _IMPROVE_ALL:
        raise ConfigError(
            f"{where}improve_all: {improve!r} is not supported; valid: base, all or empty "
            "(olmokit checks every dataset against the current state; 'base'/'all' also against "
            "the base)"
        )
    out["improve_against"] = _IMPROVE_ALL[improve]
    if "selection" in data:
        sel = data.pop("selection")
        out["selection"] = (
            sel
            if sel in ("copeland", "borda", "pareto")
            else "copeland"
            if sel == "ranks"
            else "borda"
        )
    if data.pop("load_merge_report", False):
        raise ConfigError(
            f"{where}load_merge_report: true: resume with 'olmokit merge run CONFIG --resume' "
            "(and set load_merge_report: false)"
        )
    markov = data.pop("markov", 0)
    if markov:
        raise ConfigError(f"{where}markov: {markov!r}: markov windows are not supported (use 0)")
    for key in ("models_dir", "metric_dir"):
        if key in data:
            data.pop(key)
            notes.append(key)
    if notes:
        warnings.warn(
            f"{where}ignoring {', '.join(notes)} (hub models use the Hugging Face cache)",
            stacklevel=3,
        )
    out.update(data)  # anything left is validated (and, if unknown, refused) by MergeConfig
    return out
