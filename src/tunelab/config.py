"""Typed, strict run configuration.

An options schema is a dataclass; every field is a command-line flag
(`learning_rate` -> `--learning-rate`) and a key a YAML/TOML file may hold.
Precedence: dataclass default < config file < command line. An unknown key or
a value of the wrong type is a TunelabError naming the key and suggesting the
nearest valid one.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import reprlib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from tunelab.errors import TunelabError

MAX_CONFIG_NODES = 100_000  # values a config file may expand to (a real one has hundreds)
MAX_LIST_ITEMS = 10_000  # values one list option may hold


def option(help_text: str, repeat: bool = False, **kwargs):
    """A dataclass field that is also a flag: its help text, and `repeat` for `--flag A --flag B` lists."""
    return dataclasses.field(metadata={"help": help_text, "repeat": repeat}, **kwargs)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def closest(name: str, candidates) -> str:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def parse_weighted_path(spec: str) -> tuple[Path, float]:
    """'FILE' or 'FILE:WEIGHT' -> (path, weight); a trailing part that is not a number belongs to the path."""
    head, _, tail = spec.rpartition(":")
    if head:
        try:
            weight = float(tail)
        except ValueError:
            return Path(spec), 1.0
        if not math.isfinite(weight):
            raise TunelabError(f"{spec}: the weight {tail} is not a finite number")
        return Path(head), weight
    return Path(spec), 1.0


def _unwrap_optional(annotation):
    """`int | None` -> (int, True); `int` -> (int, False)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _schema_fields(schemas) -> dict[str, tuple[dataclasses.Field, Any]]:
    """Field name -> (field, resolved type) over several schemas; a name may appear once."""
    fields: dict[str, tuple[dataclasses.Field, Any]] = {}
    for schema in schemas:
        hints = typing.get_type_hints(schema)
        for field in dataclasses.fields(schema):
            if field.name in fields:
                raise ValueError(f"option {field.name!r} defined twice")  # a programming error, not user input
            fields[field.name] = (field, hints[field.name])
    return fields


def coerce(key: str, value: Any, annotation) -> Any:
    """Check one value against its annotation; convert only where the meaning is unambiguous."""
    base, optional = _unwrap_optional(annotation)
    if value is None:
        if optional:
            return None
        raise TunelabError(f"option {key!r} may not be empty")
    origin = typing.get_origin(base)
    if origin is Literal:
        choices = typing.get_args(base)
        if value not in choices:
            raise TunelabError(
                f"option {key!r}: {value!r} is not one of {', '.join(map(str, choices))}{closest(str(value), map(str, choices))}"
            )
        return value
    if origin is list:
        (item_type,) = typing.get_args(base)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise TunelabError(f"option {key!r} must be a list, got {type(value).__name__}")
        if len(value) > MAX_LIST_ITEMS:
            raise TunelabError(f"option {key!r} lists {len(value)} values; at most {MAX_LIST_ITEMS} are taken")
        return [coerce(key, item, item_type) for item in value]
    if base is bool:
        if isinstance(value, bool):
            return value
        raise TunelabError(f"option {key!r} must be true or false, got {_shown(value)}")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TunelabError(f"option {key!r} must be an integer, got {_shown(value)}")
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise TunelabError(f"option {key!r} must be a finite number, got {value!r}")
            return float(value)
        raise TunelabError(f"option {key!r} must be a number, got {_shown(value)}")
    if base is str:
        if isinstance(value, (str, Path)):
            return checked_text(key, str(value))
        raise TunelabError(f"option {key!r} must be text, got {_shown(value)}")
    raise TypeError(f"unsupported option type {annotation!r} for {key}")


def checked_text(key: str, text: str) -> str:
    """Text that can be written anywhere: no lone surrogates (invalid UTF-8 in an argument, or a JSON/YAML
    escape of half a character), which would fail later, in a file or a tokenizer."""
    if any("\ud800" <= character <= "\udfff" for character in text):
        raise TunelabError(f"option {key!r} is not valid text (invalid UTF-8, or half of a surrogate pair): "
                           f"{text.encode('utf-8', 'backslashreplace').decode('ascii', 'replace')[:80]}")
    return text


def _shown(value: Any) -> str:
    """A value in a message, cut short (a YAML alias can make a structure huge to print)."""
    return reprlib.repr(value)


class _BoundedLoader(yaml.SafeLoader):
    """YAML with aliases, but not the billion laughs: the expanded size of the document is counted without
    expanding it (a shared node is counted once per use) and refused past a limit."""

    def construct_document(self, node):
        _refuse_huge(node, {})
        return super().construct_document(node)


def _refuse_huge(node, sizes: dict[int, int]) -> int:
    """The number of nodes `node` stands for once every alias is expanded; memoised per node."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 0  # a recursive alias counts once
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_refuse_huge(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_refuse_huge(key, sizes) + _refuse_huge(value, sizes) for key, value in node.value)
    else:
        size = 1 + len(node.value) // 64
    if size > MAX_CONFIG_NODES:
        raise TunelabError(f"the file expands to over {MAX_CONFIG_NODES} values (aliases repeated inside aliases); refused")
    sizes[id(node)] = size
    return size


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"config file not found: {path}")
    if path.suffix.lower() not in (".toml", ".json", ".yaml", ".yml"):
        raise TunelabError(f"config file {path} must be .yaml, .yml, .toml or .json")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)  # a JSON parser: "\ud83d\ude00" is one character, as JSON means it
        else:
            data = yaml.load(text, Loader=_BoundedLoader)
    except TunelabError as error:
        raise TunelabError(f"config file {path}: {error}") from None
    except Exception as error:  # parse errors from yaml/tomllib carry the line number
        raise TunelabError(f"cannot parse config file {path}: {error}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TunelabError(f"config file {path} must hold a mapping of option: value")
    # Users write keys either way: learning-rate or learning_rate.
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def checked_values(schemas, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Values written by a user (a file, a list entry) checked against the schemas' options and typed."""
    fields = _schema_fields(schemas)
    checked = {}
    for key, value in values.items():
        key = str(key).replace("-", "_")
        if key not in fields:
            raise TunelabError(f"unknown option {key!r} in {where}{closest(key, fields)}")
        checked[key] = coerce(key, value, fields[key][1])
    return checked


def resolve(schemas, cli_values: dict[str, Any], config_path: str | Path | None = None) -> list[Any]:
    """Build one instance per schema from defaults, then the file, then the command line (or a program's values)."""
    fields = _schema_fields(schemas)
    merged: dict[str, Any] = {}
    if config_path is not None:
        merged = checked_values(schemas, read_config_file(config_path), str(config_path))
    for key, value in cli_values.items():
        merged[key] = coerce(key, value, fields[key][1])
    instances = []
    for schema in schemas:
        kwargs = {}
        for field in dataclasses.fields(schema):
            if field.name in merged:
                kwargs[field.name] = merged[field.name]
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise TunelabError(f"missing required option {flag_name(field.name)}")
        instances.append(schema(**kwargs))
    return instances


def add_arguments(parser: argparse.ArgumentParser, schemas) -> None:
    """One flag per field; defaults are suppressed so only what the user typed reaches `resolve`."""
    for name, (field, annotation) in _schema_fields(schemas).items():
        base, _ = _unwrap_optional(annotation)
        help_text = field.metadata.get("help", "")
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        origin = typing.get_origin(base)
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs["choices"] = typing.get_args(base)
        elif origin is list and field.metadata.get("repeat"):
            kwargs["action"] = "append"  # --flag A --flag B
        elif origin is list:
            kwargs["nargs"] = "+"
            item_type = typing.get_args(base)[0]
            kwargs["type"] = item_type if item_type in (int, float) else str
        else:
            kwargs["type"] = base if base in (int, float) else str
        parser.add_argument(flag_name(name), **kwargs)


def to_dict(*instances) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for instance in instances:
        merged.update(dataclasses.asdict(instance))
    return merged


def write_resolved(path: Path, resolved: dict[str, Any]) -> None:
    """Write the run's full configuration beside its outputs (it is also a valid --config file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")


def to_json(resolved: dict[str, Any]) -> str:
    return json.dumps(resolved, sort_keys=True)
