"""Lens configuration: one model and a list of analysis jobs, in one YAML file.

::

    model:
      name: zoo:olmo2-stdlib      # local dir, hub id or zoo name
      dtype: float32
    output_dir: runs/lens
    jobs:
      - kind: logit_lens
        prompt: "def main():\\n    return"
      - kind: patching
        clean: "def __init__(self"
        corrupted: "def __repr__(self"
      - kind: attribution
        prompt: "import os\\nos.path."
      - kind: head_scores
        seq_len: 32
      - kind: attention_pattern     # no prompt: repeated random tokens; no layer/head: top induction head

Each job is one of the classes below, chosen by ``kind``; every section rejects unknown keys with an
error naming the job and listing the valid keys. Jobs get a ``name`` (default ``<index>_<kind>``) that
prefixes their output files in the run directory. A prompt may not be empty (zero tokens cannot be
run); whitespace is a meaningful prompt for code and is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from ..config import OlmokitConfig
from ..errors import ConfigError
from ..zoo.registry import DEFAULT_MODEL

__all__ = [
    "AttentionPatternJob",
    "AttributionJob",
    "HeadScoresJob",
    "JOB_KINDS",
    "LensConfig",
    "LensJob",
    "LogitLensJob",
    "ModelSection",
    "PATCH_KINDS",
    "PatchingJob",
    "DEFAULT_CLEAN",
    "DEFAULT_CORRUPTED",
    "DEFAULT_PROMPT",
]

# __init__ takes arguments, __repr__ only self: the zoo model predicts "," vs "):" after "self".
DEFAULT_CLEAN = "class Point:\n    def __init__(self"
DEFAULT_CORRUPTED = "class Point:\n    def __repr__(self"
DEFAULT_PROMPT = "def main():\n    return"

#: Activation-patching variants a ``patching`` job can run (see :mod:`olmokit.lens.patching`).
PATCH_KINDS = ("resid_pre", "attn_out", "mlp_out", "resid_mid", "heads")
#: Job kinds, in the order the docs list them.
JOB_KINDS = ("logit_lens", "patching", "attribution", "head_scores", "attention_pattern")


def _not_empty(value: str) -> str:
    if value == "":
        raise ValueError("is empty; give the text the model should read")
    return value


def _valid_name(value: str) -> str:
    if not value or value in (".", "..") or any(c in value for c in "/\\\0"):
        raise ValueError("must be a plain file-name stem (no path separators)")
    return value


#: A prompt: any text but the empty string (zero tokens cannot be run).
Prompt = Annotated[str, AfterValidator(_not_empty)]
#: A job name: it prefixes the job's files in the run directory.
JobName = Annotated[str, AfterValidator(_valid_name)]


class ModelSection(OlmokitConfig):
    """The model every job runs on."""

    name: str = Field(DEFAULT_MODEL, description="local dir, hub id or zoo name")
    dtype: str = Field("float32", description="float32, bfloat16, float16 or auto")
    device: str = Field("cpu", description="cpu, cuda, cuda:1, ... or auto (cuda when available)")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")


class _Job(OlmokitConfig):
    kind: str = Field(description=f"which analysis: one of {', '.join(JOB_KINDS)}")
    name: JobName | None = Field(None, description="output file prefix (default: <index>_<kind>)")


class LogitLensJob(_Job):
    """Top predictions after every block (the residual read through the final norm and unembedding)."""

    kind: Literal["logit_lens"] = "logit_lens"
    prompt: Prompt = Field(DEFAULT_PROMPT, description="text to read")
    top_k: int = Field(5, ge=1, description="predictions kept per layer and position")


class PatchingJob(_Job):
    """Activation patching from a clean into a corrupted prompt of the same token length."""

    kind: Literal["patching"] = "patching"
    clean: Prompt = Field(DEFAULT_CLEAN, description="clean prompt")
    corrupted: Prompt = Field(
        DEFAULT_CORRUPTED, description="corrupted prompt (same number of tokens)"
    )
    answer: Prompt | None = Field(
        None, description="answer token text (default: clean top prediction)"
    )
    wrong: Prompt | None = Field(
        None, description="wrong token text (default: corrupted top prediction)"
    )
    patches: list[Literal["resid_pre", "attn_out", "mlp_out", "resid_mid", "heads"]] = Field(
        default_factory=lambda: ["resid_pre", "attn_out", "mlp_out", "heads"],
        min_length=1,
        description=f"which activations to patch: any of {', '.join(PATCH_KINDS)}",
    )


class AttributionJob(_Job):
    """Direct logit attribution of every head, MLP and the embedding at the last position."""

    kind: Literal["attribution"] = "attribution"
    prompt: Prompt = Field(DEFAULT_CLEAN, description="text whose next-token logit is attributed")
    answer: Prompt | None = Field(
        None, description="answer token text (default: the top prediction)"
    )
    wrong: Prompt | None = Field(None, description="subtract this token's logit (default: none)")
    top: int = Field(10, ge=1, description="components listed in the summary")


class HeadScoresJob(_Job):
    """Induction and previous-token scores of every head on repeated random tokens."""

    kind: Literal["head_scores"] = "head_scores"
    seq_len: int = Field(32, ge=2, description="length of the repeated half")
    batch: int = Field(8, ge=1, description="random sequences averaged over")
    seed: int = Field(0, description="seed of the random tokens")
    top: int = Field(5, ge=1, description="heads listed in the summary")


class AttentionPatternJob(_Job):
    """One head's attention pattern as a heatmap."""

    kind: Literal["attention_pattern"] = "attention_pattern"
    prompt: Prompt | None = Field(
        None, description="text to read (default: repeated random tokens)"
    )
    seq_len: int = Field(32, ge=2, description="without a prompt: length of the repeated half")
    seed: int = Field(0, description="seed of the random tokens")
    batch: int = Field(
        8, ge=1, description="random sequences the top induction head is chosen on (no layer/head)"
    )
    layer: int | None = Field(None, description="layer (with head; default: top induction head)")
    head: int | None = Field(
        None, ge=0, description="head (with layer; default: top induction head)"
    )

    @model_validator(mode="after")
    def _layer_and_head_together(self) -> AttentionPatternJob:
        if (self.layer is None) != (self.head is None):
            raise ValueError("give both layer and head, or neither (then: the top induction head)")
        return self


LensJob = Annotated[
    LogitLensJob | PatchingJob | AttributionJob | HeadScoresJob | AttentionPatternJob,
    Field(discriminator="kind"),
]
JOB_CLASSES: dict[str, type[_Job]] = {
    "logit_lens": LogitLensJob,
    "patching": PatchingJob,
    "attribution": AttributionJob,
    "head_scores": HeadScoresJob,
    "attention_pattern": AttentionPatternJob,
}


class LensConfig(OlmokitConfig):
    """A lens run: the model, where the run directory goes, and the jobs in order."""

    model: ModelSection = Field(default_factory=ModelSection)
    output_dir: str = Field("runs/lens", description="run directory (config, JSON and PNG outputs)")
    jobs: list[LensJob] = Field(
        min_length=1, description=f"analyses to run: {', '.join(JOB_KINDS)}"
    )

    @model_validator(mode="after")
    def _unique_names(self) -> LensConfig:
        names = self.job_names()
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"job names must be unique; repeated: {dup}")
        return self

    def job_names(self) -> list[str]:
        """Each job's output prefix: its ``name``, else ``<index>_<kind>``."""
        return [job.name or f"{i}_{job.kind}" for i, job in enumerate(self.jobs)]

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | None, *, source: str = "", strict: bool = True
    ) -> LensConfig:
        """Validate; a job's unknown kind or key is reported with the job's index and valid keys."""
        if strict and isinstance(data, Mapping):
            _check_jobs(data.get("jobs"), source)
        return super().from_dict(data, source=source, strict=strict)


def _check_jobs(jobs: Any, source: str) -> None:
    """Errors pydantic words poorly for a list of tagged unions, worded the olmokit way."""
    if not isinstance(jobs, list):
        return  # pydantic reports a missing or non-list ``jobs``
    where = f"{source}: " if source else ""
    for i, job in enumerate(jobs):
        if not isinstance(job, Mapping):
            continue
        kind = job.get("kind")
        if kind not in JOB_CLASSES:
            raise ConfigError(
                f"{where}jobs[{i}]: unknown kind {kind!r}; valid kinds: {', '.join(JOB_KINDS)}"
            )
        cls = JOB_CLASSES[kind]
        unknown = sorted((str(k) for k in job if k not in cls.model_fields), key=str)
        if unknown:
            raise ConfigError(
                f"{where}jobs[{i}] ({kind}): unknown key '{unknown[0]}'; valid keys here: "
                f"{', '.join(sorted(cls.model_fields))}"
            )
