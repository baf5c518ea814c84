"""``pangu-draw ui``: the web UI on gradio (needs ``pip install 'pangu-draw[ui]'``)."""

from __future__ import annotations

import socket
from pathlib import Path

import click

from .shared import FOLDER, dtype_option, offload_option


def check_port(host: str, port: int) -> None:
    """Refuse a port that is in use (or a host this machine cannot bind), before loading."""
    from ..errors import UserError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"host {host!r} cannot be resolved: {exc.strerror}") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        try:
            s.bind(address)
        except OSError as exc:
            raise UserError(
                f"port {port} on {host} is in use or not allowed ({exc.strerror}); "
                "pick another with --port"
            ) from exc


@click.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option(
    "--models",
    "model_dirs",
    type=FOLDER,
    multiple=True,
    help="A folder whose model folders (diffusers layout) the UI also serves; repeatable.",
)
@click.option(
    "--outputs",
    type=FOLDER,
    default=Path("outputs"),
    show_default=True,
    help="Where every result is saved, with its parameters.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Requests that run at once (the rest wait in the queue); 2 gave the best "
    "throughput on 2 cores (benchmarks/bench_ui.py).",
)
@click.option("--queue-size", type=click.IntRange(1, 10_000), default=64, show_default=True)
@click.option(
    "--max-side",
    type=click.IntRange(8, 4096),
    default=256,
    show_default=True,
    help="Largest width or height a request may ask for, in pixels.",
)
@click.option("--max-steps", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option(
    "--max-images",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="Most images one request makes.",
)
@click.option("--max-upload-mb", type=click.IntRange(1, 1024), default=10, show_default=True)
@dtype_option
@offload_option
def command(
    host,
    port,
    model_dirs,
    outputs,
    concurrency,
    queue_size,
    max_side,
    max_steps,
    max_images,
    max_upload_mb,
    dtype,
    offload,
) -> None:
    """Open the web UI on the bundled models (and any under --models) at http://HOST:PORT."""
    from ..errors import UserError

    check_port(host, port)
    if offload not in (None, "none") and concurrency > 1:
        raise UserError(
            f"--offload {offload} moves experts between requests' windows; serve one request "
            "at a time with it (--concurrency 1)"
        )
    try:
        import gradio  # noqa: F401
    except ModuleNotFoundError as exc:
        raise UserError("the web UI needs gradio: pip install 'pangu-draw[ui]'") from exc
    from ..ui.served import Limits, Served

    limits = Limits(max_side, max_steps, max_images, max_upload_mb)
    served = Served.find(outputs, model_dirs, limits)
    served.prepare()

    from ..ui.server import serve
    from .shared import quiet_libraries

    quiet_libraries()
    serve(
        served,
        host,
        port,
        concurrency,
        queue_size,
        block=True,
        dtype=dtype or "float32",
        offload=offload or "none",
    )
