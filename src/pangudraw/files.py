"""Files in and out, safely.

Reading: every file pangu-draw reads may come from someone else (a model folder, a PNG, a
dataset), so a file that is missing, unreadable, not UTF-8, not valid JSON, nested too
deep or a symlink loop is a :class:`UserError` that names it, never a traceback.

Writing: every output is checked before the work starts (:func:`check_outputs`) and
written whole or not at all (:func:`write_outputs`): files go to temporary names beside
their targets and are renamed into place only when all of them are written, so a run
that fails part-way leaves every pre-existing file as it was and no temporary file.

Design: docs/design.md, section 5.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import UserError


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``; ``what`` names the file in errors ("prompts file")."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UserError(f"{what} {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise UserError(f"{what} {path} is a folder, not a file") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:  # a symlink loop, no permission, ...
        raise UserError(f"{what} {path} cannot be read: {exc.strerror or exc}") from exc


MAX_DEPTH = 32  # far deeper than any file pangu-draw reads; deeper is an attack or a mistake


def check_depth(value, where: str) -> None:
    """Refuse lists and tables nested deeper than :data:`MAX_DEPTH` (checked without recursion)."""
    level = [value]
    for _ in range(MAX_DEPTH + 1):
        level = [
            child
            for node in level
            if isinstance(node, dict | list)
            for child in (node.values() if isinstance(node, dict) else node)
        ]
        if not level:
            return
    raise UserError(f"{where}: nested deeper than {MAX_DEPTH} levels")


def parse_json(text: str, where: str):
    """JSON from ``text``; NaN and infinity are refused, as is nesting too deep to read."""

    def constant(name: str):
        raise ValueError(f"{name} is not a number JSON allows")

    try:
        value = json.loads(text, parse_constant=constant)
    except RecursionError as exc:
        raise UserError(f"{where}: nested too deeply to be read") from exc
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise UserError(f"{where}: not valid JSON: {exc}") from exc
    check_depth(value, where)
    return value


def read_json(path: Path, what: str, kind: type = dict):
    """The JSON value in ``path``, which must be a ``kind`` (an object by default)."""
    value = parse_json(read_text(path, what), f"{what} {path}")
    if not isinstance(value, kind):
        expected = {dict: "an object", list: "a list"}.get(kind, kind.__name__)
        raise UserError(f"{what} {path}: expected {expected} at the top level")
    return value


def inside(folder: Path, name: str) -> bool:
    """Whether relative path ``name`` stays inside ``folder`` (a resolved path).

    Decided on the text first: an absolute path or one with ``..`` is outside without the
    file system being asked, so a refusal says nothing about what exists out there. A
    symlink inside that leads out counts as outside.
    """
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        return False
    return (folder / name).resolve().is_relative_to(folder)


def within(folder: Path, path: Path) -> bool:
    """Whether absolute ``path`` is ``folder`` or inside it, symlinks resolved, and names no
    ``..`` on the way."""
    if ".." in path.parts:
        return False
    return path.resolve().is_relative_to(Path(folder).resolve())


# ---------------------------------------------------------------------------- outputs


def _existing_ancestor(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            return parent
    return Path(path.anchor or ".")


def check_output(path: Path, what: str = "output") -> None:
    """Refuse an output path that cannot be written, before any work.

    Refused: an empty path, an existing folder, a parent that is a file, a parent folder
    that cannot be written. Missing parent folders are fine: they are created on writing.
    """
    if str(path) in ("", "."):
        raise UserError(f"{what} path is empty; give a file name")
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise UserError(f"{what} {path} cannot be written: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} cannot be written: {ancestor} is not writable")


def check_outputs(paths: list[Path], what: str = "output") -> None:
    """:func:`check_output` for each path, and no two the same."""
    seen = set()
    for path in paths:
        check_output(path, what)
        key = os.path.abspath(path)
        if key in seen:
            raise UserError(f"{what} {path} is named twice; give distinct names")
        seen.add(key)


def check_output_folder(folder: Path, what: str = "output folder") -> None:
    """Refuse a folder that cannot be created or written, before any work."""
    if str(folder) in ("", "."):
        return
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file; give a folder")
    target = folder if folder.is_dir() else _existing_ancestor(folder)
    if not target.is_dir():
        raise UserError(f"{what} {folder} cannot be created: {target} is not a folder")
    if not os.access(target, os.W_OK | os.X_OK):
        raise UserError(f"{what} {folder} cannot be written: {target} is not writable")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_outputs(writers: dict[Path, Callable[[BinaryIO], None]]) -> None:
    """Write every file whole, then rename them all into place; on failure, none changes.

    ``writers`` maps each target path to a function that writes its bytes to a binary
    file. Missing parent folders are created (and removed again if writing fails). Files
    get the usual permissions (0666 less the umask, so 0644 under a normal umask).
    """
    mode = 0o666 & ~_umask()
    created: list[Path] = []
    temporary: dict[Path, str] = {}
    try:
        for path in writers:
            for parent in reversed(path.parents):
                if not parent.exists():
                    parent.mkdir()
                    created.append(parent)
        for path, write in writers.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temporary[path] = tmp
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.chmod(tmp, mode)
        for path, tmp in temporary.items():
            os.replace(tmp, path)
    except BaseException as exc:
        for tmp in temporary.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
        for folder in reversed(created):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {exc.filename or 'the output'}: {exc.strerror}") from exc
        raise


def safetensors_writer(tensors: dict) -> Callable[[BinaryIO], None]:
    """A :func:`write_outputs` writer for a dict of tensors as a safetensors file."""
    from safetensors.torch import save

    return lambda f: f.write(save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def json_writer(value) -> Callable[[BinaryIO], None]:
    """A :func:`write_outputs` writer for a JSON value (UTF-8, indented)."""
    return lambda f: f.write((json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode())


def write_text(path: Path, text: str) -> None:
    """One text file, written whole (see :func:`write_outputs`)."""
    write_outputs({Path(path): lambda f: f.write(text.encode())})


def keep_by_content(path: str | Path, folder: Path, what: str) -> tuple[Path, Callable | None]:
    """Where a file someone gave is kept beside an output in ``folder``: ``inputs/`` under
    the first 16 hex digits of its SHA-256 and its suffix; and the writer that puts it there
    (None when it is that file already). A record that names it then reproduces from the
    output's folder alone."""
    import hashlib

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise UserError(f"{what} {path} does not exist") from exc
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read: {exc.strerror}") from exc
    name = hashlib.sha256(data).hexdigest()[:16] + Path(path).suffix.lower()
    target = (Path(folder) / "inputs" / name).resolve()
    if target == Path(path).resolve():
        return target, None
    return target, lambda f: f.write(data)


_MAX_HEADER = 100 * 2**20  # bytes; a safetensors header is a few MB at most


def _safetensors_header(path: Path) -> dict | None:
    """A ``.safetensors`` file's JSON header, read without torch; None if it is not one."""
    import struct

    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > _MAX_HEADER:
                return None
            header = json.loads(handle.read(size))
    except (OSError, ValueError, struct.error):
        return None
    return header if isinstance(header, dict) else None


def safetensors_keys(path: Path) -> list[str] | None:
    """The tensor names in a ``.safetensors`` file's header, read without torch; None if it
    is not one."""
    header = _safetensors_header(path)
    return None if header is None else [k for k in header if k != "__metadata__"]


def safetensors_numel(path: Path) -> int | None:
    """How many values a ``.safetensors`` file's header says it holds (None if it is not
    one, or a shape is not a list of whole numbers)."""
    import math

    header = _safetensors_header(path)
    if header is None:
        return None
    total = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            return None
        total += math.prod(shape)
    return total


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def drop_loading_paths(folder: Path) -> None:
    """Remove ``_name_or_path`` (where a component was loaded from: a machine path) from
    every diffusers config under ``folder``."""
    for path in Path(folder).rglob("config.json"):
        config = json.loads(path.read_text())
        if config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
