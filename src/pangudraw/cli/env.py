"""``pangu-draw env``: versions and machine facts to paste into a bug report."""

from __future__ import annotations

import platform
from importlib import metadata

import click

PACKAGES = ("pangu-draw", "torch", "diffusers", "transformers", "accelerate", "safetensors")


@click.command("env")
def command() -> None:
    """Print versions and machine facts for bug reports."""
    import torch

    rows = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            rows[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            rows[name] = "not installed"
    rows["torch threads"] = str(torch.get_num_threads())
    rows["cuda"] = torch.version.cuda or "none" if torch.cuda.is_available() else "not available"
    width = max(map(len, rows))
    for key, value in rows.items():
        click.echo(f"{key:<{width}}  {value}")
