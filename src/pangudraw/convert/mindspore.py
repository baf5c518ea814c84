"""A reader of MindSpore ``.ckpt`` checkpoints that needs no MindSpore.

A ``.ckpt`` is one protobuf message (``mindspore/ccsrc/utils/checkpoint.proto``)::

    message Checkpoint { message Value { required string tag = 1;
                                         required TensorProto tensor = 2; }
                         repeated Value value = 1; }
    message TensorProto { repeated int64 dims = 1; required string tensor_type = 2;
                          required bytes tensor_content = 3; }

A large tensor is written as consecutive values with the same tag whose contents
concatenate; newer files end in a 17-byte ``crc_num`` trailer. The file is memory-mapped
and each tensor is a view of its bytes (copied only when it was split), so reading holds
one tensor at a time on top of what the caller keeps.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

DTYPES = {
    "Float16": np.float16,
    "Float32": np.float32,
    "Float64": np.float64,
    "Int8": np.int8,
    "Int16": np.int16,
    "Int32": np.int32,
    "Int64": np.int64,
    "UInt8": np.uint8,
    "Bool": np.bool_,
}
BFLOAT16 = "BFloat16"  # numpy has no bfloat16: read as uint16 bits, widened by torch
CRC_TRAILER = 17  # b"crc_num" and ten digits


class CheckpointError(UserError):
    """The file is not a readable MindSpore checkpoint (truncated, corrupt, another format)."""


@dataclass
class Tensor:
    """One named tensor: its dtype name as MindSpore writes it, shape and data."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: np.ndarray  # flat; uint16 bit patterns for BFloat16

    def to_torch(self):
        """A tensor over the same memory (read-only: the file is mapped read-only)."""
        import warnings

        import torch

        data = self.data.view(np.int16) if self.dtype == BFLOAT16 else self.data
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            flat = torch.from_numpy(data)
        if self.dtype == BFLOAT16:
            flat = flat.view(torch.bfloat16)
        return flat.reshape(self.shape)


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end:
            raise CheckpointError("ends inside a number")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise CheckpointError("has a malformed number")


def _fields(buf, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or start, end) for each field in buf[pos:end]."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise CheckpointError("ends inside a field (the file is truncated)")
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 1:
            pos += 8
            yield number, wire, pos - 8, pos
        elif wire == 5:
            pos += 4
            yield number, wire, pos - 4, pos
        else:
            raise CheckpointError(f"has an unknown field type {wire}")
        if pos > end:
            raise CheckpointError("ends inside a field (the file is truncated)")


def _text(buf, start: int, end: int, what: str) -> str:
    try:
        return bytes(buf[start:end]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"has a {what} that is not text") from exc


def _value(buf, start: int, end: int) -> tuple[str, tuple[int, ...], str, int, int]:
    """One ``Value``: (tag, dims, dtype name, content start, content end)."""
    tag = dtype = None
    dims: list[int] = []
    content = None
    for number, wire, a, b in _fields(buf, start, end):
        if number == 1 and wire == 2:
            tag = _text(buf, a, b, "name")
        elif number == 2 and wire == 2:
            for n, w, c, d in _fields(buf, a, b):
                if n == 1 and w == 0:
                    dims.append(c)
                elif n == 1 and w == 2:  # packed dims
                    pos = c
                    while pos < d:
                        dim, pos = _varint(buf, pos, d)
                        dims.append(dim)
                elif n == 2 and w == 2:
                    dtype = _text(buf, c, d, "type name")
                elif n == 3 and w == 2:
                    content = (c, d)
    if tag is None or dtype is None or content is None:
        raise CheckpointError("has an entry without a name, type or data")
    return tag, tuple(dims), dtype, *content


def _assemble(tag: str, dims: tuple[int, ...], dtype: str, pieces: list) -> Tensor:
    if dtype == BFLOAT16:
        np_dtype = np.uint16
    elif dtype in DTYPES:
        np_dtype = DTYPES[dtype]
    else:
        raise CheckpointError(f"tensor {tag} has type {dtype!r}, which pangu-draw does not read")
    raw = pieces[0] if len(pieces) == 1 else b"".join(bytes(p) for p in pieces)
    itemsize = np.dtype(np_dtype).itemsize
    if len(raw) % itemsize:
        raise CheckpointError(f"tensor {tag} has {len(raw)} bytes, not whole {dtype} values")
    data = np.frombuffer(raw, dtype=np_dtype)
    count = int(np.prod(dims)) if dims else 1
    if dims in ((), (0,)) and data.size == 1:  # a scalar
        dims = ()
    elif data.size != count:
        raise CheckpointError(
            f"tensor {tag} has {data.size} values for shape {list(dims)} (the file is truncated "
            "or corrupt)"
        )
    return Tensor(tag, dtype, dims, data)


def read_checkpoint(path: str | Path) -> Iterator[Tensor]:
    """Yield the tensors of a MindSpore checkpoint in file order.

    Raises :class:`CheckpointError` (a one-line :class:`UserError`) for a missing,
    truncated or corrupt file, or one that is not a MindSpore checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # an empty file cannot be mapped
            raise CheckpointError(f"checkpoint {path} is empty") from exc
    try:
        yield from _tensors(buf, path)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path} {exc}") from None


def _tensors(buf, path: Path) -> Iterator[Tensor]:
    end = len(buf)
    if end >= CRC_TRAILER and buf[end - CRC_TRAILER : end - 10] == b"crc_num":
        end -= CRC_TRAILER
    view = memoryview(buf)
    current = None  # (tag, dims, dtype, [content views])
    count = 0
    for number, wire, a, b in _fields(buf, 0, end):
        if number != 1 or wire != 2:
            raise CheckpointError("is not a MindSpore checkpoint (unexpected top-level field)")
        tag, dims, dtype, c, d = _value(buf, a, b)
        if current is not None and current[0] == tag:
            current[3].append(view[c:d])
            continue
        if current is not None:
            yield _assemble(*current)
            count += 1
        current = (tag, dims, dtype, [view[c:d]])
    if current is None:
        raise CheckpointError("holds no tensors (not a MindSpore checkpoint?)")
    yield _assemble(*current)
