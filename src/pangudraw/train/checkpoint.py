"""Training checkpoints written as safetensors and JSON only: resuming unpickles nothing.

A checkpoint folder holds exactly these files:

    model.safetensors        the trained network (unwrapped from DDP)
    optimizer.safetensors    the optimizer's per-parameter tensors (``state.<i>.<name>``)
    optimizer.json           its parameter groups (learning rate, betas, ...)
    ema.safetensors          the EMA shadow weights (``shadow.<i>``)
    rng-<rank>.safetensors   each process's torch RNG states
    state.json               step, images seen, wall time, EMA step, grad-scaler state

A folder with any other file (accelerate's ``*.pkl`` / ``*.bin``, or anything else) was not
written by pangu-draw, and pickles can run code when loaded: such a folder is refused
unless the user passes ``--allow-pickle``, which then loads an accelerate ``save_state``
folder the way accelerate does. Checkpoints are written to a temporary folder and renamed
into place, so a ``checkpoint-*`` folder that exists is complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..files import read_json


class Run(Protocol):
    """What a checkpoint saves and restores of a training run (:class:`.build.Run` is one)."""

    accelerator: Any  # accelerate.Accelerator
    config: Any  # .config.TrainConfig: its output folder
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema: Any  # diffusers' EMAModel, or None
    state: dict  # step, images seen, wall time


PREFIX = "checkpoint-"
FILES = {"model.safetensors", "optimizer.safetensors", "optimizer.json", "ema.safetensors"}
STATE = "state.json"


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path)


def optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer's state as tensors (``state.<i>.<name>``) and its parameter groups
    (JSON-able), for :func:`restore_optimizer`."""
    state = optimizer.state_dict()
    tensors = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if not isinstance(value, torch.Tensor):  # every torch optimizer keeps tensors here
                raise TypeError(f"optimizer state {name} is not a tensor")
            tensors[f"state.{index}.{name}"] = value
    return tensors, state["param_groups"]


def save_checkpoint(run: Run) -> Path:
    """Write the run's state to ``OUTPUT/checkpoints/checkpoint-<step>``, atomically."""
    accelerator = run.accelerator
    folders = Path(run.config.output) / "checkpoints"
    final = folders / f"{PREFIX}{run.state['step']:07d}"
    tmp = folders / f".tmp-{run.state['step']:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    _save(rng, tmp / f"rng-{accelerator.process_index}.safetensors")
    if accelerator.is_main_process:
        _save(accelerator.unwrap_model(run.model).state_dict(), tmp / "model.safetensors")
        tensors, groups = optimizer_tensors(run.optimizer)
        _save(tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(groups))
        shadow = {f"shadow.{i}": p for i, p in enumerate(run.ema.shadow_params)}
        _save(shadow, tmp / "ema.safetensors")
        state = dict(run.state, ema_step=run.ema.optimization_step)
        if accelerator.scaler is not None:
            state["grad_scaler"] = accelerator.scaler.state_dict()
        (tmp / STATE).write_text(json.dumps(state, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        # Old checkpoints leave by an atomic rename first: a kill mid-delete leaves trash,
        # never a partial checkpoint-* folder.
        for old in sorted(folders.glob(f"{PREFIX}*"))[: -run.config.keep_checkpoints]:
            os.replace(old, folders / f".trash-{old.name}")
        for trash in folders.glob(".trash-*"):
            shutil.rmtree(trash)
    accelerator.wait_for_everyone()
    return final


def resolve_checkpoint(output: Path, resume: str) -> Path:
    """``latest`` (the newest checkpoint of the run in ``output``) or a checkpoint folder."""
    if resume != "latest":
        folder = Path(resume)
        if not (folder / STATE).is_file():
            raise UserError(f"checkpoint {folder} does not exist or is incomplete")
        return folder
    found = sorted((output / "checkpoints").glob(f"{PREFIX}*"))
    if not found:
        raise UserError(f"no checkpoint to resume in {output / 'checkpoints'}")
    return found[-1]


def foreign_files(folder: Path) -> list[str]:
    """Names in ``folder`` that pangu-draw's checkpoints never hold."""
    ours = FILES | {STATE}
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name not in ours and not (p.name.startswith("rng-") and p.suffix == ".safetensors")
    )


def check_trusted(folder: Path, allow_pickle: bool) -> list[str]:
    """Refuse a checkpoint holding files we do not write, unless pickles are allowed;
    returns those files. Called before any work, and again when loading."""
    foreign = foreign_files(folder)
    if foreign and not allow_pickle:
        raise UserError(
            f"checkpoint {folder} holds files pangu-draw does not write ({', '.join(foreign)}); "
            "pickled files can run code when loaded: resume from it only if you trust "
            "whoever wrote it, with --allow-pickle"
        )
    return foreign


def load_checkpoint(run: Run, folder: Path, allow_pickle: bool = False) -> dict:
    """Restore the run from ``folder`` in place; returns the run state (step, ...).

    Raises :class:`UserError` naming the folder for anything that does not fit the run.
    """
    foreign = check_trusted(folder, allow_pickle)
    try:
        if foreign and not (folder / "optimizer.safetensors").is_file():
            return _load_accelerate_state(run, folder)
        return _load(run, folder)
    except UserError:
        raise
    except Exception as exc:  # a damaged or mismatched checkpoint: say which and why
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"checkpoint {folder} cannot be loaded: {reason}") from exc


def _load(run: Run, folder: Path) -> dict:
    state = _read_state(folder)
    model = run.accelerator.unwrap_model(run.model)
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)

    groups = read_json(folder / "optimizer.json", "optimizer state", list)
    restore_optimizer(run.optimizer, load_file(folder / "optimizer.safetensors"), groups)

    shadow = load_file(folder / "ema.safetensors")
    if len(shadow) != len(run.ema.shadow_params):
        raise ValueError(f"ema.safetensors holds {len(shadow)} tensors, the model has more")
    with torch.no_grad():
        for i, target in enumerate(run.ema.shadow_params):
            value = shadow[f"shadow.{i}"]
            if value.shape != target.shape:
                raise ValueError(f"EMA weight {i} has shape {list(value.shape)}")
            target.copy_(value)
    run.ema.optimization_step = state.pop("ema_step")

    scaler = state.pop("grad_scaler", None)
    if scaler is not None and run.accelerator.scaler is not None:
        run.accelerator.scaler.load_state_dict(scaler)
    rng = folder / f"rng-{run.accelerator.process_index}.safetensors"
    if rng.is_file():
        states = load_file(rng)
        torch.set_rng_state(states["cpu"])
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all([states[f"cuda.{i}"] for i in range(len(states) - 1)])
    return state


def restore_optimizer(optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    """Load :func:`optimizer_tensors`' output back into ``optimizer`` (in place), checked to
    fit its parameter groups and shapes (a ``ValueError`` says what does not)."""
    template = optimizer.state_dict()
    if len(groups) != len(template["param_groups"]):
        raise ValueError("the saved optimizer does not have this optimizer's parameter groups")
    for group, ours in zip(groups, template["param_groups"]):
        if not isinstance(group, dict) or set(group) != set(ours):
            raise ValueError("the saved optimizer does not have this optimizer's parameter groups")
        for key, value in ours.items():  # JSON has lists where torch keeps tuples
            if isinstance(value, tuple):
                group[key] = tuple(group[key])
    entries: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        entries.setdefault(int(index), {})[name] = value
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entry in entries.items():
        if not 0 <= index < len(params):
            raise ValueError(f"optimizer state {index} has no parameter")
        shape = params[index].shape
        for name, value in entry.items():
            if value.ndim and value.shape != shape:
                raise ValueError(f"optimizer state {index}.{name} has shape {list(value.shape)}")
    optimizer.load_state_dict({"state": entries, "param_groups": groups})


def _read_state(folder: Path) -> dict:
    state = read_json(folder / STATE, "checkpoint state")
    counts = ("step", "images_seen", "ema_step")
    if not all(isinstance(state.get(k), int) and state[k] >= 0 for k in counts):
        raise ValueError(f"{STATE} needs non-negative integers {', '.join(counts)}")
    wall = state.get("wall_time_s")
    if not isinstance(wall, int | float) or not math.isfinite(wall) or wall < 0:
        raise ValueError(f"{STATE} needs a finite wall_time_s >= 0")
    return state


def _load_accelerate_state(run: Run, folder: Path) -> dict:
    """A folder written by ``accelerator.save_state`` (pickles; the user allowed them)."""
    run.accelerator.register_for_checkpointing(run.ema)
    run.accelerator.load_state(str(folder))
    run.ema.to(run.accelerator.device)
    state = read_json(folder / STATE, "checkpoint state")
    return {k: state[k] for k in ("step", "images_seen", "wall_time_s")}
