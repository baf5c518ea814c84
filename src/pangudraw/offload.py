"""Experts in working memory one window at a time (``--offload``).

A generation knows in advance when each expert works: its noise window on the loop's
steps. With ``window`` an expert's denoiser is in working memory only while its window is
open; the loop releases it when the window closes and it comes back (on its next
:meth:`pangudraw.expert.Expert.predict`) when one opens:

- on a GPU, a released denoiser waits in host memory and moves to the GPU when its window
  opens (the move is synchronous: no prefetch);
- on the CPU, its weights are written once to a safetensors file in a temporary folder and
  dropped; they are read back when its window opens (from the page cache, usually) and
  dropped again when it closes. A pair's peak memory is then about the larger denoiser's,
  not the sum (``benchmarks/bench_memory.py``).

``sequential`` is accelerate's ``cpu_offload``: every submodule's weights move to the
execution device for its own forward, for GPUs that cannot hold one denoiser (slow; on
the CPU it saves nothing). Text encoders and VAEs stay where they are in every mode; on a
GPU with ``window`` the text encoders move there for their call only.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from itertools import chain
from pathlib import Path

import torch

_NHWC = "nhwc"  # a channels-last 4-d tensor, saved in its memory order
_ALIGN = 64  # bytes: the CPU allocator's alignment


class Residence:
    """Where an expert's denoiser is between its windows.

    ``attached``: in working memory on ``device``; released, its weights are in host
    memory (GPU) or in a safetensors file (CPU), and the network holds meta tensors.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.attached = True
        self._file: Path | None = None
        self._layout: dict = {}

    def release(self, network: torch.nn.Module) -> None:
        if not self.attached:
            return
        if self.device.type == "cpu":
            if self._file is None:
                self._file, self._layout = _spill(network)
            network.to("meta")
        else:
            network.to("cpu")
        self.attached = False

    def attach(self, network: torch.nn.Module) -> None:
        if self.attached:
            return
        if self.device.type == "cpu":
            _restore(network, self._file, self._layout)
        else:
            network.to(self.device)
        self.attached = True


def sequential(network: torch.nn.Module, device: torch.device) -> None:
    """accelerate's hooks: each submodule's weights move to ``device`` for its forward."""
    from accelerate import cpu_offload

    network.to("cpu")
    cpu_offload(network, execution_device=device, offload_buffers=bool(network._parameters))


def execution_device(module: torch.nn.Module) -> torch.device | None:
    """The device accelerate's hooks run ``module`` on (sequential offload), else None."""
    if not hasattr(module, "_hf_hook"):
        return None
    for sub in module.modules():
        device = getattr(getattr(sub, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device)
    return None


# ------------------------------------------------------------------ CPU: a mapped file


def _folder() -> Path:
    global _FOLDER
    if _FOLDER is None:
        _FOLDER = Path(tempfile.mkdtemp(prefix="pangu-draw-offload-"))
        atexit.register(shutil.rmtree, _FOLDER, True)
    return _FOLDER


_FOLDER: Path | None = None


def _tensors(network: torch.nn.Module):
    """Every parameter and buffer (non-persistent ones too) by name, shared ones each time."""
    return chain(
        network.named_parameters(remove_duplicate=False),
        network.named_buffers(remove_duplicate=False),
    )


def _spill(network: torch.nn.Module) -> tuple[Path, dict]:
    """Write the network's tensors to a safetensors file; returns it and the layout: for
    each name, the stored name it shares (tied weights are stored once) and its order."""
    from safetensors.torch import save_file

    stored, layout, seen = {}, {}, {}
    for name, tensor in _tensors(network):
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
        if key in seen:
            layout[name] = layout[seen[key]]
            continue
        seen[key] = name
        offset = tensor.data_ptr() % _ALIGN
        order = ""
        if tensor.dim() == 4 and _strides(tensor.permute(0, 2, 3, 1)) == _dense(tensor, 0, 2, 3, 1):
            # channels last, down to the strides of size-1 dimensions (a 1x1 convolution's
            # weight is contiguous either way, but the kernel picks its output layout by
            # the strides): stored in that order, so it comes back with them
            tensor, order = tensor.permute(0, 2, 3, 1), _NHWC  # no copy
        stored[name] = tensor.detach().contiguous()
        layout[name] = (name, order, offset)
    path = _folder() / f"{id(network):x}.safetensors"
    save_file(stored, path, metadata={"layout": json.dumps(layout)})
    return path, layout


def _strides(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.stride())


def _dense(tensor: torch.Tensor, *order: int) -> tuple[int, ...]:
    """The strides of a dense row-major tensor of ``tensor``'s dimensions in ``order``."""
    strides, step = [], 1
    for size in reversed([tensor.shape[d] for d in order]):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _restore(network: torch.nn.Module, path: Path, layout: dict) -> None:
    """Read the network's tensors back from the file into fresh memory, each at the
    alignment it had (a CPU kernel handed a weight at another alignment can round
    differently: the image would move by 1e-7); not mapped, as a mapped tensor sits
    wherever the file puts it."""
    offsets = {stored: offset for stored, _, offset in layout.values()}
    tensors = {}
    with open(path, "rb") as file:
        size = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(size))
        start = 8 + size
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            offset = offsets[name]
            data = torch.empty(end - begin + _ALIGN, dtype=torch.uint8)  # 64-aligned
            data = data[offset : offset + end - begin]
            file.seek(start + begin)
            file.readinto(memoryview(data.numpy()))
            dtype = _DTYPES[entry["dtype"]]
            tensors[name] = data.view(dtype).reshape(entry["shape"])
    made = {}  # tied weights: one Parameter under every name
    for name, (stored, order, _) in layout.items():
        owner, _, leaf = name.rpartition(".")
        module = network.get_submodule(owner)
        parameter = leaf in module._parameters
        if (stored, parameter) not in made:
            tensor = tensors[stored]
            tensor = tensor.permute(0, 3, 1, 2) if order == _NHWC else tensor
            made[stored, parameter] = (
                torch.nn.Parameter(tensor, requires_grad=False) if parameter else tensor
            )
        table = module._parameters if parameter else module._buffers
        table[leaf] = made[stored, parameter]
