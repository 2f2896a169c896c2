"""Reading a config: YAML (safe-loaded), ``--set a.b=c`` overrides, one-line errors.

``load_config(path, overrides)`` reads a YAML file (safe-loaded; a key given twice in one
mapping is an error, not "the last one wins"), applies the overrides (values parsed as YAML
scalars; list items addressed as ``a.1.b`` or ``a[1].b``), validates the result into a
:class:`~blackbox.config.schema.StudyConfig` and checks that its space, objective and strategy
can meet (:mod:`blackbox.config.rules`).  Every problem is a
:class:`~blackbox.sections.ConfigError` with one line naming the field and what
is allowed.  No ``exec``, no pickle.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from blackbox.config.schema import StudyConfig, study_schema
from blackbox.masking import mask_url, short_repr
from blackbox.sections import ConfigError


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
    raw = short_repr(value, 80)
    text = mask_url(raw)
    if text[:20] in msg or raw[:20] in msg:
        return ""
    return f" (got {text if len(text) <= 60 else text[:57] + '...'})"


def format_validation_error(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line for the first error: the field, what is wrong, what is allowed (``model``: the
    class validated, default the study schema of the registered components)."""
    model = model or study_schema()
    err = exc.errors()[0]
    raw = tuple(err.get("loc", ()))
    loc, _ = _walk(model, raw)
    where = _field_path(loc)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, raw)
        return f"config: unknown key {where!r}; allowed here: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"config: {where}: required field is missing"
    if err["type"] == "union_tag_invalid":  # pydantic quotes the tag raw (a newline and all)
        ctx = err.get("ctx", {})
        field = str(ctx.get("discriminator", "type")).strip("'")
        return (
            f"config: {where}.{field}: {short_repr(ctx.get('tag'))} is not a known {field}; "
            f"allowed: {ctx.get('expected_tags', '')}"
        )
    # one line: a value pydantic quotes in its message may hold a newline
    msg = err.get("msg", "invalid").removeprefix("Value error, ").replace("\n", "\\n")
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) else _shown(got, msg)
    named = re.match(r"^([a-z_]+): ", msg)
    if named and raw and err["type"] == "value_error":  # a section's check names its field
        return f"config: {where}.{msg}{shown}"
    if not loc:  # a whole-config check names its own field ("task: ...")
        return f"config: {msg}{shown}"
    return f"config: {where}: {msg}{shown}"


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (at any depth; keys a
    merge ``<<: *anchor`` brings in may still be overridden, as YAML intends)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(
                    None,
                    None,
                    f"duplicate key {short_repr(key)} (first on line {seen[key]}); give each "
                    "key once",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (:class:`UniqueKeyLoader`)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _parse_scalar(text: str, item: str) -> Any:
    try:
        return safe_load(text)
    except DuplicateKeyError as exc:
        raise ConfigError(f"--set {item!r}: {exc.problem}") from None
    except yaml.YAMLError:
        return text


INDEX = re.compile(r"\[(\d+)\]")


def _key_parts(key: str, item: str) -> list[str]:
    """``a.b[1].c`` -> ``["a", "b", "1", "c"]`` (``a.b.1.c`` gives the same)."""
    parts: list[str] = []
    for segment in key.strip().split("."):
        head = INDEX.split(segment)  # "b[1][2]" -> ["b", "1", "", "2", ""]
        name, indices = head[0], head[1::2]
        if INDEX.sub("", segment) != name or (not name and not indices):
            raise ConfigError(f"--set {item!r}: empty or malformed key segment {segment!r}")
        parts += ([name] if name else []) + indices
    return parts


def _items(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"


def _child(node: Any, part: str, where: str, key: str) -> tuple[Any, Any]:
    """The container and the key (a str or a list index) that ``part`` addresses in ``node``."""
    if isinstance(node, dict):
        return node, part
    if isinstance(node, list):
        if not part.isdigit():
            raise ConfigError(
                f"--set {key}: {where} is a list of {_items(len(node))}; address an item by its "
                f"index (0..{len(node) - 1}), not {part!r}"
            )
        index = int(part)
        if index >= len(node):
            span = f"0..{len(node) - 1}" if node else "none"
            raise ConfigError(
                f"--set {key}: {where}: index {index} is out of range ({_items(len(node))}; "
                f"allowed: {span})"
            )
        return node, index
    raise ConfigError(
        f"--set {key}: {where} is {short_repr(node)}, not a mapping or a list, so it has no "
        f"{'item' if part.isdigit() else 'key'} {part!r}"
    )


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (``c`` parsed as YAML) to a nested dict (copied).  List items
    are addressed by index: ``space.vectors.1.name=x`` or ``side_effects[0].size=8``."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        key, value = item.split("=", 1)
        parts = _key_parts(key, item)
        key = key.strip()
        node: Any = data
        for i, p in enumerate(parts[:-1]):
            where = ".".join(parts[: i + 1])
            container, k = _child(node, p, ".".join(parts[:i]) or "the config", key)
            nxt = container[k] if isinstance(container, list) else container.get(k)
            if nxt is None:
                if parts[i + 1].isdigit():
                    raise ConfigError(
                        f"--set {key}: {where} is not set, so it has no item {parts[i + 1]}"
                    )
                nxt = container[k] = {}
            node = nxt
        container, k = _child(node, parts[-1], ".".join(parts[:-1]) or "the config", key)
        container[k] = _parse_scalar(value, item)
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Safe-load a YAML mapping from ``path`` (a regular file; duplicate keys refused)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config: {str(path)!r} is a directory; give a YAML file")
    if not path.exists():
        raise ConfigError(f"config: file {str(path)!r} does not exist")
    if not path.is_file():  # /dev/zero, a FIFO, a socket: reading could never end
        raise ConfigError(f"config: {str(path)!r} is not a regular file; give a YAML file")
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"config: {path} line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); "
            "save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config: {path}: cannot be read ({exc.strerror or exc})") from None
    except DuplicateKeyError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise ConfigError(f"config: {path} line {line}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"config: {path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(
            f"config: {path}: not a YAML mapping (got {got}); the top level must be a mapping "
            "of keys to values"
        )
    return data


def validate(data: dict[str, Any], rules: bool = True) -> StudyConfig:
    """Validate a config mapping; raise :class:`ConfigError` with one line on failure.

    With ``rules``, also check that the space, objective and strategy can meet.
    """
    schema = study_schema()
    try:
        cfg = schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, schema)) from None
    if rules:
        from blackbox.config.rules import check_study

        check_study(cfg)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """Read, override and validate a study config."""
    return validate(apply_overrides(read_yaml(path), overrides or []))
