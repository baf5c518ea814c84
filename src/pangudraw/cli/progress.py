"""What the subcommands share: progress display, library quieting, common options."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click


class FiniteFloat(click.ParamType):
    """A float option that refuses NaN and infinity (click's FLOAT takes both)."""

    name = "number"

    def __init__(self, min: float | None = None, min_open: bool = False):
        self.min, self.min_open = min, min_open

    def convert(self, value, param, ctx) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and (number < self.min or (self.min_open and number == self.min)):
            relation = ">" if self.min_open else ">="
            self.fail(f"{value!r} is not {relation} {self.min:g}", param, ctx)
        return number


FILE = click.Path(path_type=Path, dir_okay=False)
FOLDER = click.Path(path_type=Path, file_okay=False)


def file_option(*names: str, help: str):
    """An optional file path option (default None)."""
    return click.option(*names, type=FILE, default=None, help=help)


def output_option(default: str, help: str):
    """``-o/--output``: the PNG to write."""
    return click.option(
        "-o", "--output", type=FILE, default=Path(default), show_default=True, help=help
    )


allow_pickle_option = click.option(
    "--allow-pickle",
    is_flag=True,
    help="Also load pickle (.bin/.ckpt) weights. Only for files you trust.",
)


def quiet_libraries() -> None:
    """Silence the weight-loading bars and advisory warnings of diffusers and transformers."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@contextmanager
def step_bar() -> Iterator[Callable]:
    """A tqdm bar on stderr advanced by the denoising loop's per-step callback.

    The bar appears at the first step, so input rejected before sampling prints only its error.
    """
    from tqdm import tqdm

    bars = []

    def callback(step) -> None:
        if not bars:
            bars.append(tqdm(total=step.total, desc="denoising", unit="step", leave=False))
        bars[0].set_postfix(sigma=f"{step.sigma:.3g}", refresh=False)
        bars[0].update(1)

    try:
        yield callback
    finally:
        for bar in bars:
            bar.close()
