"""Reading a config: YAML (safe-loaded), ``--set a.b=c`` overrides, one-line errors.

``load_config(path, overrides)`` reads a YAML file, applies the overrides (values parsed as
YAML scalars), validates the result into a :class:`~blackbox.config.schema.StudyConfig` and
checks that its space, objective and strategy can meet (:mod:`blackbox.config.rules`).  Every
problem is a :class:`~blackbox.config.base.ConfigError` with one line naming the field and what
is allowed.  No ``exec``, no pickle.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from blackbox.config.base import ConfigError
from blackbox.config.schema import StudyConfig
from blackbox.masking import mask_url, short_repr


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic model classes inside an annotation (through Optional, Union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        out.extend(_models_in(arg))
    return out


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], type | None]:
    """Drop discriminator tags from ``loc``; also return the model holding its last key."""
    current: Any = model
    clean: list[Any] = []
    parts = list(loc)
    i = 0
    while i < len(parts):
        part = parts[i]
        clean.append(part)
        i += 1
        if isinstance(part, int) or current is None:
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            current = None
            continue
        models = _models_in(field.annotation)
        if len(models) > 1 and i + 1 < len(parts) and isinstance(parts[i], int):
            tagged = [m for m in models if _tag(m) == parts[i + 1]]
            if tagged:  # a list of tagged unions (side_effects.0.kl.max): drop the tag too
                clean.append(parts[i])
                current = tagged[0]
                i += 2
                continue
        if len(models) > 1 and i < len(parts) and isinstance(parts[i], str):
            tagged = [m for m in models if _tag(m) == parts[i]]
            if tagged:  # pydantic puts the union member's tag into the location: drop it
                current = tagged[0]
                i += 1
                continue
        current = models[0] if models else None
    return tuple(clean), current


def _tag(model: type[BaseModel]) -> Any:
    field = model.model_fields.get("type")
    args = getattr(field.annotation, "__args__", ()) if field is not None else ()
    return args[0] if args else None


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model at ``loc``'s parent (for 'unknown key' messages)."""
    _, parent = _walk(model, loc[:-1])
    return list(getattr(parent, "model_fields", {})) if loc[:-1] else list(model.model_fields)


def _shown(value: Any, msg: str) -> str:
    """`` (got VALUE)``: passwords masked, at most 60 characters, nothing when the message
    already quotes the value."""
    text = mask_url(short_repr(value, 80))
    if text[:20] in msg:
        return ""
    return f" (got {text if len(text) <= 60 else text[:57] + '...'})"


def format_validation_error(exc: ValidationError, model: type[BaseModel] = StudyConfig) -> str:
    """One line for the first error: the field, what is wrong, what is allowed."""
    err = exc.errors()[0]
    raw = tuple(err.get("loc", ()))
    loc, _ = _walk(model, raw)
    where = _field_path(loc)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, raw)
        return f"config: unknown key {where!r}; allowed here: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"config: {where}: required field is missing"
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) else _shown(got, msg)
    named = re.match(r"^([a-z_]+): ", msg)
    if named and raw and err["type"] == "value_error":  # a section's check names its field
        return f"config: {where}.{msg}{shown}"
    if not loc:  # a whole-config check names its own field ("task: ...")
        return f"config: {msg}{shown}"
    return f"config: {where}: {msg}{shown}"


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (``c`` parsed as YAML) to a nested dict (copied)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: empty key segment")
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a mapping")
            node = nxt
        node[parts[-1]] = _parse_scalar(value)
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Safe-load a YAML mapping from ``path``."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config: {str(path)!r} is a directory; give a YAML file")
    if not path.is_file():
        raise ConfigError(f"config: file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"config: {path} line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); "
            "save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config: {path}: cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"config: {path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path}: top level must be a mapping of keys to values")
    return data


def validate(data: dict[str, Any], rules: bool = True) -> StudyConfig:
    """Validate a config mapping; raise :class:`ConfigError` with one line on failure.

    With ``rules``, also check that the space, objective and strategy can meet.
    """
    try:
        cfg = StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    if rules:
        from blackbox.config.rules import check_study

        check_study(cfg)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """Read, override and validate a study config."""
    return validate(apply_overrides(read_yaml(path), overrides or []))
