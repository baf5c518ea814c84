"""Requests to pictures: what ``pangu-draw generate`` / ``coop`` and the web UI share.

A request is checked before torch loads (a refusal is immediate); rendering it gives
:class:`Picture` objects, each an image with the two metadata chunks every PNG of
pangu-draw carries (A1111's ``parameters`` text and the JSON record that reproduces it).
The CLI and the UI both go through here, so an image made in the UI is the image
``pangu-draw generate`` makes with the same settings, pixel for pixel.

Importing this module does not import torch.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .editing import EditSpec
from .errors import UserError
from .loading.paths import bundled, model_label
from .lora import LoraSpec
from .options import BRIDGE_MODES, GENERATION, HANDOFFS, check_choice

if TYPE_CHECKING:  # torch loads only when a request is rendered
    from .loading.models import ModelCache


@dataclass
class Picture:
    """One generated image with its A1111 ``parameters`` text and JSON ``record``."""

    image: object  # PIL.Image.Image
    parameters: str
    record: dict

    def writer(self):
        from .imageio import png_writer

        return png_writer(self.image, self.parameters, self.record)


DEFAULTED = ("t_split", "steps", "guidance_scale", "sampler", "styles", "handoff", "bridge")
"""The settings of a request that the model or pangu-draw fills in when it gives none."""


@dataclass
class GenerateRequest:
    """What ``pangu-draw generate`` takes: prompts, models and sampling settings."""

    prompts: list[str]
    negative_prompt: str | None = None
    structure: str | None = None  # None: the bundled structure + texture pair
    texture: str | None = None
    # None below: the model's own defaults (request_defaults: Flux.1's 28 steps at 3.5,
    # PanGu-Draw v3's release settings), pangu-draw's (options.GENERATION) otherwise
    t_split: float | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    sampler: str | None = None
    seed: int | None = None  # None: random
    width: int | None = None
    height: int | None = None
    num_images: int = 1  # per prompt; image i uses seed + i
    loras: list[LoraSpec] = field(default_factory=list)
    batch_size: int = 8  # images denoised together (results depend on the batch: see below)
    styles: list[tuple[str, float]] | None = None  # PanGu-Draw v3 style branches
    bridge: str | None = None  # exact, or learned (bundled translators where trained)
    handoff: str | None = None  # "release" (PanGu-Draw v3's rule) or "sigma"
    true_cfg: float = 1.0  # Flux models' true classifier-free guidance (> 1 turns it on)
    guidance_scale_2: float | None = None  # the texture expert's (default: guidance_scale)
    edit: EditSpec | None = None  # start from a picture: image to image, inpainting

    @property
    def count(self) -> int:
        return len(self.prompts) * self.num_images

    def batches(self) -> list[range]:
        """Image indices in batches of ``batch_size``: the same batches however many
        processes share them, so each image is the same bits either way (on the CPU a
        convolution's result depends on the batch it is computed in)."""
        return [
            range(i, min(i + self.batch_size, self.count))
            for i in range(0, self.count, self.batch_size)
        ]

    def check(self, allow_pickle: bool = False) -> GenerateRequest:
        """The request with its defaults filled in (models, seed), checked before torch
        loads; a :class:`UserError` for anything out of bounds."""
        from .limits import (
            check_int,
            check_memory,
            check_request,
            check_true_cfg,
            max_images,
            pixel_estimate,
        )

        if not self.prompts:
            raise UserError("give at least one prompt")
        for spec in self.loras:
            spec.check(allow_pickle)
        structure, texture = self.structure, self.texture
        if structure is None:
            if texture is not None:
                raise UserError("a texture model needs a structure model (or give neither)")
            structure, texture = "structure", "texture"
        seed = random.randrange(2**31) if self.seed is None else self.seed
        defaults = request_defaults(texture or structure)
        filled = {
            k: defaults[k] if getattr(self, k) is None else getattr(self, k) for k in DEFAULTED
        }
        filled["t_split"] = float(filled["t_split"])
        width, height = self.width, self.height
        if width is None and height is None and "size" in defaults:
            width, height = defaults["size"]
        check_true_cfg(self.true_cfg)
        if self.edit is not None:
            self.edit.check()
        check_choice(filled["bridge"], BRIDGE_MODES, "bridge")
        check_choice(filled["handoff"], HANDOFFS, "hand-off rule")
        if filled["styles"] and "size" not in defaults:
            raise UserError("--style is for PanGu-Draw v3 models (pangu-draw convert pangu-v3)")
        check_request(filled["steps"], self.count, seed, width, height)
        check_int(self.batch_size, "batch size", 1, max_images())
        if width is not None and height is not None:
            what = f"{self.count} image(s) of {width}x{height}"
            check_memory(pixel_estimate(self.count, height, width), what)
        return replace(
            self,
            prompts=list(self.prompts),
            structure=structure,
            texture=texture,
            seed=seed,
            width=width,
            height=height,
            **filled,
        )


def request_defaults(model: str) -> dict:
    """The settings a request gets where it gives none: pangu-draw's own
    (:data:`pangudraw.options.GENERATION`) with the model's family's over them (Flux.1's
    steps and guidance value; PanGu-Draw v3's release settings, style branch and a size
    among its buckets). No torch."""
    from .families import model_defaults

    return {**GENERATION, "styles": [], **model_defaults(model)}


def prompt_lines(text: str) -> list[str]:
    """One prompt per line, blank lines skipped (a prompts file, the UI's prompt box)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def render_generate(
    request: GenerateRequest,
    models: ModelCache,
    callback: Callable | None = None,
    batches: list[range] | None = None,
    stored: dict[str, str] | None = None,
) -> list[Picture]:
    """The images of a checked request (see :meth:`GenerateRequest.check`), in prompt
    order, ``num_images`` per prompt; only those of ``batches`` (default: all of
    :meth:`GenerateRequest.batches`). ``stored`` maps the pictures the request reads (init
    image, mask) to how the record names them (their kept copies; default: as given)."""
    pictures = []
    for images in request.batches() if batches is None else batches:
        pictures += _render_batch(request, models, callback, images, stored or {})
    return pictures


def _render_batch(
    request: GenerateRequest,
    models: ModelCache,
    callback: Callable | None,
    images: range,
    stored: dict[str, str],
) -> list[Picture]:
    from .pipelines import generate

    r = request
    structure = bundled(r.structure)
    texture = None if r.texture is None else bundled(r.texture)
    structure_expert = models.get(structure, r.loras)
    texture_expert = None if texture is None else models.get(texture, r.loras)
    each = [p for p in r.prompts for _ in range(r.num_images)]  # image i: prompt i // n
    each = each[images.start : images.stop]
    result = generate(
        structure_expert,
        texture_expert,
        each,
        negative_prompt=r.negative_prompt,
        num_inference_steps=r.steps,
        guidance_scale=r.guidance_scale,
        seed=r.seed + images.start,
        width=r.width,
        height=r.height,
        sampler=r.sampler,
        t_split=r.t_split,
        num_images=len(each),
        callback=callback,
        styles=tuple(r.styles or ()),
        handoff=r.handoff,
        bridge=r.bridge,
        true_cfg=r.true_cfg,
        edit=r.edit,
        guidance_scale_2=r.guidance_scale_2,
    )
    paired = texture is not None or structure_expert.low_noise is not None
    height, width = result.images.shape[-2:]
    pictures = []
    for image, image_seed, prompt in zip(result.to_pil(), result.seeds, each):
        record = {
            "prompt": prompt,
            "negative_prompt": r.negative_prompt,
            "steps": r.steps,
            "guidance_scale": r.guidance_scale,
            "sampler": r.sampler,
            "seed": image_seed,
            "width": width,
            "height": height,
            "structure": model_label(structure),
            "texture": None if texture is None else model_label(texture),
            "split": r.t_split if paired else None,
            "loras": [{"file": spec.path, "scale": spec.scale} for spec in r.loras],
        }
        if result.bridges:
            record |= {"bridge": r.bridge, "bridges": result.bridges}
        if r.styles or r.handoff == "release":
            record |= {"styles": [list(s) for s in r.styles or []], "handoff": r.handoff}
        if r.true_cfg != 1.0:
            record["true_cfg"] = r.true_cfg
        if r.guidance_scale_2 is not None:
            record["guidance_scale_2"] = r.guidance_scale_2
        if r.edit is not None:
            e = r.edit
            record["edit"] = {
                "init_image": stored.get(e.image, e.image),
                "strength": e.strength,
                "mask": e.mask and stored.get(e.mask, e.mask),
                "place": e.place and list(e.place),
                "mask_blur": e.mask_blur,
            }
        settings = {
            "Steps": r.steps,
            "Sampler": r.sampler,
            "CFG scale": r.guidance_scale,
            **({"True CFG scale": r.true_cfg} if r.true_cfg != 1.0 else {}),
            "Seed": image_seed,
            "Size": f"{width}x{height}",
            "Model": structure.name,
        }
        if r.guidance_scale_2 is not None:
            settings["CFG scale 2"] = r.guidance_scale_2
        if texture is not None:
            settings |= {"Texture model": texture.name, "Split": f"{r.t_split:g}"}
        elif paired:
            settings["Split"] = f"{r.t_split:g}"
        if r.bridge != "exact" and result.bridges:
            settings["Bridge"] = r.bridge
        if r.styles:
            settings["Styles"] = ", ".join(f"{name}:{scale:g}" for name, scale in r.styles)
        if r.loras:
            settings["LoRA"] = ", ".join(f"{Path(s.path).stem}:{s.scale:g}" for s in r.loras)
        if r.edit is not None:
            settings["Denoising strength"] = f"{r.edit.strength:g}"
            if r.edit.mask_blur:
                settings["Mask blur"] = r.edit.mask_blur
        pictures.append(_picture(image, prompt, r.negative_prompt, settings, record, models))
    return pictures


def _picture(image, prompt, negative, settings: dict, record: dict, models) -> Picture:
    """An image with its two metadata chunks; what every PNG records last (precision and
    version) is added here."""
    from . import __version__
    from .imageio import a1111_parameters

    record = record | {"version": __version__}
    if models is not None and models.dtype != "float32":
        record["dtype"] = settings["Precision"] = models.dtype
    settings["Version"] = f"pangu-draw {__version__}"
    return Picture(image, a1111_parameters(prompt, negative, settings), record)


def check_coop_size(recipe) -> None:
    """Refuse, before torch loads, a recipe canvas this machine cannot hold."""
    from .limits import check_memory, pixel_estimate

    if recipe.width is not None and recipe.height is not None:
        size = f"an image of {recipe.width}x{recipe.height}"
        check_memory(pixel_estimate(1, recipe.height, recipe.width), size)


def render_coop(
    recipe,
    folder: Path,
    models: ModelCache | None = None,
    callback: Callable | None = None,
    stored=None,
) -> Picture:
    """The image of a Coop recipe; its record stores the recipe (``stored`` when given: the
    same recipe with its inputs kept elsewhere, :func:`recipes.keep_inputs`) with paths
    relative to ``folder`` (where the PNG goes), so ``--from-png`` makes it again."""
    from .pipelines import coop_generate

    allow_pickle = models.allow_pickle if models is not None else False
    result = coop_generate(recipe, callback, allow_pickle, models)
    height, width = result.images.shape[-2:]
    first = recipe.experts[0]
    settings = {
        "Steps": recipe.steps,
        "Sampler": recipe.sampler,
        "Seed": recipe.seed,
        "Size": f"{width}x{height}",
        "Noise": recipe.noise,
        "Experts": " + ".join(
            f"{e.name} ({Path(e.model).name}, w={e.weight:g}, CFG {e.guidance:g}"
            + (f", true CFG {e.true_cfg:g})" if e.true_cfg != 1.0 else ")")
            for e in recipe.experts
        ),
    }
    record = {"recipe": (stored or recipe).to_table(Path(folder).resolve())}
    if result.bridges:
        record["bridges"] = result.bridges
    image = result.to_pil()[0]
    return _picture(image, first.prompt, first.negative_prompt, settings, record, models)
