"""``pangu-draw coop``: run a Coop-Diffusion recipe (experts with different latent spaces)."""

from __future__ import annotations

from pathlib import Path

import click

from .progress import allow_pickle_option


@click.command("coop")
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False), required=False)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe field, e.g. --set seed=3 --set experts.1.weight=0.5.",
)
@click.option(
    "--from-png",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Reproduce an image from the recipe stored in its metadata.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("coop.png"),
    show_default=True,
    help="PNG path.",
)
@allow_pickle_option
def command(recipe, overrides, from_png, output, allow_pickle) -> None:
    """Generate one image from a Coop RECIPE (TOML); see pangudraw.recipes for the format."""
    from .. import __version__
    from ..errors import UserError
    from ..imageio import a1111_parameters, read_record, save_png
    from ..pipelines import coop_generate
    from ..recipes import apply_overrides, load_recipe, recipe_from_dict
    from .progress import quiet_libraries, step_bar

    if (recipe is None) == (from_png is None):
        raise UserError("give either a RECIPE file or --from-png IMAGE, not both or neither")
    if from_png is not None:
        try:
            stored = read_record(from_png)["recipe"]
        except (FileNotFoundError, KeyError, ValueError, OSError) as exc:
            raise UserError(f"{from_png} holds no pangu-draw coop recipe") from exc
        parsed = recipe_from_dict(
            apply_overrides(stored, list(overrides), str(from_png)), str(from_png)
        )
    else:
        parsed = load_recipe(recipe, overrides)

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
    save_png(
        result.to_pil()[0], output, parameters, {"recipe": parsed.to_dict(), "version": __version__}
    )
    click.echo(str(output))
