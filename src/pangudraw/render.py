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
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import UserError
from .lora import LoraSpec
from .options import (
    BRIDGE_MODES,
    DEFAULT_BRIDGE,
    DEFAULT_SAMPLER,
    DEFAULT_SPLIT,
    DEFAULT_STEPS,
    DTYPES,
)


@dataclass
class Picture:
    """One generated image with its A1111 ``parameters`` text and JSON ``record``."""

    image: object  # PIL.Image.Image
    parameters: str
    record: dict

    def writer(self):
        from .imageio import png_writer

        return png_writer(self.image, self.parameters, self.record)


def bundled(model: str | Path) -> Path:
    """A model folder, ``zoo:NAME``, or the bundled model of that name when no such
    folder exists."""
    from . import zoo
    from .experts import resolve_model

    text = str(model)
    if not Path(text).exists() and zoo.is_model(text):
        return zoo.folder(text)
    return resolve_model(text)


def model_label(path: Path) -> str:
    """How a PNG records a model: ``zoo:NAME`` for a bundled one (no machine path)."""
    from . import zoo

    return zoo.name_of(path) or str(path)


def default_device() -> str | None:
    """The GPU when torch sees one, else None (the CPU, where models load)."""
    import torch

    return "cuda" if torch.cuda.is_available() else None


class Experts:
    """Loaded experts, one per model folder and set of LoRAs, shared between requests.

    Experts hold no per-generation state, so one loaded model serves every request; the
    lock makes a model that two requests ask for at once load once.
    """

    def __init__(
        self, allow_pickle: bool = False, device: str | None = None, dtype: str = "float32"
    ):
        self.allow_pickle = allow_pickle
        self.device = device or default_device()  # None: where they load (the CPU)
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}; use {', '.join(DTYPES)}")
        self.dtype = dtype  # the networks' and text encoders' (a name: no torch here)
        self._loaded: dict[tuple, object] = {}
        self._components: dict = {}  # the same files on disk load once (no LoRA)
        self._lock = threading.Lock()

    def get(self, model: str | Path, loras: list[LoraSpec] = ()):
        from .experts import load_expert
        from .lora import apply_loras

        path = bundled(model)
        key = (str(path.resolve()), tuple(loras))
        with self._lock:
            if key not in self._loaded:
                cache = None if loras else self._components
                expert = load_expert(path, self.allow_pickle, cache)
                expert = apply_loras(expert, list(loras), self.allow_pickle)
                self._loaded[key] = expert.to(self.device, self._torch_dtype())
            return self._loaded[key]

    def _torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def controlnet(self, model: str | Path, expert):
        """A ControlNet, loaded once and shared like the experts (and moved to their
        device), checked against ``expert`` on every use."""
        from .experts import check_controlnet, load_controlnet

        path = bundled(model)
        key = ("controlnet", str(path.resolve()))
        with self._lock:
            if key not in self._loaded:
                net = load_controlnet(str(path), expert, self.allow_pickle)
                self._loaded[key] = net.to(device=self.device, dtype=self._torch_dtype())
            net = self._loaded[key]
        check_controlnet(net, str(path), expert)
        return net


@dataclass
class GenerateRequest:
    """What ``pangu-draw generate`` takes: prompts, models and sampling settings."""

    prompts: list[str]
    negative_prompt: str | None = None
    structure: str | None = None  # None: the bundled structure + texture pair
    texture: str | None = None
    # None below: the models' defaults (PanGu-Draw v3's release settings for a converted
    # release, pangu-draw's own otherwise)
    t_split: float | None = float(DEFAULT_SPLIT)
    steps: int | None = DEFAULT_STEPS
    guidance_scale: float | None = 7.0
    sampler: str | None = DEFAULT_SAMPLER
    seed: int | None = None  # None: random
    width: int | None = None
    height: int | None = None
    num_images: int = 1  # per prompt; image i uses seed + i
    loras: list[LoraSpec] = field(default_factory=list)
    batch_size: int = 8  # images denoised together (results depend on the batch: see below)
    styles: list[tuple[str, float]] | None = None  # PanGu-Draw v3 style branches
    bridge: str = DEFAULT_BRIDGE  # exact, or learned (bundled translators where trained)
    handoff: str | None = None  # "release" (PanGu-Draw v3's rule) or "sigma"
    true_cfg: float = 1.0  # Flux models' true classifier-free guidance (> 1 turns it on)

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
        defaults = model_defaults(texture or structure)
        filled = {
            k: defaults[k] if getattr(self, k) is None else getattr(self, k)
            for k in ("t_split", "steps", "guidance_scale", "sampler", "styles", "handoff")
        }
        width, height = self.width, self.height
        if width is None and height is None and "size" in defaults:
            width, height = defaults["size"]
        check_true_cfg(self.true_cfg)
        if self.bridge not in BRIDGE_MODES:
            raise UserError(f"unknown bridge {self.bridge!r}; use {' or '.join(BRIDGE_MODES)}")
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


def model_defaults(model: str) -> dict:
    """Sampling defaults for a model: the release's for converted PanGu-Draw v3 models
    (with a default size among its buckets), FluxPipeline's steps and guidance value for
    Flux.1, pangu-draw's otherwise. No torch."""
    from .families import flux_defaults
    from .pangu import RELEASE, release_info

    info = release_info(model) if Path(model).is_dir() else None
    if info is None:
        defaults = {
            "t_split": float(DEFAULT_SPLIT),
            "steps": DEFAULT_STEPS,
            "guidance_scale": 7.0,
            "sampler": DEFAULT_SAMPLER,
            "styles": [],
            "handoff": "sigma",
        }
        return defaults | flux_defaults(model)
    buckets = [tuple(b) for b in info.get("size_buckets") or []]
    size = RELEASE["size"] if RELEASE["size"] in buckets or not buckets else buckets[0]
    defaults = {k: v for k, v in RELEASE.items() if k != "size"}
    return defaults | {"styles": list(RELEASE["styles"]), "handoff": "release", "size": size}


def prompt_lines(text: str) -> list[str]:
    """One prompt per line, blank lines skipped (a prompts file, the UI's prompt box)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def render_generate(
    request: GenerateRequest,
    experts: Experts,
    callback: Callable | None = None,
    batches: list[range] | None = None,
) -> list[Picture]:
    """The images of a checked request (see :meth:`GenerateRequest.check`), in prompt
    order, ``num_images`` per prompt; only those of ``batches`` (default: all of
    :meth:`GenerateRequest.batches`)."""
    pictures = []
    for images in request.batches() if batches is None else batches:
        pictures += _render_batch(request, experts, callback, images)
    return pictures


def _render_batch(
    request: GenerateRequest, experts: Experts, callback: Callable | None, images: range
) -> list[Picture]:
    from . import __version__
    from .imageio import a1111_parameters
    from .pipelines import generate

    r = request
    structure = bundled(r.structure)
    texture = None if r.texture is None else bundled(r.texture)
    structure_expert = experts.get(structure, r.loras)
    texture_expert = None if texture is None else experts.get(texture, r.loras)
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
        handoff=r.handoff or "sigma",
        bridge=r.bridge,
        true_cfg=r.true_cfg,
    )
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
            "split": r.t_split if texture is not None else None,
            "loras": [{"file": spec.path, "scale": spec.scale} for spec in r.loras],
            "version": __version__,
        }
        if result.bridges:
            record |= {"bridge": r.bridge, "bridges": result.bridges}
        if r.styles or r.handoff == "release":
            record |= {"styles": [list(s) for s in r.styles or []], "handoff": r.handoff}
        if r.true_cfg != 1.0:
            record["true_cfg"] = r.true_cfg
        if experts.dtype != "float32":
            record["dtype"] = experts.dtype
        settings = {
            "Steps": r.steps,
            "Sampler": r.sampler,
            "CFG scale": r.guidance_scale,
            **({"True CFG scale": r.true_cfg} if r.true_cfg != 1.0 else {}),
            "Seed": image_seed,
            "Size": f"{width}x{height}",
            "Model": structure.name,
        }
        if texture is not None:
            settings |= {"Texture model": texture.name, "Split": f"{r.t_split:g}"}
        if r.bridge != "exact" and result.bridges:
            settings["Bridge"] = r.bridge
        if r.styles:
            settings["Styles"] = ", ".join(f"{name}:{scale:g}" for name, scale in r.styles)
        if r.loras:
            settings["LoRA"] = ", ".join(f"{Path(s.path).stem}:{s.scale:g}" for s in r.loras)
        if experts.dtype != "float32":
            settings["Precision"] = experts.dtype
        settings["Version"] = f"pangu-draw {__version__}"
        parameters = a1111_parameters(prompt, r.negative_prompt, settings)
        pictures.append(Picture(image, parameters, record))
    return pictures


def check_coop_size(recipe) -> None:
    """Refuse, before torch loads, a recipe canvas this machine cannot hold."""
    from .limits import check_memory, pixel_estimate

    if recipe.width is not None and recipe.height is not None:
        size = f"an image of {recipe.width}x{recipe.height}"
        check_memory(pixel_estimate(1, recipe.height, recipe.width), size)


def render_coop(
    recipe,
    folder: Path,
    experts: Experts | None = None,
    callback: Callable | None = None,
    stored=None,
) -> Picture:
    """The image of a Coop recipe; its record stores the recipe (``stored`` when given: the
    same recipe with its inputs kept elsewhere, :func:`recipes.keep_inputs`) with paths
    relative to ``folder`` (where the PNG goes), so ``--from-png`` makes it again."""
    from . import __version__
    from .imageio import a1111_parameters
    from .pipelines import coop_generate

    allow_pickle = experts.allow_pickle if experts is not None else False
    result = coop_generate(recipe, callback, allow_pickle, experts)
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
    stored = stored or recipe
    record = {"recipe": stored.to_table(Path(folder).resolve()), "version": __version__}
    if experts is not None and experts.dtype != "float32":
        record["dtype"] = settings["Precision"] = experts.dtype
    settings["Version"] = f"pangu-draw {__version__}"
    parameters = a1111_parameters(first.prompt, first.negative_prompt, settings)
    if result.bridges:
        record["bridges"] = result.bridges
    return Picture(result.to_pil()[0], parameters, record)
