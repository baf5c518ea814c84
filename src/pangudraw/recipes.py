"""Coop recipes: a TOML file that names the canvas, the sampler and a list of experts.

    prompt = "a red apple"            # every expert's prompt unless it has its own
    negative_prompt = ""              # optional
    seed = 0
    steps = 15                        # default: the canvas model's own, else 15
    sampler = "euler"                 # ddim, euler, euler_a, dpmpp_2m, unipc (default: Wan's unipc)
    noise = "carry"                   # carry | resample (experts off the canvas)
    bridge_every = 1                  # run and bridge experts off the canvas every k steps
    bridge = "exact"                  # exact | learned (bundled translators, else exact)
    guidance = 7.0                    # every expert's unless it has its own (default 7; Flux: 3.5)
    offload = "none"                  # none | window | sequential: experts in memory (offload.py)

    [canvas]
    width = 64
    height = 64
    expert = "texture"                # whose latent space and sampler schedule (default: first)
    init_image = "photo.png"          # optional: start from a picture (image to image)
    strength = 0.75                   # how much of the trajectory runs (default 0.75; 1 masked)
    mask = "repaint.png"              # optional: inpaint (white repaints, black keeps)
    place = [16, 0]                   # optional: a smaller picture's corner (outpainting)
    mask_blur = 0                     # optional: soften the mask's edges by this many pixels

    [[experts]]
    name = "texture"
    model = "models/texture"          # folder, single file or model spec, relative to the recipe
    window = { t = [0, 500] }         # or { sigma = [lo, hi] }; default: the whole trajectory
    weight = 1.0
    guidance = 7.0                    # Flux: the distilled guidance value
    true_cfg = 1.0                    # Flux only: > 1 for true CFG with the negative prompt
    size = [64, 64]                   # working size; default: native size at canvas aspect
    mask = "left.png"                 # optional grayscale, white = full weight
    loras = [{ file = "style.safetensors", scale = 0.8 }]   # optional, through diffusers
    denoiser = "transformer_2"        # a Wan2.2 folder's low-noise expert (default: its first)

    [[experts.controls]]
    model = "controlnets/edges"
    image = "edges.png"               # or source = "photo.png": control.json makes the image
    scale = 1.0
    window = { t = [0, 1000] }        # or, as diffusers and A1111 say it, fractions of steps:
    # control_guidance_start = 0.0, control_guidance_end = 0.5

A ``t`` window is [lo, hi) in the expert's own training timesteps (``hi = T`` reaches the
top of the trajectory); a ``sigma`` window is on the shared noise axis.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .editing import EditSpec, default_strength
from .errors import UserError
from .files import inside, keep_by_content, within
from .limits import MAX_SEED, MAX_STEPS, max_side
from .lora import LoraSpec
from .options import (
    BRIDGE_MODES,
    GENERATION,
    HUB_PREFIX,
    NOISE_POLICIES,
    OFFLOAD_MODES,
    SAMPLER_NAMES,
    ZOO_PREFIX,
)
from .tomlconf import TableReader as _Reader
from .tomlconf import apply_overrides, read_toml

TOP_KEYS = {
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "sampler",
    "noise",
    "guidance",
    "canvas",
    "experts",
    "bridge_every",
    "bridge",
    "offload",
}
CANVAS_KEYS = {"width", "height", "expert", "init_image", "strength", "mask", "place"}
CANVAS_KEYS |= {"mask_blur"}
EXPERT_KEYS = {
    "name",
    "model",
    "prompt",
    "negative_prompt",
    "window",
    "weight",
    "guidance",
    "true_cfg",
    "size",
    "mask",
    "controls",
    "loras",
    "denoiser",
}
CONTROL_KEYS = {"model", "image", "source", "scale", "window"}
CONTROL_KEYS |= {"control_guidance_start", "control_guidance_end"}
LORA_KEYS = {"file", "scale"}


@dataclass
class Window:
    """[lo, hi) on an expert's training timesteps (``unit="t"``) or on sigma."""

    unit: str = "sigma"
    lo: float = 0.0
    hi: float = math.inf


@dataclass
class ControlSpec:
    """A ControlNet with a ready control ``image``, or a ``source`` image from which the
    ControlNet's saved transform (control.json) computes one."""

    model: str
    image: str | None
    scale: float = 1.0
    window: Window = field(default_factory=Window)
    source: str | None = None
    # diffusers' control_guidance_start / _end: active on step i of N when
    # start <= i / N and (i + 1) / N <= end (instead of a noise window)
    steps: tuple[float, float] | None = None


@dataclass
class ExpertSpec:
    name: str
    model: str
    prompt: str
    negative_prompt: str | None = None
    window: Window = field(default_factory=Window)
    weight: float = 1.0
    guidance: float = GENERATION["guidance_scale"]
    true_cfg: float = 1.0  # Flux only: true classifier-free guidance (guidance: distilled)
    size: tuple[int, int] | None = None
    mask: str | None = None
    controls: list[ControlSpec] = field(default_factory=list)
    loras: list[LoraSpec] = field(default_factory=list)
    denoiser: str | None = None  # a pair-in-one folder's expert (Wan2.2): transformer_2


@dataclass
class Recipe:
    experts: list[ExpertSpec]
    width: int | None = None
    height: int | None = None
    canvas_expert: str | None = None
    seed: int = 0
    steps: int = GENERATION["steps"]
    sampler: str = GENERATION["sampler"]
    noise: str = GENERATION["noise"]
    bridge_every: int = 1
    bridge: str = GENERATION["bridge"]
    edit: EditSpec | None = None  # start from a picture (image to image, inpainting)
    offload: str = "none"  # how experts wait between their windows (the image is the same)

    def to_table(self, relative_to: Path | None = None) -> dict:
        """The recipe as a table in the recipe file's own form, JSON-able: what a PNG stores
        and :func:`parse_recipe` reads back. File paths are written relative to
        ``relative_to`` (the PNG's folder), so no machine path is stored."""

        def where(path: str | None) -> str | None:
            if path is None or path.startswith((ZOO_PREFIX, HUB_PREFIX)) or relative_to is None:
                return path
            return Path(os.path.relpath(path, relative_to)).as_posix()

        def window(w: Window) -> dict:
            return {w.unit: [w.lo, None if w.hi == math.inf else w.hi]}

        def drop_none(table: dict) -> dict:
            return {k: v for k, v in table.items() if v is not None}

        experts = []
        for e in self.experts:
            controls = [
                drop_none(
                    {
                        "model": where(c.model),
                        "image": where(c.image),
                        "source": where(c.source),
                        "scale": c.scale,
                        "window": None if c.steps else window(c.window),
                        "control_guidance_start": c.steps and c.steps[0],
                        "control_guidance_end": c.steps and c.steps[1],
                    }
                )
                for c in e.controls
            ]
            experts.append(
                drop_none(
                    {
                        "name": e.name,
                        "model": where(e.model),
                        "prompt": e.prompt,
                        "negative_prompt": e.negative_prompt,
                        "window": window(e.window),
                        "weight": e.weight,
                        "guidance": e.guidance,
                        "true_cfg": None if e.true_cfg == 1.0 else e.true_cfg,
                        "size": None if e.size is None else list(e.size),
                        "mask": where(e.mask),
                        "controls": controls,
                        "loras": [{"file": where(x.path), "scale": x.scale} for x in e.loras],
                        "denoiser": e.denoiser,
                    }
                )
            )
        canvas = {"width": self.width, "height": self.height, "expert": self.canvas_expert}
        if self.edit is not None:
            e = self.edit
            canvas |= {"init_image": where(e.image), "strength": e.strength, "mask": where(e.mask)}
            canvas |= {"place": e.place and list(e.place), "mask_blur": e.mask_blur or None}
        return {
            "seed": self.seed,
            "steps": self.steps,
            "sampler": self.sampler,
            "noise": self.noise,
            "bridge_every": self.bridge_every,
            "bridge": self.bridge,
            "canvas": drop_none(canvas),
            "experts": experts,
        }


INPUTS = "inputs"
"""The folder beside an output where the pictures a recipe reads are kept by content."""


def keep_inputs(recipe: Recipe, folder: Path) -> tuple[Recipe, dict]:
    """The recipe as it is stored beside an output in ``folder``: every picture it reads
    (masks, control images, control sources) named by its content hash in
    ``folder/inputs/``, and the writers that put them there (for
    :func:`pangudraw.files.write_outputs`, beside the output itself). A PNG's recipe may
    name files in the PNG's folder, so ``--from-png`` then needs no option.
    """
    from dataclasses import replace

    writers: dict[Path, object] = {}

    def kept(path: str | None, what: str) -> str | None:
        if path is None:
            return None
        target, writer = keep_by_content(path, folder, what)
        if writer is not None:
            writers[target] = writer
        return str(target)

    experts = [
        replace(
            e,
            mask=kept(e.mask, "mask"),
            controls=[
                replace(
                    c, image=kept(c.image, "control image"), source=kept(c.source, "source image")
                )
                for c in e.controls
            ],
        )
        for e in recipe.experts
    ]
    edit = recipe.edit and replace(
        recipe.edit,
        image=kept(recipe.edit.image, "init image"),
        mask=kept(recipe.edit.mask, "mask"),
    )
    return replace(recipe, experts=experts, edit=edit), writers


@dataclass(frozen=True)
class PathPolicy:
    """Which paths a recipe may name. A recipe file its user wrote may name anything; a
    recipe read from a PNG (someone else's, perhaps) only bundled models and files inside
    the PNG's folder unless the user allows more."""

    untrusted: str | None = None  # what the recipe came from, for messages; None: trusted
    allow_outside: bool = False  # absolute paths and paths leaving the folder
    allow_hub: bool = False  # hf:owner/name downloads
    roots: tuple[Path, ...] = ()  # folders whose files an untrusted recipe may also name
    hint: str = "pass --allow-outside-paths if you trust it to read files there"

    def allows(self, base: Path, value: str) -> bool:
        if not self.untrusted or self.allow_outside or inside(base, value):
            return True
        path = Path(value)
        return path.is_absolute() and any(within(root, path) for root in self.roots)


TRUSTED = PathPolicy()


def _window(reader: _Reader, key: str) -> Window:
    value = reader.get(key, dict)
    if value is None:
        return Window()
    form = "a table {t = [lo, hi]} or {sigma = [lo, hi]} with 0 <= lo < hi"
    if len(value) != 1 or next(iter(value)) not in ("t", "sigma"):
        reader.fail(key, f"expected {form}")
    unit, bounds = next(iter(value.items()))
    numbers = isinstance(bounds, list) and len(bounds) == 2
    if not numbers or not all(isinstance(b, int | float) or b is None for b in bounds):
        reader.fail(key, f"expected {form}")
    lo, hi = bounds[0], math.inf if bounds[1] is None else bounds[1]
    if not 0 <= lo < hi:
        reader.fail(key, f"expected {form}, got [{lo}, {hi}]")
    return Window(unit, float(lo), float(hi))


def _step_fractions(reader: _Reader) -> tuple[float, float] | None:
    """diffusers' ``control_guidance_start`` / ``_end``: 0 <= start < end <= 1."""
    start = reader.get("control_guidance_start", float)
    end = reader.get("control_guidance_end", float)
    if start is None and end is None:
        return None
    if "window" in reader.table:
        reader.fail("window", "give a window or control_guidance_start/end, not both")
    start, end = 0.0 if start is None else start, 1.0 if end is None else end
    if not 0 <= start < end <= 1:
        reader.fail(
            "control_guidance_start",
            f"expected fractions of the steps with 0 <= start < end <= 1, got {start}, {end}",
        )
    return start, end


def _path(
    reader: _Reader, key: str, base: Path, policy: PathPolicy, required: bool = False
) -> str | None:
    value = reader.get(key, str, required=required)
    if value is None:
        return None
    if not value or "\0" in value:
        reader.fail(key, "expected a file path or zoo:NAME")
    if value.startswith(ZOO_PREFIX):
        return value
    if value.startswith(HUB_PREFIX):
        if policy.untrusted and not policy.allow_hub:
            reader.fail(
                key,
                f"names the hub model {value!r}; {policy.untrusted} may name it, but nothing "
                "is downloaded for a PNG unless you pass --allow-hub",
            )
        return value
    if not policy.allows(base, value):
        reader.fail(
            key,
            f"{value!r} is outside the folder of {policy.untrusted}; {policy.hint}",
        )
    return str((base / value).resolve())


def _bounded(reader: _Reader, key: str, default: int, lo: int, hi: int, hint: str = "") -> int:
    value = reader.get(key, int, default)
    if value is not None and not lo <= value <= hi:
        reader.fail(key, f"expected an integer in [{lo}, {hi}], got {value}{hint}")
    return value


def _model_default(model: str, key: str):
    """The model's own default for ``key`` (Flux.1's guidance value, ...), else
    pangu-draw's (:data:`pangudraw.options.GENERATION`)."""
    from .families import model_defaults

    return model_defaults(model).get(key, GENERATION[key])


def _edit(canvas: _Reader, base: Path, policy: PathPolicy) -> EditSpec | None:
    """The canvas's picture to start from (and mask), checked; None without one."""
    image, mask = _path(canvas, "init_image", base, policy), _path(canvas, "mask", base, policy)
    if image is None:
        for key in ("strength", "mask", "place", "mask_blur"):
            if key in canvas.table:
                canvas.fail(key, "needs an init_image to start from")
        return None
    size = tuple(
        _bounded(canvas, key, None, 1, max_side(), SIDE_HINT) for key in ("width", "height")
    )
    try:
        strength = canvas.get("strength", float)
        strength = default_strength(image, mask, size) if strength is None else strength
    except UserError as exc:
        canvas.fail("init_image", str(exc))
    place = canvas.get("place", list)
    if place is not None and not (
        len(place) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in place)
    ):
        canvas.fail("place", f"expected [x, y] in pixels, got {place!r}")
    blur = _bounded(canvas, "mask_blur", 0, 0, 256)
    spec = EditSpec(image, strength, mask, place and tuple(place), blur)
    try:
        return spec.check()
    except UserError as exc:
        canvas.fail("init_image", str(exc))


def _choice(reader: _Reader, key: str, choices: tuple[str, ...], default: str) -> str:
    value = reader.get(key, str, default)
    if value not in choices:
        reader.fail(key, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


SIDE_HINT = " (raise PANGU_DRAW_MAX_SIDE for more)"


def _control(reader: _Reader, base: Path, policy: PathPolicy) -> ControlSpec:
    image = _path(reader, "image", base, policy)
    source_image = _path(reader, "source", base, policy)
    if (image is None) == (source_image is None):
        reader.fail(
            "image",
            "give exactly one of image (a control image) or source "
            "(an image the ControlNet's control.json transforms)",
        )
    return ControlSpec(
        _path(reader, "model", base, policy, required=True),
        image,
        reader.get("scale", float, 1.0),
        _window(reader, "window"),
        source_image,
        _step_fractions(reader),
    )


def _tables(reader: _Reader, key: str, keys: set[str], form: str) -> list[_Reader]:
    """Readers of the list of tables under ``key``."""
    readers = []
    for j, table in enumerate(reader.get(key, list, [])):
        if not isinstance(table, dict):
            reader.fail(f"{key}[{j}]", f"expected a table{form}")
        readers.append(_Reader(reader.source, table, f"{reader.where}.{key}[{j}]", keys))
    return readers


def _expert(r: _Reader, index: int, shared: dict, base: Path, policy: PathPolicy) -> ExpertSpec:
    """One ``[[experts]]`` table; ``shared`` holds the top-level prompt, negative prompt and
    guidance that an expert without its own takes."""
    size, side = r.get("size", list), max_side()
    if size is not None and not (
        len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= side for v in size)
    ):
        r.fail("size", f"expected [height, width] in pixels up to {side}, got {size!r}{SIDE_HINT}")
    controls = [_control(c, base, policy) for c in _tables(r, "controls", CONTROL_KEYS, "")]
    loras = [
        LoraSpec(_path(x, "file", base, policy, required=True), x.get("scale", float, 1.0))
        for x in _tables(r, "loras", LORA_KEYS, " { file = ..., scale = ... }")
    ]
    prompt = r.get("prompt", str, shared["prompt"])
    if prompt is None:
        r.fail("prompt", "missing; give a top-level prompt or one per expert")
    weight = r.get("weight", float, 1.0)
    if weight < 0:
        r.fail("weight", f"expected a number >= 0, got {weight}")
    true_cfg = r.get("true_cfg", float, 1.0)
    if true_cfg < 1:
        r.fail("true_cfg", f"expected a number >= 1 (1 turns it off), got {true_cfg}")
    model = _path(r, "model", base, policy, required=True)
    guidance = r.get("guidance", float, shared["guidance"])
    denoiser = r.get("denoiser", str)
    if denoiser not in (None, *DENOISERS):
        r.fail("denoiser", f"expected one of {', '.join(DENOISERS)}, got {denoiser!r}")
    return ExpertSpec(
        name=r.get("name", str, f"expert{index}"),
        model=model,
        prompt=prompt,
        negative_prompt=r.get("negative_prompt", str, shared["negative_prompt"]),
        window=_window(r, "window"),
        weight=weight,
        guidance=_model_default(model, "guidance_scale") if guidance is None else guidance,
        true_cfg=true_cfg,
        size=None if size is None else tuple(size),
        mask=_path(r, "mask", base, policy),
        controls=controls,
        loras=loras,
        denoiser=denoiser,
    )


DENOISERS = ("transformer", "transformer_2")
"""The experts of a folder that holds two (Wan2.2: high noise, low noise)."""


def parse_recipe(data: dict, source: str, base: Path, policy: PathPolicy = TRUSTED) -> Recipe:
    """Validate a recipe table; relative paths resolve against ``base``. What it leaves out
    is the canvas model's own default, else pangu-draw's (``options.GENERATION``)."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a table of recipe fields")
    base = base.resolve()
    top = _Reader(source, data, "", TOP_KEYS)
    canvas = _Reader(source, top.get("canvas", dict, {}), "canvas", CANVAS_KEYS)
    shared = {
        "prompt": top.get("prompt", str),
        "negative_prompt": top.get("negative_prompt", str),
        "guidance": top.get("guidance", float),
    }
    tables = top.get("experts", list, required=True)
    if not tables:
        top.fail("experts", "expected at least one [[experts]] table")
    for i, table in enumerate(tables):
        if not isinstance(table, dict):
            top.fail(f"experts[{i}]", "expected a table")
    experts = [
        _expert(_Reader(source, table, f"experts[{i}]", EXPERT_KEYS), i, shared, base, policy)
        for i, table in enumerate(tables)
    ]
    names = [e.name for e in experts]
    if len(set(names)) != len(names):
        top.fail("experts", f"expert names must be unique, got {names}")
    if all(e.weight == 0 for e in experts):
        top.fail("experts", "all weights are zero; give at least one expert a positive weight")
    canvas_expert = canvas.get("expert", str)
    if canvas_expert is not None and canvas_expert not in names:
        canvas.fail("expert", f"expected one of the expert names {names}, got {canvas_expert!r}")
    canvas_model = next((e.model for e in experts if e.name == canvas_expert), experts[0].model)
    steps = _bounded(top, "steps", _model_default(canvas_model, "steps"), 1, MAX_STEPS)
    return Recipe(
        edit=_edit(canvas, base, policy),
        experts=experts,
        width=_bounded(canvas, "width", None, 1, max_side(), SIDE_HINT),
        height=_bounded(canvas, "height", None, 1, max_side(), SIDE_HINT),
        canvas_expert=canvas_expert,
        seed=_bounded(top, "seed", 0, 0, MAX_SEED),
        steps=steps,
        sampler=_choice(top, "sampler", SAMPLER_NAMES, _model_default(canvas_model, "sampler")),
        noise=_choice(top, "noise", NOISE_POLICIES, GENERATION["noise"]),
        bridge_every=_bounded(top, "bridge_every", 1, 1, MAX_STEPS),
        bridge=_choice(top, "bridge", BRIDGE_MODES, GENERATION["bridge"]),
        offload=_choice(top, "offload", OFFLOAD_MODES, "none"),
    )


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    data = apply_overrides(read_toml(path, "recipe"), list(overrides), str(path))
    return parse_recipe(data, str(path), path.parent)


def recipe_from_png(
    path: Path,
    overrides: list[str] = (),
    allow_outside_paths: bool = False,
    allow_hub: bool = False,
) -> Recipe:
    """The recipe stored in a PNG that ``pangu-draw coop`` wrote, checked as untrusted input.

    Paths in it are relative to the PNG's folder; any other path, and any hub model, is
    refused unless allowed (``allow_outside_paths``, ``allow_hub``).
    """
    from .imageio import read_record

    record = read_record(path)
    table = record.get("recipe")
    if not isinstance(table, dict):
        raise UserError(f"{path} holds no pangu-draw coop recipe")
    source = f"the recipe in {path}"
    policy = PathPolicy(str(path), allow_outside_paths, allow_hub)
    # PNGs made before bridges were selectable bridged exactly; default or not, they do so
    table = {"bridge": "exact", **table}
    table = apply_overrides(table, list(overrides), source)
    return parse_recipe(table, source, Path(path).parent, policy)
