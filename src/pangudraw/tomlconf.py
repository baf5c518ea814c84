"""Typed reading of TOML tables with errors that name the file, the field and the form."""

from __future__ import annotations

import copy
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
    text = read_text(path, what)
    try:
        table = tomllib.loads(text)
    except RecursionError as exc:
        raise UserError(f"{what} {path}: nested too deeply to be read") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from exc
    check_depth(table, f"{what} {path}")
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
        for part in parts[:-1]:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
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
