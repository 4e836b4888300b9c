"""The configuration base class every olmokit tool builds its config from.

Configs are pydantic models that *reject unknown keys* (a typo in a YAML file is an error that lists the
valid keys, never a silently ignored setting), load from YAML, accept ``a.b=value`` overrides from the
command line, and write themselves back to YAML atomically next to a run's outputs.

Artifacts written by a newer olmokit (saved adapter configs, reports) should be read with
``strict=False``: unknown keys are then dropped with a warning instead of failing.

Bad input never escapes as a raw exception: broken YAML (file, line and column), bytes that are not
UTF-8, absurd nesting, integers too long for Python to convert, non-string keys and non-finite floats
(``.nan``, ``.inf``: no olmokit setting means them, and they would only fail later, e.g. when a run's
JSON is written) all become a :class:`~olmokit.errors.ConfigError`.
"""

from __future__ import annotations

import os
import reprlib
import types
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .errors import ConfigError
from .files import atomic_write_text, read_text

__all__ = [
    "OlmokitConfig",
    "apply_overrides",
    "config_rows",
    "config_table",
    "parse_yaml",
    "read_yaml",
]

C = TypeVar("C", bound="OlmokitConfig")

#: Deepest nesting a config may have; real configs use 2-3 levels, and deeper input is refused before
#: it can exhaust the interpreter's recursion limit in a later ``deepcopy``/dump.
MAX_DEPTH = 32


class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses nesting deeper than :data:`MAX_DEPTH` while composing (before
    PyYAML's scanner, quadratic in the depth, or the recursion limit is reached), and whose value
    errors (an integer over Python's int-to-str digit limit, a date like 2024-13-45) carry the node's
    line and column like every other YAML error."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_DEPTH} levels",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"invalid value: {exc}", node.start_mark
            ) from None


def _depth_exceeds(data: Any, limit: int) -> bool:
    """Whether ``data`` nests containers deeper than ``limit``. Iterative, and each container is
    visited once, so YAML aliases (shared or even cyclic references) cannot make it explode."""
    stack = [(data, 1)]
    seen: set[int] = set()
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list, tuple)):
            if id(node) in seen:
                continue
            seen.add(id(node))
        if isinstance(node, dict):
            children = list(node.values())
        elif isinstance(node, (list, tuple)):
            children = list(node)
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _yaml_error_text(exc: yaml.YAMLError, text: str) -> str:
    """``line:column: problem`` for a YAML error (1-based, as editors count)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
        return f"{mark.line + 1}:{mark.column + 1}: {problem}"
    position = getattr(exc, "position", None)  # ReaderError: a character YAML does not allow
    if position is not None:
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        return f"{line}:{column}: {getattr(exc, 'reason', exc)}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML text safely; every failure is a :class:`ConfigError` starting ``where:line:col``."""
    try:
        data = yaml.load(text, Loader=_SafeLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}:{_yaml_error_text(exc, text)} (invalid YAML)") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply (invalid YAML)") from None
    if _depth_exceeds(data, MAX_DEPTH):
        raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    return data


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into a :class:`ConfigError` that names the file
    (and, for malformed YAML, the line and column)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    data = parse_yaml(read_text(p, ConfigError), str(p))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars) to a nested dict, in place.

    A number indexes into an existing list of sections, so ``jobs.0.prompt=x`` edits the first of a
    lens config's jobs (an index past the end is an error naming the list's length).
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        dotted, raw = item.split("=", 1)
        keys = [k for k in dotted.strip().split(".") if k]
        if not keys:
            raise ConfigError(f"override {item!r} has an empty key")
        value = parse_yaml(raw, f"override {_short_repr(item)}") if raw.strip() else None
        node: Any = data
        for key in keys[:-1]:
            node = _override_child(node, key, item)
        if isinstance(node, list):
            node[_list_index(node, keys[-1], item)] = value
        else:
            node[keys[-1]] = value
    return data


def _list_index(node: list[Any], key: str, item: str) -> int:
    if not key.isdigit():
        raise ConfigError(f"override {_short_repr(item)}: {key!r} must be a list index here")
    if int(key) >= len(node):
        raise ConfigError(
            f"override {_short_repr(item)}: index {key} is past the end of a {len(node)}-item list"
        )
    return int(key)


def _override_child(node: Any, key: str, item: str) -> Any:
    """The section ``key`` below ``node`` (created when missing in a mapping; indexed in a list)."""
    if isinstance(node, list):
        child = node[_list_index(node, key, item)]
    else:
        child = node.setdefault(key, {})
    if not isinstance(child, (dict, list)):
        raise ConfigError(f"override {_short_repr(item)}: {key!r} is not a section")
    return child


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The nested config class that owns the field at ``loc`` (used to list valid keys in errors)."""
    current: type[BaseModel] | None = cls
    in_list = False  # the previous part named a list[Model] field: this part is its index
    for part in loc[:-1]:
        if in_list and isinstance(part, int):
            in_list = False
            continue
        if current is None or not isinstance(part, str) or in_list:
            return None
        field = _field_by_name_or_alias(current, part)
        if field is None:
            return None
        annotation = field.annotation
        if get_origin(annotation) is list and len(get_args(annotation)) == 1:
            annotation, in_list = get_args(annotation)[0], True
        current = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
    return None if in_list else current


def _field_by_name_or_alias(cls: type[BaseModel], key: str):
    for name, field in cls.model_fields.items():
        if key == name or key == field.alias:
            return field
    return None


def _valid_keys(cls: type[BaseModel]) -> list[str]:
    return sorted(field.alias or name for name, field in cls.model_fields.items())


_INT64_LIMIT = 2**63


def _has_huge_int(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return not -_INT64_LIMIT <= value < _INT64_LIMIT
    if isinstance(value, Mapping):
        return any(_has_huge_int(k) or _has_huge_int(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_has_huge_int(v) for v in value)
    return False


def _short_repr(value: Any, limit: int = 80) -> str:
    """``repr`` for error messages: bounded in size and depth (a YAML alias bomb stays small), and
    safe for integers Python refuses to print."""
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 3, limit, limit
    try:
        text = short.repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        return "<an integer too long to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
            # pydantic prefixes a validator's own message with "Value error, ": drop the jargon
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            lines.append(f"{where}: {msg} (got {_short_repr(err.get('input'))})")
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
        # NaN/inf are never a meaningful setting and break strict JSON outputs later; applies to every
        # float a config holds, nested ones (tuple[float, ...], dict[str, float], sub-configs) too.
        allow_inf_nan=False,
    )

    @field_validator("*", mode="after")
    @classmethod
    def _bounded_integers(cls, value: Any) -> Any:
        """Refuse integers beyond 64 bits anywhere in a field: no setting needs one, and Python cannot
        even print one past 4,300 digits, so the resolved config.yaml or a JSON report would crash."""
        if _has_huge_int(value):
            raise ValueError(
                f"integers must fit in 64 bits (|x| < 2**63), got {_short_repr(value)}"
            )
        return value

    @classmethod
    def from_dict(
        cls: type[C], data: Mapping[str, Any] | None, *, source: str = "", strict: bool = True
    ) -> C:
        """Validate a mapping. ``strict=False`` drops unknown keys with a warning (for saved artifacts)."""
        where = f"{source}: " if source else ""
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(f"{where}a config must be a mapping, got {type(data).__name__}")
        data = dict(data or {})
        if _depth_exceeds(data, MAX_DEPTH):
            raise ConfigError(f"{where}nested deeper than {MAX_DEPTH} levels")
        if not strict:
            data = cls._drop_unknown(data, source)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(cls, exc, source)) from None

    @classmethod
    def _drop_unknown(cls, data: dict[str, Any], source: str) -> dict[str, Any]:
        valid = set(_valid_keys(cls)) | set(cls.model_fields)
        unknown = sorted((k for k in data if k not in valid), key=str)  # keys may mix types
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


# ------------------------------------------------------------------------------ reference tables
def _type_name(annotation: Any) -> str:
    """A short, reader-facing spelling of a field's type (``int | None``, ``list[int]``)."""
    origin = get_origin(annotation)
    if origin is Annotated:  # validators attached to a type are not part of its name
        return _type_name(get_args(annotation)[0])
    if origin is None:
        if isinstance(annotation, type):
            return annotation.__name__
        return str(annotation).replace("typing.", "")
    args = get_args(annotation)
    if origin in (Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    name = getattr(origin, "__name__", str(origin).replace("typing.", ""))
    return f"{name}[{', '.join('...' if a is Ellipsis else _type_name(a) for a in args)}]"


def _default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:  # a factory that needs the validated data
            return "computed"
        if isinstance(value, BaseModel):
            return "(section)"
    else:
        value = field.default
    return "null" if value is None else repr(value)


def config_rows(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(dotted key, type, default, description)`` for every setting of ``cls``, sub-sections
    flattened into dotted keys, in declaration order — the source of the README's key tables, so the
    documentation is generated from the types and cannot drift from them."""
    rows: list[tuple[str, str, str, str]] = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(config_rows(ann, prefix=f"{key}."))
            continue
        description = " ".join((field.description or "").split())
        rows.append((key, _type_name(ann), _default_text(field), description))
    return rows


def config_table(cls: type[BaseModel], prefix: str = "") -> str:
    """:func:`config_rows` as a markdown table."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, type_name, default, description in config_rows(cls, prefix):
        cells = [f"`{key}`", f"`{type_name}`", f"`{default}`", description]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)
