"""Typed reading of TOML tables with errors that name the file, the field and the form."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from .errors import UserError
from .files import check_depth, read_text

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def read_toml(path: Path, what: str) -> dict:
    """The table in ``path``; a missing, unreadable or bad file is a :class:`UserError`."""
    return parse_toml(read_text(path, what), what, str(path))


def parse_toml(text: str, what: str, source: str) -> dict:
    """The table in TOML ``text`` (from ``source``); bad TOML is a :class:`UserError`."""
    try:
        table = tomllib.loads(text)
    except RecursionError as exc:
        raise UserError(f"{what} {source}: nested too deeply to be read") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{source}: not valid TOML: {exc}") from exc
    check_depth(table, f"{what} {source}")
    return table


class TableReader:
    """Typed access to one TOML table, with errors that name the file and the field."""

    def __init__(self, source: str, table: dict, where: str, allowed: set[str]):
        self.source, self.table, self.where = source, table, where
        unknown = sorted(set(table) - allowed)
        if unknown:
            self.fail(unknown[0], f"unknown key; allowed keys are {', '.join(sorted(allowed))}")

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, expected: str):
        raise UserError(f"{self.source}: {self.path(key)}: {expected}")

    def get(self, key: str, kind, default=None, required: bool = False):
        if key not in self.table:
            if required:
                self.fail(key, f"missing; expected {_describe(kind)}")
            return default
        value = self.table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            self.fail(key, f"expected {_describe(kind)}, got {value!r}")
        if kind is float and not math.isfinite(value):
            self.fail(key, f"expected a finite number, got {value!r}")
        return value


def _describe(kind) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        dict: "a table",
        list: "a list",
    }.get(kind, str(kind))


def apply_overrides(data: dict, overrides: list[str], source: str) -> dict:
    """``key=value`` overrides on dotted paths (``seed=3``, ``experts.1.weight=0.5``).

    Values are read as TOML values (``7``, ``0.5``, ``"text"``, ``[32, 32]``); anything
    that is not a TOML value is taken as a string.
    """
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected key=value, e.g. seed=3")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node, parts = data, key.split(".")
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and not isinstance(node.get(part, {}), dict | list):
                where = ".".join(parts[: depth + 1])
                raise UserError(f"--set {key}: {where} is a single value in {source}, not a table")
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise UserError(f"--set {key}: {source} has no {part!r} there")
        last = parts[-1]
        if isinstance(node, list):
            if not (last.isdigit() and int(last) < len(node)):
                raise UserError(f"--set {key}: index {last} is out of range")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def _key(name: str) -> str:
    bare = name and all(c.isascii() and (c.isalnum() or c in "-_") for c in name)
    return name if bare else json.dumps(name, ensure_ascii=False)


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            raise ValueError("TOML recipes hold no NaN")
        return ("-inf" if value < 0 else "inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        # JSON's escapes are TOML's; TOML also wants DEL escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise ValueError(f"{type(value).__name__} has no TOML form")


def dumps(table: dict) -> str:
    """A table as TOML the way recipes are written by hand: scalars and inline values first,
    then each sub-table as ``[name]`` and each list of tables as ``[[name]]`` (their own
    nested values inline). ``None`` values are left out."""

    def lines_of(t: dict) -> list[str]:
        return [f"{_key(k)} = {_value(v)}" for k, v in t.items() if v is not None]

    def is_tables(v) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    plain = {k: v for k, v in table.items() if not isinstance(v, dict) and not is_tables(v)}
    out = lines_of(plain)
    for k, v in table.items():
        if isinstance(v, dict):
            out += ["", f"[{_key(k)}]", *lines_of(v)]
    for k, v in table.items():
        if is_tables(v):
            for item in v:
                out += ["", f"[[{_key(k)}]]", *lines_of(item)]
    return "\n".join(out) + "\n"
