"""``pangu-draw models``: the bundled models, their sizes and cards."""

from __future__ import annotations

import click


@click.command("models")
@click.option(
    "--export",
    nargs=2,
    metavar="NAME FOLDER",
    default=None,
    help="Copy bundled model NAME to a new FOLDER that diffusers loads on its own "
    "(a shared VAE is copied in).",
)
def command(export: tuple[str, str] | None) -> None:
    """List the bundled models with their sizes and model cards."""
    from pathlib import Path

    from ..zoo import MODELS, list_models
    from ..zoo import export as export_model

    if export is not None:
        name, folder = export
        click.echo(str(export_model(name, Path(folder))))
        return

    models = list_models()
    if not models:
        click.echo(f"no bundled models yet in {MODELS} (train them with `make zoo`)")
        return
    for model in models:
        click.echo(f"{model.name:<20} {model.megabytes:6.1f} MB  {model.title}")
        click.echo(f"{'':<20} card: {model.path / 'README.md'}")
