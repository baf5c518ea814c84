"""``pangu-draw generate``: text to image with one model or a structure + texture pair."""

from __future__ import annotations

from pathlib import Path

import click

from ..options import (
    BRIDGE_MODES,
    DEFAULT_BRIDGE,
    DEFAULT_SAMPLER,
    DEFAULT_SPLIT,
    DEFAULT_STEPS,
    GENERATION,
    SAMPLER_NAMES,
)
from .shared import (
    FiniteFloat,
    allow_pickle_option,
    dtype_option,
    offload_option,
    output_option,
)


def output_paths(output: Path, count: int) -> list[Path]:
    """``out.png`` for one image, ``out-0.png``, ``out-1.png``, ... for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


@click.command("generate")
@click.argument("prompts", metavar="PROMPT...", nargs=-1)
@click.option(
    "--prompts-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A UTF-8 text file with one prompt per line (blank lines skipped), after any "
    "PROMPT arguments. Under `accelerate launch` the images are split across processes.",
)
@click.option("-n", "--negative-prompt", default=None, help="What the image should not show.")
@click.option(
    "--structure",
    type=click.Path(path_type=Path),
    default=None,
    help="Model folder, single .safetensors file (SD 1.x, SDXL, SD3, Flux.1), model spec "
    "(.toml naming component files) or bundled model name for the high-noise part, or the "
    "only model. "
    "Default: the bundled structure + texture pair.",
)
@click.option(
    "--texture",
    type=click.Path(path_type=Path),
    default=None,
    help="Model folder, single file, model spec or bundled model name for the low-noise part; omit "
    "for one model.",
)
@click.option(
    "--split",
    "t_split",
    type=FiniteFloat(),
    default=None,
    help=f"Hand-off timestep on the structure model's training schedule, in (0, T) "
    f"[default: {DEFAULT_SPLIT}].",
)
@click.option(
    "--steps",
    type=int,
    default=None,
    help=f"Sampler steps [default: {DEFAULT_STEPS}; 40 for PanGu-Draw v3; 28 for Flux.1 dev, "
    "4 for schnell]. 15 Euler steps match 25 on the bundled models (BENCHMARKS.md).",
)
@click.option(
    "-g",
    "--guidance-scale",
    type=FiniteFloat(),
    default=None,
    help="Classifier-free guidance scale, 1 turns guidance off [default: 7; 6 for PanGu-Draw "
    "v3, as its release; 5 for Wan]. Flux: the distilled guidance value [default: 3.5, "
    "Flux's own].",
)
@click.option(
    "--guidance-2",
    "guidance_scale_2",
    type=FiniteFloat(),
    default=None,
    help="The texture (low-noise) expert's guidance scale, as WanPipeline's guidance_scale_2 "
    "[default: -g].",
)
@click.option(
    "--true-cfg",
    type=FiniteFloat(),
    default=1.0,
    show_default=True,
    help="Flux models: true classifier-free guidance at this scale against the negative "
    "prompt (FluxPipeline's true_cfg_scale; twice the work per step); 1 turns it off.",
)
@click.option(
    "--sampler",
    type=click.Choice(SAMPLER_NAMES),
    default=None,
    help=f"[default: {DEFAULT_SAMPLER}; unipc, its own, for Wan]",
)
@click.option(
    "--bridge",
    type=click.Choice(BRIDGE_MODES),
    default=DEFAULT_BRIDGE,
    show_default=True,
    help="How the structure model's estimates reach the texture model's latent space: exact "
    "(decode, resize, encode) or learned (a bundled translator where one was trained for the "
    "two spaces, exact elsewhere).",
)
@click.option(
    "--style",
    "styles",
    metavar="NAME[:SCALE]",
    multiple=True,
    help="PanGu-Draw v3 style branch: aesthetic, cartoon or photo (scale 4 if omitted); "
    "repeatable; `none` for no branch [default: aesthetic:4, as the release].",
)
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
@click.option(
    "--batch-size",
    type=int,
    default=8,
    show_default=True,
    help="Images denoised together. An image's pixels can depend on its batch by one level "
    "here and there (CPU convolutions); give the same batch size to reproduce them exactly.",
)
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
@click.option(
    "--init-image",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Start from this picture (image to image); resized to the output size, which is "
    "its own size by default. Smaller than the output: outpainting (see --place).",
)
@click.option(
    "--strength",
    type=FiniteFloat(),
    default=None,
    help="With --init-image: how much of the trajectory runs, in (0, 1]; 1 repaints "
    f"fully [default: {GENERATION['strength']}; {GENERATION['inpaint_strength']:g} with --mask].",
)
@click.option(
    "--mask",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="With --init-image: inpaint; white repaints, black keeps (grayscale, binarised at "
    "half as diffusers does). A dedicated inpainting model (9-channel UNet) needs it.",
)
@click.option(
    "--place",
    metavar="X,Y",
    default=None,
    help="Outpainting: where the init image's top-left corner goes on the larger output, in "
    "pixels [default: centred]; the rest is painted.",
)
@click.option(
    "--mask-blur",
    type=int,
    default=0,
    show_default=True,
    help="Soften the mask's edges by this many pixels when the known region is put back.",
)
@allow_pickle_option
@dtype_option
@offload_option
def command(
    *,
    prompts,
    prompts_file,
    negative_prompt,
    structure,
    texture,
    t_split,
    steps,
    guidance_scale,
    guidance_scale_2,
    true_cfg,
    sampler,
    seed,
    width,
    height,
    size,
    num_images,
    batch_size,
    output,
    grid,
    loras,
    bridge,
    styles,
    init_image,
    strength,
    mask,
    place,
    mask_blur,
    allow_pickle,
    dtype,
    offload,
) -> None:
    """Generate images for each PROMPT and save them as PNGs with their parameters.

    With no model options the bundled emoji models are used (64x64, offline):
    pangu-draw generate "red apple" "grinning face" --num-images 4 --grid --seed 1
    """
    # The request is checked before torch and the models load: a refusal is immediate.
    from ..files import check_outputs
    from ..render import GenerateRequest

    if structure is None and texture is not None:
        raise click.UsageError("--texture needs --structure (or give neither for the zoo)")
    width, height = _size(size, width, height)
    given = locals()
    options = {k: given[k] for k in ("negative_prompt", "t_split", "steps", "guidance_scale")}
    options |= {k: given[k] for k in ("sampler", "seed", "num_images", "batch_size", "bridge")}
    options["guidance_scale_2"] = guidance_scale_2
    request = GenerateRequest(
        prompts=_prompts(prompts, prompts_file),
        structure=structure and str(structure),
        texture=texture and str(texture),
        width=width,
        height=height,
        loras=_loras(loras),
        styles=_styles(styles),
        true_cfg=true_cfg,
        edit=_edit(init_image, strength, mask, place, mask_blur, (width, height)),
        **options,
    ).check(allow_pickle)
    paths = output_paths(output, request.count)
    sheet = output.with_name(f"{output.stem}-grid.png") if grid else None
    check_outputs(paths + ([sheet] if sheet else []))
    pictures, state = _render(request, paths, allow_pickle, dtype, offload or "none")
    if not state.main:
        return
    if sheet is not None:
        _write_sheet(sheet, pictures if state.count == 1 else None, paths, num_images)
    for path in paths + ([sheet] if sheet else []):
        click.echo(str(path))


def _edit(init_image, strength, mask, place, mask_blur, size):
    """The picture to start from, as given (checked with the request); None without one."""
    from ..editing import EditSpec, default_strength, parse_place

    if init_image is None:
        given = {"--strength": strength, "--mask": mask, "--place": place}
        named = [name for name, value in given.items() if value is not None]
        if named or mask_blur:
            raise click.UsageError(f"{(named or ['--mask-blur'])[0]} needs --init-image")
        return None
    where = None if place is None else parse_place(place)
    mask = None if mask is None else str(mask)
    default = default_strength(str(init_image), mask, size) if strength is None else strength
    return EditSpec(str(init_image), default, mask, where, mask_blur)


def _prompts(prompts: tuple[str, ...], prompts_file: Path | None) -> list[str]:
    from ..files import read_text
    from ..render import prompt_lines

    found = list(prompts)
    if prompts_file is not None:
        found += prompt_lines(read_text(prompts_file, "prompts file"))
    if not found:
        raise click.UsageError("give a PROMPT or --prompts-file")
    return found


def _size(size: int | None, width: int | None, height: int | None) -> tuple:
    if size is None:
        return width, height
    if width is not None or height is not None:
        raise click.UsageError("give --size or --width/--height, not both")
    return size, size


def _loras(loras: tuple[str, ...]) -> list:
    from ..lora import LoraSpec

    return [LoraSpec.parse(text) for text in loras]


def _styles(styles: tuple[str, ...]) -> list | None:
    """``--style`` values as (name, scale) pairs; None when not given; [] for ``none``."""
    if not styles:
        return None
    from ..families.pangu import parse_style

    return [] if styles == ("none",) else [parse_style(text) for text in styles]


def _render(request, paths: list[Path], allow_pickle: bool, dtype: str | None, offload: str):
    """The request's pictures, written as PNGs, in this process's share of the batches
    (one process, or those `accelerate launch` started), with the pictures it read kept
    beside them (``inputs/``, by content); the pictures and the state."""
    import os

    from ..files import keep_by_content, write_outputs
    from ..loading.models import ModelCache
    from ..render import render_generate
    from .shared import processes, quiet_libraries, step_bar

    quiet_libraries()
    with processes() as state:
        batches = state.share(request.batches())
        folder = paths[0].parent
        stored, inputs = {}, {}
        edit = request.edit
        for name, what in ((edit and edit.image, "init image"), (edit and edit.mask, "mask")):
            if name is not None:
                target, writer = keep_by_content(name, folder, what)
                stored[name] = Path(os.path.relpath(target, folder.resolve())).as_posix()
                inputs |= {target: writer} if writer is not None else {}
        with step_bar(state.index) as callback:
            models = ModelCache(allow_pickle, state.device, dtype or "float32", offload)
            pictures = render_generate(request, models, callback, batches, stored)
        mine = [paths[i] for images in batches for i in images]
        inputs = inputs if state.main else {}  # one process keeps them
        write_outputs({**inputs, **{path: p.writer() for path, p in zip(mine, pictures)}})
        state.wait()
    return pictures, state


def _write_sheet(sheet: Path, pictures: list | None, paths: list[Path], columns: int) -> None:
    """The contact sheet: one row per prompt (the pictures made here, or every process's
    PNGs read back)."""
    from ..files import write_outputs
    from ..imageio import grid_image, stack_images

    images = [p.image for p in pictures] if pictures is not None else read_images(paths)
    sheet_image = grid_image(stack_images(images), columns)
    write_outputs({sheet: lambda f: sheet_image.save(f, format="PNG")})


def read_images(paths: list[Path]) -> list:
    """The PNGs other processes wrote, for the grid."""
    from PIL import Image

    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images
