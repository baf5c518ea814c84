"""``pangu-draw data``: build training datasets from registry packages."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("data")
def group() -> None:
    """Build training datasets (Hugging Face imagefolder layout)."""


@group.command("emoji")
@click.option(
    "--style",
    type=click.Choice(["google", "twitter"]),
    required=True,
    help="google: Noto Emoji (Apache-2.0); twitter: Twemoji (CC-BY-4.0).",
)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True)
def emoji(style: str, out: Path) -> None:
    """Emoji art with captions from their names, from the pinned npm package (needs npm)."""
    from ..train.emoji import build_emoji

    info = build_emoji(style, out)
    click.echo(f"{info['images']} images from {info['package']} ({info['licence']}) in {out}")
