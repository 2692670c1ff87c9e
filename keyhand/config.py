"""One configuration toolkit for keyhand: the pydantic section base, one YAML loader, one merge, one error line.

    from keyhand.config import Section, ConfigError, load_yaml, merge, apply_overrides, format_validation_error
    data = load_yaml("params.yaml")                    # ConfigError: "params.yaml: line 3: not valid YAML (...)"
    data = merge(profile_defaults, data)               # nested mappings merge, what ``data`` states wins
    data = apply_overrides(data, {"train.lr": 1e-3})   # dotted keys (sweep rows, CLI flags, dvc exp run -S)

Every section (:class:`Section`) is frozen and forbids unknown keys; a validation error becomes one line
naming the dotted key: ``params.yaml: model.ve_blocks: must be less than or equal to 6 (paper: 2, 4, 5), got 7``.
Used by :class:`keyhand.model.framework.ModelConfig`, ``trainers.config`` and ``pipeline.params``.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["ConfigError", "SectionError", "Section", "load_yaml", "merge", "apply_overrides", "format_validation_error",
           "not_bool", "PROFILES_DIR", "profile_names", "load_profile"]

#: The profiles: YAML overlays of the params schema, one file each (``profiles/<name>.yaml``, in the repository).
PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"


def not_bool(v: Any) -> Any:
    """A pydantic before-validator: a YAML true/false is not a number."""
    if isinstance(v, bool):
        raise ValueError(f"must be a number, got {v!r}")
    return v


class ConfigError(ValueError):
    """A bad configuration: the message is one line naming the file (if any) and the dotted key."""


class SectionError(ConfigError):
    """A section constructed directly (``ModelConfig(ve_blocks=9)``) with a bad value: one line, and the
    structured pydantic error, so that a file that embeds the section names the key once (``model.ve_blocks``)."""

    def __init__(self, exc: ValidationError, model: type[BaseModel], prefix: tuple = ()) -> None:
        self.validation_error, self.model = exc, model
        super().__init__(format_validation_error(exc, model=model, prefix=prefix))


class Section(BaseModel):
    """A frozen, validated group of settings; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def load_yaml(path: str | os.PathLike, what: str = "configuration") -> dict[str, Any]:
    """The mapping in YAML file ``path`` ({} for an empty file); :class:`ConfigError` (one line) otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such {what} file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        raise ConfigError(f"{p}:{where} not valid YAML ({getattr(e, 'problem', None) or type(e).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections, got {type(data).__name__}")
    return data


def profile_names() -> tuple[str, ...]:
    """The profiles there are: the stems of ``profiles/*.yaml`` (``default``, ``paper``, ...), sorted."""
    return tuple(sorted(f.stem for f in PROFILES_DIR.glob("*.yaml")))


@functools.cache
def _profile(name: str, stamp: tuple) -> dict[str, Any]:
    path = PROFILES_DIR / f"{name}.yaml"
    data = load_yaml(path, "profile")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or parent == name:
        raise ConfigError(f"{path}: extends: must name another profile ({', '.join(profile_names())}), got {parent!r}")
    return merge(load_profile(parent, _seen=(*stamp[0], name)), data)


def load_profile(name: str, _seen: tuple = ()) -> dict[str, Any]:
    """The nested mapping profile ``name`` sets (``profiles/<name>.yaml``; ``extends: <other>`` in it merges it
    over that other profile). ConfigError (one line) for an unknown profile or a cycle of ``extends``."""
    if name not in profile_names():
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(profile_names())} "
                          f"(files in {PROFILES_DIR})")
    if name in _seen:
        raise ConfigError(f"{PROFILES_DIR / (name + '.yaml')}: extends: a cycle ({' -> '.join((*_seen, name))})")
    path = PROFILES_DIR / f"{name}.yaml"
    return copy.deepcopy(_profile(name, (_seen, path.stat().st_mtime_ns)))


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base`` (deep copies): nested mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with dotted-key overrides applied, e.g. ``{"train.lr": 1e-3, "loss": {"reg": 0}}``.

    A dotted key becomes the nested mapping it names, then everything is merged with :func:`merge`.
    """
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        *head, last = str(key).split(".")
        node = {last: value}
        for part in reversed(head):
            node = {part: node}
        nested = merge(nested, node)
    return merge(data, nested)


def _allowed_keys(model: type[BaseModel] | None, loc: tuple) -> list[str] | None:
    """Field names of the section at ``loc`` (a path of field names from ``model``), if it is a section."""
    cls = model
    for part in loc:
        field = cls.model_fields.get(part) if cls is not None and isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return sorted(cls.model_fields) if cls is not None else None


def _field_note(model: type[BaseModel] | None, loc: tuple) -> str | None:
    """The ``description`` of the field at ``loc`` (e.g. "paper: 2, 4, 5"), if any."""
    cls, field = model, None
    for part in loc:
        if cls is None or not isinstance(part, str) or part not in cls.model_fields:
            return None
        field = cls.model_fields[part]
        ann = field.annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return getattr(field, "description", None)


def format_validation_error(exc: ValidationError, source: str | os.PathLike | None = None,
                            model: type[BaseModel] | None = None, prefix: tuple = ()) -> str:
    """One line from a pydantic error: ``[source: ]key.path: must be <rule> (<note>), got <value>`` (+ N more).

    ``model``: the validated class (to list the allowed keys of an unknown one and the field's note);
    ``prefix``: the dotted location of the validated mapping inside the file (e.g. ``("model",)``).
    """
    errors = exc.errors(include_url=False)
    head = f"{source}: " if source is not None else ""
    if not errors:
        return f"{head}invalid configuration"
    e = errors[0]
    loc = tuple(p for p in e.get("loc", ()) if not (isinstance(p, str) and p.startswith("function-")))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    inner = (e.get("ctx") or {}).get("error")
    if isinstance(inner, SectionError):  # a section validated by its own constructor, inside this one
        line = format_validation_error(inner.validation_error, None, inner.model, prefix=(*prefix, *loc))
        return f"{head}{line}{more}".replace("\n", " ")
    key = ".".join(str(p) for p in (*prefix, *loc)) or "(top level)"
    if e.get("type") == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        msg = "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    elif e.get("type") == "missing":
        msg = "required key is missing"
    else:
        msg = str(e.get("msg", "invalid value"))
        for lead, repl in (("Value error, ", ""), ("Assertion failed, ", ""), ("Input should be ", "must be ")):
            if msg.startswith(lead):
                msg = repl + msg[len(lead):]
        note = _field_note(model, loc)
        if note:
            msg += f" ({note})"
        if "input" in e and not isinstance(e["input"], dict | list) and "got " not in msg:
            msg += f", got {e['input']!r}"
    return f"{head}{key}: {msg}{more}".replace("\n", " ")
