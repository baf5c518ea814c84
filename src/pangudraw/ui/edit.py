"""The web UI's Edit tab: image to image, inpainting and outpainting from an uploaded (or
sent) picture, with the mask drawn on it.

The editor's value is gradio's ImageEditor dictionary: the picture is its background, the
mask is whatever was drawn on its layers (any colour; drawn pixels repaint). Margins grow
the canvas around the picture (outpainting). The picture and the mask are kept in the
outputs folder under their content hash, and the results' records name those copies, so
``pangu-draw generate`` with the PNG's settings makes the same image.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..editing import EditSpec
from ..errors import UserError
from .served import Served


@dataclass(frozen=True)
class Drawn:
    """The picture and mask of an editor value, kept in the outputs folder: their names
    relative to it (the record's) and their sizes."""

    picture: str
    mask: str | None
    size: tuple[int, int]  # the picture's (width, height)


def read_editor(value, served: Served) -> Drawn:
    """Keep the editor's picture and drawn mask; refuse an empty editor in one line."""
    from PIL import Image

    from ..imageio import opened

    if not isinstance(value, dict) or not (value.get("background") or value.get("composite")):
        raise UserError("upload a picture (or send one from a result) to start from")
    source = value.get("background") or value["composite"]
    served.check_upload(source, "the picture")
    with opened(source, "picture") as image:
        picture = image.convert("RGB")
    mask = Image.new("L", picture.size, 0)
    for layer in value.get("layers") or []:
        served.check_upload(layer, "a mask layer")
        with opened(layer, "mask layer") as image:
            alpha = image.convert("RGBA").getchannel("A")
        if alpha.size != picture.size:
            alpha = alpha.resize(picture.size, Image.Resampling.NEAREST)
        mask.paste(255, mask=alpha.point(lambda a: 255 if a else 0))
    drawn = mask.getextrema() != (0, 0)
    return Drawn(
        served.keep_image(picture),
        served.keep_image(mask) if drawn else None,
        picture.size,
    )


def edit_spec(
    drawn: Drawn, served: Served, strength: float, blur: float, margins: list
) -> tuple[EditSpec, int, int]:
    """The request's edit and output size (width, height): the picture's, grown by the
    margins (left, top, right, bottom) when outpainting."""
    values = [strength, blur, *margins]
    if any(v is None for v in values):
        raise UserError("strength, mask blur and margins need a value")
    left, top, right, bottom = (_whole(m, "a margin") for m in margins)
    if min(left, top, right, bottom) < 0:
        raise UserError("margins are pixels added around the picture: 0 or more")
    outpaint = left or top or right or bottom
    if outpaint and drawn.mask is not None:
        raise UserError("draw a mask or add margins (outpainting), not both")
    width, height = drawn.size[0] + left + right, drawn.size[1] + top + bottom
    spec = EditSpec(
        str(served.outputs / drawn.picture),
        float(strength),
        None if drawn.mask is None else str(served.outputs / drawn.mask),
        (left, top) if outpaint else None,
        _whole(blur, "the mask blur"),
    ).check()
    return spec, width, height


def stored_names(spec: EditSpec, drawn: Drawn) -> dict[str, str]:
    """How the results' records name the kept inputs: relative to the outputs folder."""
    names = {spec.image: drawn.picture}
    if spec.mask is not None:
        names[spec.mask] = drawn.mask
    return names


def _whole(value, what: str) -> int:
    if not float(value).is_integer():
        raise UserError(f"{what} must be a whole number of pixels, got {value!r}")
    return int(value)
