"""The configuration base class every olmokit tool builds its config from.

Configs are pydantic models that *reject unknown keys* (a typo in a YAML file is an error that lists the
valid keys, never a silently ignored setting), load from YAML, accept ``a.b=value`` overrides from the
command line, and write themselves back to YAML atomically next to a run's outputs.

Artifacts written by a newer olmokit (saved adapter configs, reports) should be read with
``strict=False``: unknown keys are then dropped with a warning instead of failing.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError
from .files import atomic_write_text

__all__ = ["OlmokitConfig", "apply_overrides", "read_yaml"]

C = TypeVar("C", bound="OlmokitConfig")


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into a :class:`ConfigError` that names the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        dotted, raw = item.split("=", 1)
        keys = [k for k in dotted.strip().split(".") if k]
        if not keys:
            raise ConfigError(f"override {item!r} has an empty key")
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {key!r} is not a section")
            node = child
        node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The nested config class that owns the field at ``loc`` (used to list valid keys in errors)."""
    current: type[BaseModel] | None = cls
    for part in loc[:-1]:
        if current is None or not isinstance(part, str):
            return None
        field = _field_by_name_or_alias(current, part)
        if field is None:
            return None
        annotation = field.annotation
        current = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
    return current


def _field_by_name_or_alias(cls: type[BaseModel], key: str):
    for name, field in cls.model_fields.items():
        if key == name or key == field.alias:
            return field
    return None


def _valid_keys(cls: type[BaseModel]) -> list[str]:
    return sorted(field.alias or name for name, field in cls.model_fields.items())


def _format_validation_error(cls: type[BaseModel], exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        where = ".".join(str(p) for p in loc) or "<root>"
        if err.get("type") == "extra_forbidden":
            owner = _model_at(cls, loc)
            valid = ", ".join(_valid_keys(owner)) if owner else "?"
            lines.append(f"unknown key '{where}'; valid keys here: {valid}")
        else:
            lines.append(f"{where}: {err.get('msg')} (got {err.get('input')!r})")
    prefix = f"{source}: " if source else ""
    return prefix + "invalid config: " + "; ".join(lines)


class OlmokitConfig(BaseModel):
    """Strict, self-documenting config base (fields carry ``description=`` help text)."""

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        populate_by_name=True,
        protected_namespaces=(),
        use_enum_values=True,
    )

    @classmethod
    def from_dict(
        cls: type[C], data: Mapping[str, Any] | None, *, source: str = "", strict: bool = True
    ) -> C:
        """Validate a mapping. ``strict=False`` drops unknown keys with a warning (for saved artifacts)."""
        data = dict(data or {})
        if not strict:
            data = cls._drop_unknown(data, source)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(cls, exc, source)) from None

    @classmethod
    def _drop_unknown(cls, data: dict[str, Any], source: str) -> dict[str, Any]:
        valid = set(_valid_keys(cls)) | set(cls.model_fields)
        unknown = sorted(set(data) - valid)
        if unknown:
            warnings.warn(
                f"{source or cls.__name__}: ignoring unknown keys {unknown} (written by a newer olmokit?)",
                stacklevel=3,
            )
        out = {}
        for key, value in data.items():
            if key not in valid:
                continue
            field = _field_by_name_or_alias(cls, key)
            ann = field.annotation if field is not None else None
            if isinstance(value, dict) and isinstance(ann, type) and issubclass(ann, OlmokitConfig):
                value = ann._drop_unknown(value, f"{source}.{key}" if source else key)
            out[key] = value
        return out

    @classmethod
    def from_yaml(
        cls: type[C],
        path: str | os.PathLike[str],
        overrides: Iterable[str] = (),
        strict: bool = True,
    ) -> C:
        """Load a YAML file, apply ``key.sub=value`` overrides, validate."""
        data = apply_overrides(read_yaml(path), overrides)
        return cls.from_dict(data, source=str(path), strict=strict)

    def merge(self: C, overrides: Iterable[str]) -> C:
        """Return a copy with ``key.sub=value`` overrides applied (validated again)."""
        data = apply_overrides(self.as_dict(), overrides)
        return type(self).from_dict(data)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe dict using the public key names (aliases)."""
        return self.model_dump(mode="json", by_alias=True)

    def to_yaml(self, path: str | os.PathLike[str] | None = None) -> str:
        """Render as YAML; when ``path`` is given also write it there atomically."""
        text = yaml.safe_dump(self.as_dict(), sort_keys=False)
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def help_text(cls) -> str:
        """One line per field: name, default and description (used by CLI ``--help`` epilogs)."""
        lines = []
        for name, field in cls.model_fields.items():
            default = "" if field.is_required() else f" (default {field.default!r})"
            lines.append(f"  {field.alias or name}{default}: {field.description or ''}")
        return "\n".join(lines)
