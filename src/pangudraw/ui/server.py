"""Starting the UI: the queue, the limits and the files gradio may serve."""

from __future__ import annotations

import click

from .app import DEFAULT_PREVIEW_EVERY, App
from .layout import build
from .served import Served


def serve(
    served: Served,
    host: str = "127.0.0.1",
    port: int = 7860,
    concurrency: int = 1,
    queue_size: int = 64,
    block: bool = True,
    preview_every: int | None = None,
    dtype: str = "float32",
    offload: str = "none",
):
    """Launch the UI and print its URL; with ``block=False`` return the running gradio
    Blocks (``.close()`` ends it) instead of serving until interrupted."""
    import torch

    from .. import zoo

    if block:  # the server's own process: requests side by side share one run's threads
        torch.set_num_threads(max(1, torch.get_num_threads() // concurrency))
    every = DEFAULT_PREVIEW_EVERY if preview_every is None else preview_every
    app = App(served, every, dtype, offload)
    blocks = build(app)
    blocks.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    blocks.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        show_error=True,
        allowed_paths=[str(served.outputs.resolve()), str(zoo.MODELS)],
        max_file_size=f"{served.limits.max_upload_mb}mb",
    )
    click.echo(f"pangu-draw UI: http://{host}:{port}  (outputs in {served.outputs}/)")
    if block:
        try:
            blocks.block_thread()
        finally:
            blocks.close()
    return blocks
