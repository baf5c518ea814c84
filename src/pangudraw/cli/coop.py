"""``pangu-draw coop``: run a Coop-Diffusion recipe (experts with different latent spaces)."""

from __future__ import annotations

from pathlib import Path

import click

from .progress import allow_pickle_option, file_option, output_option


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
@allow_pickle_option
def command(
    recipe, overrides, from_png, output, allow_outside_paths, allow_hub, allow_pickle
) -> None:
    """Generate one image from a Coop RECIPE (TOML); see pangudraw.recipes for the format.

    A PNG written by this command stores its recipe: `--from-png IMAGE` makes it again.
    Such a recipe may name bundled models and files in the PNG's own folder; anything else
    needs --allow-outside-paths or --allow-hub.
    """
    from .. import __version__
    from ..errors import UserError
    from ..files import check_output
    from ..imageio import a1111_parameters, save_png
    from ..limits import check_memory, pixel_estimate
    from ..pipelines import coop_generate
    from ..recipes import load_recipe, recipe_from_png
    from .progress import quiet_libraries, step_bar

    if (recipe is None) == (from_png is None):
        raise UserError("give either a RECIPE file or --from-png IMAGE, not both or neither")
    check_output(output)
    if from_png is not None:
        parsed = recipe_from_png(from_png, overrides, allow_outside_paths, allow_hub)
    else:
        parsed = load_recipe(recipe, overrides)

    if parsed.width is not None and parsed.height is not None:
        size = f"an image of {parsed.width}x{parsed.height}"
        check_memory(pixel_estimate(1, parsed.height, parsed.width), size)
    quiet_libraries()
    with step_bar() as callback:
        result = coop_generate(parsed, callback, allow_pickle)
    height, width = result.images.shape[-2:]
    first = parsed.experts[0]
    settings = {
        "Steps": parsed.steps,
        "Sampler": parsed.sampler,
        "Seed": parsed.seed,
        "Size": f"{width}x{height}",
        "Noise": parsed.noise,
        "Experts": " + ".join(
            f"{e.name} ({Path(e.model).name}, w={e.weight:g}, CFG {e.guidance:g})"
            for e in parsed.experts
        ),
        "Version": f"pangu-draw {__version__}",
    }
    parameters = a1111_parameters(first.prompt, first.negative_prompt, settings)
    record = {"recipe": parsed.to_table(output.parent.resolve()), "version": __version__}
    save_png(result.to_pil()[0], output, parameters, record)
    click.echo(str(output))
