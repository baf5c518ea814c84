"""``pangu-draw eval``: offline metrics for a folder of generated images."""

from __future__ import annotations

import json

import click

from .shared import FOLDER, file_option


@click.command("eval")
@click.argument("images_dir", type=FOLDER)
@file_option(
    "--prompts",
    "prompts_file",
    help="One prompt per image (sorted by file name), or one line for all; by default each "
    "PNG's own pangu-draw record.",
)
@click.option(
    "--reference",
    type=FOLDER,
    default=None,
    help="A folder of real images: adds FID in the bundled evaluator's emoji features.",
)
@file_option(
    "--edges-from", help="The image whose Canny edges conditioned the images: adds edge F1."
)
@file_option(
    "--layout-from",
    help="The image whose colour layout conditioned the images: adds the layout error.",
)
@file_option("--json", "json_out", help="Also write the numbers as JSON.")
def command(images_dir, prompts_file, reference, edges_from, layout_from, json_out) -> None:
    """Caption retrieval, FID and control fidelity of the PNGs in IMAGES_DIR (64x64).

    The features and the image encoder are the bundled evaluator's (trained on emoji,
    not Inception or CLIP), so the numbers compare emoji generators with each other.
    """
    from ..evaluate.report import evaluate, format_report, read_folder, read_prompts
    from ..files import check_output, write_text
    from ..imageio import read_pixels
    from .shared import quiet_libraries

    if json_out is not None:
        check_output(json_out, "--json output")
    quiet_libraries()
    paths, images = read_folder(images_dir)
    prompts = read_prompts(paths, prompts_file)
    real = read_folder(reference)[1] if reference is not None else None

    def source(path):
        return None if path is None else read_pixels(str(path), images.shape[-2:], "source")

    report = evaluate(images, prompts, real, source(edges_from), source(layout_from))
    click.echo(format_report(report))
    if json_out is not None:
        write_text(json_out, json.dumps(report, indent=2) + "\n")
