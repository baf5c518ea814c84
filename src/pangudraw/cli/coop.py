"""``pangu-draw coop``: run a Coop-Diffusion recipe (experts with different latent spaces)."""

from __future__ import annotations

from pathlib import Path

import click

from ..options import BRIDGE_MODES
from .shared import (
    allow_pickle_option,
    dtype_option,
    file_option,
    offload_option,
    output_option,
)


@click.command("coop")
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False), required=False)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe field, e.g. --set seed=3 --set experts.1.weight=0.5.",
)
@file_option("--from-png", help="Reproduce an image from the recipe stored in its metadata.")
@output_option("coop.png", help="PNG path.")
@click.option(
    "--allow-outside-paths",
    is_flag=True,
    help="With --from-png: let the PNG's recipe read files outside the PNG's folder.",
)
@click.option(
    "--allow-hub",
    is_flag=True,
    help="With --from-png: let the PNG's recipe download the hub models it names.",
)
@click.option(
    "--bridge",
    type=click.Choice(BRIDGE_MODES),
    default=None,
    help="How estimates move between latent spaces (overrides the recipe's bridge): exact "
    "(decode, resize, encode) or learned (a bundled translator where one was trained for the "
    "two spaces, exact elsewhere).",
)
@allow_pickle_option
@dtype_option
@offload_option
def command(
    recipe,
    overrides,
    from_png,
    output,
    allow_outside_paths,
    allow_hub,
    bridge,
    allow_pickle,
    dtype,
    offload,
) -> None:
    """Generate one image from a Coop RECIPE (TOML); see pangudraw.recipes for the format.

    A PNG written by this command stores its recipe: `--from-png IMAGE` makes it again.
    The pictures the recipe reads (control images, sources, masks) are kept beside the PNG
    in inputs/ under their content hash, and the stored recipe names those copies. A
    PNG's recipe may name bundled models and files in the PNG's own folder; anything else
    (a model folder of yours, say) needs --allow-outside-paths or --allow-hub.
    """
    from ..errors import UserError
    from ..files import check_output
    from ..imageio import read_record
    from ..recipes import keep_inputs, load_recipe, recipe_from_png
    from ..render import check_coop_size, render_coop

    if (recipe is None) == (from_png is None):
        raise UserError("give either a RECIPE file or --from-png IMAGE, not both or neither")
    check_output(output)
    if from_png is not None:
        parsed = recipe_from_png(from_png, overrides, allow_outside_paths, allow_hub)
        dtype = dtype or read_record(from_png).get("dtype")
    else:
        parsed = load_recipe(recipe, overrides)
    if bridge is not None:
        from dataclasses import replace

        parsed = replace(parsed, bridge=bridge)
    check_coop_size(parsed)

    from ..files import write_outputs
    from .shared import quiet_libraries, step_bar

    stored, inputs = keep_inputs(parsed, output.parent)
    quiet_libraries()
    with step_bar() as callback:
        from ..loading.models import ModelCache

        offload = offload or parsed.offload
        models = ModelCache(allow_pickle, dtype=dtype or "float32", offload=offload)
        picture = render_coop(parsed, output.parent, models, callback, stored)
    write_outputs({**inputs, output: picture.writer()})
    click.echo(str(output))
