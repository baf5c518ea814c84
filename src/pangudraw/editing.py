"""Starting from a picture: image to image, inpainting and outpainting.

On the one noise axis, image to image is "start the loop at the noise level the strength
names": the picture is encoded in the canvas's latent space, noised to the first step
that runs, and every expert (in any latent space, at any size) takes it from there, the
ones off the canvas through the bridge like any estimate. Inpainting keeps the known
region: after each step the canvas takes the picture's latents noised to the next level
(with the same noise) outside the mask, as diffusers' inpainting pipelines do with a
standard model; a dedicated inpainting model (a 9-channel UNet, FLUX.1 Fill) gets the mask
and the masked picture's latents as extra input channels instead, laid out by its family.
Outpainting is inpainting of a canvas larger than the picture: the picture is placed on it
and the rest is masked.

What diffusers does, and so what this does (read from its img2img and inpaint pipelines):

- pictures are resized with PIL's Lanczos filter to the output size and mapped to
  [-1, 1]; masks are made grayscale, resized the same way and binarised at 0.5 (white
  repaints, black keeps), then brought to the latent grid by nearest-neighbour
  interpolation. The masked picture is ``picture * (mask < 0.5)``;
- the picture is encoded by *sampling* the VAE's posterior with the request's generator,
  before the noise is drawn (each image of a batch with its own generator, so image i is
  image i made alone); inpainting then samples the masked picture's posterior too;
- a strength s runs the last steps of N: SD/SDXL (discrete schedules) the last
  ``min(int(N s), N)``, flow models (Flux, SD3) from ``int(N - N s)`` on;
- image to image starts from the picture noised to the first step that runs; inpainting
  at strength 1 starts from pure noise (a 9-channel UNet never encodes the picture then;
  FLUX.1 Fill does, so its generator moves as its pipeline's does).

Reading and checking the inputs needs no torch (the CLI refuses bad input before anything
loads); :func:`prepare` builds the tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class EditSpec:
    """What a generation starts from, as the user gave it (paths and numbers).

    ``place`` is the picture's top-left corner on the canvas in pixels (outpainting; None:
    centred, or the whole canvas when the sizes agree); ``mask_blur`` softens the mask's
    edges by that many pixels (0: the binary mask diffusers uses).
    """

    image: str
    strength: float
    mask: str | None = None
    place: tuple[int, int] | None = None
    mask_blur: int = 0

    def check(self) -> EditSpec:
        """Refuse, before any model loads, what cannot be used."""
        if not (isinstance(self.strength, int | float) and math.isfinite(self.strength)):
            raise UserError(f"strength must be a number in (0, 1], got {self.strength!r}")
        if not 0 < self.strength <= 1:
            raise UserError(f"strength {self.strength:g} is outside (0, 1]; 1 repaints fully")
        if not isinstance(self.mask_blur, int) or not 0 <= self.mask_blur <= 256:
            raise UserError("mask blur must be a whole number of pixels in [0, 256]")
        _size_of(self.image, "init image")
        if self.mask is not None:
            _size_of(self.mask, "mask", "L")
        return self

    @property
    def inpaint(self) -> bool:
        return self.mask is not None


def default_strength(image: str, mask: str | None, size: tuple[int | None, int | None]) -> float:
    """The strength a user gets without giving one: inpainting's (full) with a mask or an
    init image smaller than the output (width, height), image to image's otherwise."""
    from .options import GENERATION

    width, height = picture_size(image)
    smaller = (size[0] or width) > width or (size[1] or height) > height
    return GENERATION["inpaint_strength" if mask or smaller else "strength"]


def parse_place(text: str) -> tuple[int, int]:
    """``X,Y`` in pixels (the CLI's ``--place``)."""
    x, sep, y = text.partition(",")
    if not (sep and x.strip().lstrip("-").isdigit() and y.strip().lstrip("-").isdigit()):
        raise UserError(f"--place {text!r}: expected X,Y in pixels, e.g. 32,0")
    return int(x), int(y)


def picture_size(path: str) -> tuple[int, int]:
    """(width, height) of a picture, read from its header."""
    return _size_of(path, "init image")


def _size_of(path: str, what: str, mode: str = "RGB") -> tuple[int, int]:
    from .imageio import opened

    with opened(path, what) as image:
        if image.width < 1 or image.height < 1:
            raise UserError(f"{what} {path} is empty")
        try:
            image.convert(mode).getpixel((0, 0))  # decodes it: a truncated file fails here
        except (OSError, ValueError) as exc:
            raise UserError(f"{what} {path} cannot be read as a picture: {exc}") from exc
        return image.width, image.height


@dataclass
class Edit:
    """The tensors of an edit at the canvas's pixel size: ``image`` (1, 3, H, W) in
    [-1, 1]; ``mask`` (1, 1, H, W) in [0, 1] (1 repaints; binary unless blurred) or None;
    ``binary`` the binarised mask (a 9-channel model's input)."""

    image: object  # torch.Tensor
    strength: float
    mask: object | None = None
    binary: object | None = None


def prepare(spec: EditSpec, size: tuple[int, int], factor: int) -> Edit:
    """The picture (and mask) at the canvas size (height, width), read as diffusers reads
    them (``VaeImageProcessor``). A picture smaller than the canvas on either side, or
    given a ``place``, is placed on it (outpainting): the rest is masked, and filled by
    repeating the picture's edge pixels."""
    import numpy as np
    import torch
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image, ImageFilter

    from .imageio import opened

    height, width = size
    with opened(spec.image, "init image") as image:
        picture = image.convert("RGB")
    outpaint = spec.place is not None or picture.width < width or picture.height < height
    mask = None
    if spec.mask is not None:
        with opened(spec.mask, "mask") as image:
            mask = image.convert("L")
    if outpaint:
        if mask is not None:
            raise UserError("give a mask or an init image smaller than the output, not both")
        picture, mask = _placed(picture, (width, height), spec.place)
    images = VaeImageProcessor(vae_scale_factor=factor)
    tensor = images.preprocess(picture, height=height, width=width).float()
    if mask is None:
        return Edit(tensor, spec.strength)
    masks = VaeImageProcessor(
        vae_scale_factor=factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
    )
    binary = masks.preprocess(mask, height=height, width=width).float()
    soft = binary
    if spec.mask_blur:
        blurred = mask.resize((width, height), Image.Resampling.LANCZOS)
        blurred = blurred.filter(ImageFilter.GaussianBlur(spec.mask_blur))
        soft = torch.from_numpy(np.asarray(blurred, dtype=np.float32) / 255)[None, None]
    return Edit(tensor, spec.strength, soft, binary)


def _placed(picture, canvas: tuple[int, int], place: tuple[int, int] | None):
    """The picture on a canvas of ``canvas`` (width, height) pixels, its edges repeated
    outwards, and the mask of what it does not cover (white)."""
    import numpy as np
    from PIL import Image

    width, height = canvas
    centred = ((width - picture.width) // 2, (height - picture.height) // 2)
    x, y = place if place is not None else centred
    if x < 0 or y < 0 or x + picture.width > width or y + picture.height > height:
        raise UserError(
            f"the init image ({picture.width}x{picture.height}) placed at {x},{y} does not fit "
            f"the {width}x{height} output; give a --place inside it or a larger output"
        )
    pixels = np.asarray(picture)
    pad = ((y, height - y - picture.height), (x, width - x - picture.width), (0, 0))
    filled = Image.fromarray(np.pad(pixels, pad, mode="edge"))
    mask = np.full((height, width), 255, dtype=np.uint8)
    mask[y : y + picture.height, x : x + picture.width] = 0
    return filled, Image.fromarray(mask)
