"""What the subcommands share: progress display, library quieting, common options."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from ..options import DTYPES, OFFLOAD_MODES


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


dtype_option = click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default=None,
    help="Precision of the denoisers and text encoders (the VAE stays float32); recorded in "
    "the PNG. bfloat16 halves the memory of SD3 and Flux on a GPU. [default: float32; "
    "coop --from-png: the PNG's]",
)


offload_option = click.option(
    "--offload",
    type=click.Choice(OFFLOAD_MODES),
    default=None,
    help="Experts in memory: window keeps each denoiser in working memory only while its "
    "noise window is open (a pair's peak is about the larger one's); sequential moves each "
    "layer to the GPU for its own call (for cards that cannot hold one). The image is the "
    "same. [default: none; coop: the recipe's]",
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
def step_bar(process: int = 0) -> Iterator[Callable]:
    """A tqdm bar on stderr advanced by the denoising loop's per-step callback.

    The bar appears at the first step, so input rejected before sampling prints only its
    error; a new bar starts with each batch. ``process``: which of several processes.
    """
    from tqdm import tqdm

    bars = []
    desc = "denoising" if not process else f"denoising [{process}]"

    def callback(step) -> None:
        if step.index == 0 and bars:
            bars.pop().close()
        if not bars:
            bars.append(
                tqdm(total=step.total, desc=desc, unit="step", leave=False, position=process)
            )
        bars[0].set_postfix(sigma=f"{step.sigma:.3g}", refresh=False)
        bars[0].update(1)

    try:
        yield callback
    finally:
        for bar in bars:
            bar.close()


class Processes:
    """This process's share of work: alone, or one of those `accelerate launch` started."""

    def __init__(self, state=None):
        self.state = state
        self.index = state.process_index if state else 0
        self.count = state.num_processes if state else 1
        self.main = self.index == 0
        from ..loading.models import default_device

        # each process its own GPU; alone, the GPU when there is one
        self.device = str(state.device) if state else default_device()

    def share(self, items: list) -> list:
        """A contiguous share of ``items`` (accelerate's ``split_between_processes``)."""
        if self.state is None:
            return list(items)
        with self.state.split_between_processes(list(items)) as mine:
            return list(mine)

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


@contextmanager
def processes() -> Iterator[Processes]:
    """The processes of this command: accelerate's state when launched as several
    (``WORLD_SIZE`` > 1; accelerate is imported only then), else this one alone."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield Processes()
        return
    import torch
    from accelerate import PartialState

    yield Processes(PartialState(cpu=not torch.cuda.is_available()))
