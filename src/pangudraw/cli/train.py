"""``pangu-draw train``: train one stage from a TOML config (also under ``accelerate launch``)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("train")
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--resume",
    default=None,
    metavar="latest|PATH",
    help="Continue from the latest checkpoint of the run, or from a checkpoint folder.",
)
def command(config: Path, resume: str | None) -> None:
    """Train the stage described by CONFIG (vae, structure, texture or full) and export it.

    Checkpoints go to OUTPUT/checkpoints every checkpoint_every steps and at the end; the
    exported model (EMA weights, safetensors, model card) to OUTPUT/model; images seen,
    steps, FLOPs and wall time to OUTPUT/resources.json.
    """
    from ..train.config import load_config
    from ..train.loop import train
    from .progress import quiet_libraries

    quiet_libraries()
    parsed = load_config(config)
    exported = train(parsed, resume)
    if exported is not None:  # the main process
        click.echo(str(exported))
