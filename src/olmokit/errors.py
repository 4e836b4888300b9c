"""One exception hierarchy for olmokit.

Every error a user can cause (bad config, unsupported model, broken dataset, wrong adapter for a base)
is an :class:`OlmokitError`. The CLI prints these as one line and exits non-zero; anything else is a bug
and keeps its traceback. Messages name the bad value and, where there is a finite set, the valid ones.
"""

from __future__ import annotations

__all__ = [
    "OlmokitError",
    "ConfigError",
    "FamilyError",
    "CheckpointError",
    "DataError",
    "ReportError",
]


class OlmokitError(Exception):
    """Base class of every error olmokit raises on purpose."""


class ConfigError(OlmokitError, ValueError):
    """A configuration value or key is invalid."""


class FamilyError(OlmokitError, ValueError):
    """The model is not an OLMo family model, or this transformers version cannot run it correctly."""


class CheckpointError(OlmokitError, OSError):
    """A model, tokenizer or adapter could not be loaded or does not match its base."""


class DataError(OlmokitError, ValueError):
    """A dataset file is missing, empty or has a malformed row (messages carry file:line)."""


class ReportError(OlmokitError, ValueError):
    """A run report or resume state is inconsistent with the current run."""
