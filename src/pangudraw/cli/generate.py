"""``pangu-draw generate``: text to image with one model or a structure + texture pair."""

from __future__ import annotations

import random
from pathlib import Path

import click

from ..options import DEFAULT_SPLIT, SAMPLER_NAMES
from .progress import FiniteFloat, allow_pickle_option, output_option


def output_paths(output: Path, count: int) -> list[Path]:
    """``out.png`` for one image, ``out-0.png``, ``out-1.png``, ... for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def bundled(path: Path) -> Path:
    """A model folder, or the bundled model of that name when no such folder exists."""
    from .. import zoo
    from ..experts import resolve_model

    if not path.exists() and len(path.parts) == 1 and zoo.is_model(str(path)):
        return zoo.folder(str(path))
    return resolve_model(str(path))


def model_label(path: Path) -> str:
    """How a PNG records a model: ``zoo:NAME`` for a bundled one (no machine path)."""
    from .. import zoo

    return zoo.name_of(path) or str(path)


@click.command("generate")
@click.argument("prompts", metavar="PROMPT...", nargs=-1, required=True)
@click.option("-n", "--negative-prompt", default=None, help="What the image should not show.")
@click.option(
    "--structure",
    type=click.Path(path_type=Path),
    default=None,
    help="Model folder (or bundled model name) for the high-noise part, or the only model. "
    "Default: the bundled structure + texture pair.",
)
@click.option(
    "--texture",
    type=click.Path(path_type=Path),
    default=None,
    help="Model folder (or bundled model name) for the low-noise part; omit for one model.",
)
@click.option(
    "--split",
    "t_split",
    type=FiniteFloat(),
    default=float(DEFAULT_SPLIT),
    show_default=True,
    help="Hand-off timestep on the structure model's training schedule, in (0, T).",
)
@click.option("--steps", type=int, default=25, show_default=True, help="Sampler steps.")
@click.option(
    "-g",
    "--guidance-scale",
    type=FiniteFloat(),
    default=7.0,
    show_default=True,
    help="Classifier-free guidance scale (1 turns guidance off).",
)
@click.option("--sampler", type=click.Choice(SAMPLER_NAMES), default="euler", show_default=True)
@click.option("--seed", type=int, default=None, help="Seed of the first image; random if omitted.")
@click.option("--width", type=int, default=None, help="Pixels; the texture model's by default.")
@click.option("--height", type=int, default=None, help="Pixels; the texture model's by default.")
@click.option(
    "--size",
    type=int,
    default=None,
    help="Square images of this many pixels (instead of --width/--height); sizes above the "
    "models' own are made with Coop (the structure model at its native size).",
)
@click.option("--num-images", type=int, default=1, show_default=True, help="Image i uses seed + i.")
@output_option("pangu-draw.png", help="PNG path; several images get -0, -1, ... before the suffix.")
@click.option(
    "--grid",
    is_flag=True,
    help="Also write OUTPUT-grid.png: one row per prompt, one column per image.",
)
@click.option(
    "--lora",
    "loras",
    metavar="FILE[:SCALE]",
    multiple=True,
    help="A LoRA for the model(s) (diffusers or kohya keys, .safetensors); repeatable; "
    "SCALE defaults to 1, 0 leaves the model unchanged.",
)
@allow_pickle_option
def command(
    *,
    prompts,
    negative_prompt,
    structure,
    texture,
    t_split,
    steps,
    guidance_scale,
    sampler,
    seed,
    width,
    height,
    size,
    num_images,
    output,
    grid,
    loras,
    allow_pickle,
) -> None:
    """Generate images for each PROMPT and save them as PNGs with their parameters.

    With no model options the bundled emoji models are used (64x64, offline):
    pangu-draw generate "red apple" "grinning face" --num-images 4 --grid --seed 1
    """
    # The request is checked before torch and the models load: a refusal is immediate.
    from ..files import check_outputs
    from ..limits import check_memory, check_request, pixel_estimate
    from ..lora import LoraSpec

    loras = [LoraSpec.parse(text) for text in loras]
    for spec in loras:
        spec.check(allow_pickle)

    if size is not None:
        if width is not None or height is not None:
            raise click.UsageError("give --size or --width/--height, not both")
        width = height = size
    if structure is None:
        if texture is not None:
            raise click.UsageError("--texture needs --structure (or give neither for the zoo)")
        structure, texture = Path("structure"), Path("texture")
    seed = random.randrange(2**31) if seed is None else seed
    count = len(prompts) * num_images
    check_request(steps, count, seed, width, height)
    if width is not None and height is not None:
        check_memory(pixel_estimate(count, height, width), f"{count} image(s) of {width}x{height}")
    paths = output_paths(output, count)
    sheet = output.with_name(f"{output.stem}-grid.png") if grid else None
    check_outputs(paths + ([sheet] if sheet else []))

    from .. import __version__
    from ..experts import load_expert
    from ..files import write_outputs
    from ..imageio import a1111_parameters, grid_image, png_writer
    from ..lora import apply_loras
    from ..pipelines import generate
    from .progress import quiet_libraries, step_bar

    quiet_libraries()
    structure, texture = bundled(structure), texture and bundled(texture)
    structure_expert = load_expert(structure, allow_pickle)
    texture_expert = None
    if texture is not None:
        same = texture.resolve() == structure.resolve()
        texture_expert = structure_expert if same else load_expert(texture, allow_pickle)
    for expert in {id(e): e for e in (structure_expert, texture_expert) if e}.values():
        apply_loras(expert, loras, allow_pickle)
    each = [p for p in prompts for _ in range(num_images)]  # image i: prompt i // num_images
    with step_bar() as callback:
        result = generate(
            structure_expert,
            texture_expert,
            each,
            negative_prompt=negative_prompt,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            seed=seed,
            width=width,
            height=height,
            sampler=sampler,
            t_split=t_split,
            num_images=count,
            callback=callback,
        )
    height, width = result.images.shape[-2:]
    writers = {}
    for path, image, image_seed, prompt in zip(paths, result.to_pil(), result.seeds, each):
        record = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "steps": steps,
            "guidance_scale": guidance_scale,
            "sampler": sampler,
            "seed": image_seed,
            "width": width,
            "height": height,
            "structure": model_label(structure),
            "texture": None if texture is None else model_label(texture),
            "split": t_split if texture is not None else None,
            "loras": [{"file": spec.path, "scale": spec.scale} for spec in loras],
            "version": __version__,
        }
        settings = {
            "Steps": steps,
            "Sampler": sampler,
            "CFG scale": guidance_scale,
            "Seed": image_seed,
            "Size": f"{width}x{height}",
            "Model": structure.name,
        }
        if texture is not None:
            settings |= {"Texture model": texture.name, "Split": f"{t_split:g}"}
        if loras:
            settings["LoRA"] = ", ".join(f"{Path(s.path).stem}:{s.scale:g}" for s in loras)
        settings["Version"] = f"pangu-draw {__version__}"
        parameters = a1111_parameters(prompt, negative_prompt, settings)
        writers[path] = png_writer(image, parameters, record)
    if sheet is not None:
        sheet_image = grid_image(result.images, num_images)
        writers[sheet] = lambda f: sheet_image.save(f, format="PNG")
    write_outputs(writers)
    for path in writers:
        click.echo(str(path))
