"""Training scheduler configs: checked as diffusers reads them, and the published ones.

A model folder's ``scheduler/scheduler_config.json`` names a diffusers scheduler and its
training schedule; pangu-draw builds its own samplers from it (:func:`pangudraw.coop.
make_scheduler`). A single file carries none, so its family's published config is used
(:data:`PUBLISHED`, as diffusers' ``from_single_file`` uses the family's published folder).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from ..errors import UserError
from ..files import read_json
from ..noise import PREDICTION_TYPES, DiscreteVPSchedule, RectifiedFlowSchedule, Schedule

PUBLISHED = Path(__file__).resolve().parents[1] / "published"
"""Configs of published model folders (``published/README.md``)."""


def published_scheduler(model: str) -> dict:
    """The scheduler config ``model`` (a folder of :data:`PUBLISHED`) was published with."""
    return read_json(PUBLISHED / model / "scheduler" / "scheduler_config.json", "scheduler config")


def read_scheduler_config(path: Path) -> tuple[dict, Schedule]:
    """A diffusers scheduler config file, checked (:func:`check_scheduler_config`)."""
    return check_scheduler_config(read_json(path, "scheduler config"), path)


def check_scheduler_config(config: dict, path: Path | str) -> tuple[dict, Schedule]:
    """A diffusers scheduler config, checked, and the training schedule it describes.

    ``_class_name`` must name a diffusers scheduler: nothing else is imported. Keys the
    class does not take are ignored, as diffusers' ``from_config`` ignores them (published
    configs carry leftovers of the scheduler they were made from: SD 1.5's ``clip_sample``,
    SDXL's ``skip_prk_steps``). What the sampling loop relies on is checked: the number of
    training steps, the prediction type, betas that give increasing finite noise levels,
    the timestep spacing and offset, and a flow model's shift settings.
    """
    import inspect

    import diffusers

    name = config.get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None or not inspect.isclass(cls) or not name.endswith("Scheduler"):
        raise UserError(f"{path}: _class_name {name!r} is not a diffusers scheduler")
    ignored = sorted(k for k in config if not k.startswith("_") and k not in _arguments(cls))
    if ignored:
        _log.debug("%s: %s ignored (not arguments of %s)", path, ", ".join(ignored), name)
    steps = config.get("num_train_timesteps", 1000)
    if not _is_int(steps) or not 2 <= steps <= 100_000:
        raise UserError(f"{path}: num_train_timesteps must be an integer in [2, 100000]")
    if name == "FlowMatchEulerDiscreteScheduler":
        _check_flow_shift(config, path)
        return config, RectifiedFlowSchedule(steps)
    if config.get("use_flow_sigmas") or config.get("prediction_type") == "flow_prediction":
        # a multistep solver on flow sigmas (Wan's UniPC): the model predicts a velocity
        if not (config.get("use_flow_sigmas") is True and name in FLOW_SOLVERS):
            raise UserError(
                f"{path}: a flow model's scheduler must be one of {', '.join(FLOW_SOLVERS)} "
                "with use_flow_sigmas and prediction_type flow_prediction"
            )
        if config.get("prediction_type") != "flow_prediction":
            raise UserError(f"{path}: use_flow_sigmas needs prediction_type flow_prediction")
        shift = config.get("flow_shift", 1.0)
        if isinstance(shift, bool) or not isinstance(shift, int | float) or not shift > 0:
            raise UserError(f"{path}: flow_shift must be a positive number, got {shift!r}")
        if not math.isfinite(shift):
            raise UserError(f"{path}: flow_shift must be finite")
        if config.get("use_dynamic_shifting"):
            raise UserError(f"{path}: dynamic shifting on flow sigmas is not supported yet")
        return config, RectifiedFlowSchedule(steps)
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise UserError(
            f"{path}: prediction_type {prediction_type!r} is not one of "
            f"{', '.join(PREDICTION_TYPES)}"
        )
    spacing = config.get("timestep_spacing", "leading")
    if spacing not in TIMESTEP_SPACINGS:
        raise UserError(
            f"{path}: timestep_spacing {spacing!r} is not one of {', '.join(TIMESTEP_SPACINGS)}"
        )
    offset = config.get("steps_offset", 0)
    if not _is_int(offset) or not 0 <= offset < steps:
        raise UserError(f"{path}: steps_offset must be an integer in [0, {steps})")
    for key in ("beta_start", "beta_end"):
        value = config.get(key, 0.0001 if key == "beta_start" else 0.02)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{path}: {key} must be a number, got {value!r}")
        if not 0 < value < 1:
            raise UserError(f"{path}: {key} must be between 0 and 1, got {value!r}")
    try:
        schedule = DiscreteVPSchedule.from_config(config)
    except (ValueError, TypeError, NotImplementedError, RuntimeError) as exc:
        raise UserError(f"{path}: {str(exc).splitlines()[0]}") from exc
    sigmas = schedule.log_sigmas
    if not bool(torch.isfinite(sigmas).all()) or not bool((sigmas[1:] >= sigmas[:-1]).all()):
        raise UserError(f"{path}: the betas do not give increasing, finite noise levels")
    return config, schedule


TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
FLOW_SOLVERS = ("UniPCMultistepScheduler",)  # on use_flow_sigmas, as Wan publishes it
_log = logging.getLogger(__name__)


def _arguments(cls: type) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_flow_shift(config: dict, path: Path | str) -> None:
    """A flow scheduler's shift settings: finite positive numbers, a boolean switch."""
    for key in ("shift", "base_shift", "max_shift"):
        value = config.get(key, 1.0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{path}: {key} must be a number, got {value!r}")
        if not math.isfinite(value) or (key == "shift" and value <= 0):
            raise UserError(
                f"{path}: {key} must be a finite{' positive' * (key == 'shift')} number"
            )
    for key in ("base_image_seq_len", "max_image_seq_len"):
        value = config.get(key, 256)
        if not _is_int(value) or value < 1:
            raise UserError(f"{path}: {key} must be a positive integer, got {value!r}")
    if not isinstance(config.get("use_dynamic_shifting", False), bool):
        raise UserError(f"{path}: use_dynamic_shifting must be true or false")
