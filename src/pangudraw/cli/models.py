"""``pangu-draw models``: the bundled models, their sizes and cards."""

from __future__ import annotations

import click


@click.command("models")
def command() -> None:
    """List the bundled models with their sizes and model cards."""
    from ..zoo import MODELS, list_models

    models = list_models()
    if not models:
        click.echo(f"no bundled models yet in {MODELS} (train them with `make zoo`)")
        return
    for model in models:
        click.echo(f"{model.name:<20} {model.megabytes:6.1f} MB  {model.title}")
        click.echo(f"{'':<20} card: {model.path / 'README.md'}")
