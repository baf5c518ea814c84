"""Entry point: a click group whose errors are one line on stderr and exit code 2."""

from __future__ import annotations

import os
import sys
import warnings

import click

from .. import __version__
from . import convert, coop, data, env, evaluate, generate, models, train, ui


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pangu-draw")
def cli() -> None:
    """pangu-draw: time-decoupled text-to-image generation and Coop-Diffusion on diffusers."""


cli.add_command(generate.command)
cli.add_command(coop.command)
cli.add_command(env.command)
cli.add_command(train.command)
cli.add_command(data.group)
cli.add_command(models.command)
cli.add_command(evaluate.command)
cli.add_command(ui.command)
cli.add_command(convert.group)


# Libraries log advisories to stderr on their own; a user may still ask for them.
LIBRARY_VERBOSITY = ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_VERBOSITY")


def set_wait_policy() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user set it, before torch loads: torch's
    threads then sleep instead of spinning while they wait, so another busy program (a
    browser, a second generation) costs a little instead of 3-4x
    (benchmarks/bench_threads.py). ``OMP_WAIT_POLICY=ACTIVE`` is faster on a quiet machine."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; bad input prints ``error: ...`` on one line and exits with code 2.

    Python warnings raised on the way (a library's deprecation notice, say) are shown
    after a successful command and dropped when it fails, so an error stays one line.
    """
    from ..errors import UserError

    for name in LIBRARY_VERBOSITY:
        os.environ.setdefault(name, "error")
    set_wait_policy()
    with warnings.catch_warnings(record=True) as caught:
        try:
            cli.main(args=argv, prog_name="pangu-draw", standalone_mode=False)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(130)
        except (click.ClickException, UserError) as exc:
            message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
            click.echo(f"error: {' '.join(message.split())}", err=True)
            sys.exit(2)
    for w in caught:
        sys.stderr.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno))


if __name__ == "__main__":
    main()
