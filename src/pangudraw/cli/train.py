"""``pangu-draw train``: train one stage from a TOML config (also under ``accelerate launch``)."""

from __future__ import annotations

from pathlib import Path

import click

from .shared import FiniteFloat, allow_pickle_option


@click.command("train")
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--resume",
    default=None,
    metavar="latest|PATH",
    help="Continue from the latest checkpoint of the run, or from a checkpoint folder.",
)
@click.option(
    "--max-minutes",
    type=FiniteFloat(min=0, min_open=True),
    default=None,
    help="Stop after about this long with a checkpoint; continue with --resume latest.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config field, e.g. --set batch_size=256 --set unet.layers_per_block=2.",
)
@allow_pickle_option
def command(
    config: Path,
    resume: str | None,
    max_minutes: float | None,
    overrides: tuple[str, ...],
    allow_pickle: bool,
) -> None:
    """Train the stage in CONFIG (vae, structure, texture, full or controlnet) and export it.

    Checkpoints go to OUTPUT/checkpoints every checkpoint_every steps and at the end; the
    exported model (EMA weights, safetensors, model card) to OUTPUT/model; images seen,
    steps, FLOPs and wall time to OUTPUT/resources.json.
    """
    from ..train.config import load_config
    from ..train.loop import train
    from .shared import quiet_libraries

    quiet_libraries()
    parsed = load_config(config, overrides)
    exported = train(parsed, resume, max_minutes=max_minutes, allow_pickle=allow_pickle)
    if exported is not None:  # the main process of a finished run
        click.echo(str(exported))
    elif max_minutes is not None:
        click.echo(
            f"stopped after {max_minutes:g} minutes with a checkpoint in "
            f"{parsed.output}/checkpoints; continue with --resume latest",
            err=True,
        )
