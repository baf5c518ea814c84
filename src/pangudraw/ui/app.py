"""``pangu-draw ui``: a gradio web UI over the same calls the CLI makes.

Tabs: Generate (one model or a structure + texture pair), Edit (image to image,
inpainting with a mask drawn on the picture, outpainting by margins: ``ui/edit.py``), Coop
(experts from different latent spaces, each with its prompt, window, region mask and
ControlNet, built into a recipe shown as TOML), PNG info (a pangu-draw PNG's parameters,
sent back to Generate, Coop or Edit) and Models (the bundled models' cards and sample
grids). Any result can be sent to Edit.

A run happens in a worker thread; the event handler is a generator that reports each
step (progress bar with ETA, a decoded preview of the fused x0 every few steps) and ends
with the saved images. Stop ends the run at the next step. Requests wait in gradio's
queue (their position is shown) and at most ``concurrency`` run at once; loaded models
are shared by all requests (:class:`pangudraw.loading.models.ModelCache`).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import gradio as gr

from ..errors import UserError
from ..files import write_outputs
from ..imageio import read_record
from ..loading.models import ModelCache
from ..options import GENERATION, SAMPLER_NAMES
from ..recipes import PathPolicy, parse_recipe
from ..render import (
    GenerateRequest,
    check_coop_size,
    prompt_lines,
    render_coop,
    render_generate,
    request_defaults,
)
from ..tomlconf import dumps, parse_toml
from .served import Served

SEED_MODES = ("random", "reuse last", "fixed")
SIZES = (32, 48, 64, 96, 128, 192, 256)
SLOTS = 4  # expert slots in the Coop form
NONE = "(none)"
NATIVE = "native"
UI_HINT = "the UI reads only uploaded images and the served model folders"
DEFAULT_PREVIEW_EVERY = 5


class Stopped(Exception):
    """Raised in the worker at the next step after Stop was pressed."""


def run_steps(
    work: Callable[[Callable], object], stop: threading.Event, preview_every: int
) -> Iterator[tuple]:
    """Run ``work(callback)`` in a thread; yield ``("step", done, total, preview)`` for
    each denoising step (``preview``: a PIL image of the fused x0 every ``preview_every``
    steps, else None), then one of ``("done", result)``, ``("stopped",)`` or
    ``("error", message)``. Closing the iterator stops the work at its next step."""
    from ..imageio import grid_image

    events: queue.Queue = queue.Queue()

    def callback(step) -> None:
        if stop.is_set():
            raise Stopped
        done = step.index + 1
        preview = None
        if preview_every and done % preview_every == 0 and done < step.total:
            images = step.preview()
            preview = grid_image(images, min(len(images), 4))
        events.put(("step", done, step.total, preview))

    def target() -> None:
        try:
            events.put(("done", work(callback)))
        except Stopped:
            events.put(("stopped",))
        except UserError as exc:
            events.put(("error", str(exc)))
        except Exception as exc:  # noqa: BLE001 - reported to the user, not swallowed
            events.put(("error", f"{type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=target, name="pangu-draw-run", daemon=True)
    thread.start()
    finished = False
    try:
        while True:
            event = events.get()
            finished = event[0] != "step"
            yield event
            if finished:
                return
    finally:
        if not finished:
            stop.set()
        thread.join()


def _eta(started: float, done: int, total: int) -> str:
    elapsed = time.monotonic() - started
    left = elapsed / done * (total - done) if done else math.nan
    return f"step {done}/{total}, {elapsed:.1f} s, ETA {left:.1f} s"


class App:
    """The UI's state shared by all sessions: served models, loaded experts, stop flags."""

    def __init__(
        self,
        served: Served,
        preview_every: int = DEFAULT_PREVIEW_EVERY,
        dtype: str = "float32",
        offload: str = "none",
    ):
        self.served = served
        self.models = ModelCache(dtype=dtype, offload=offload)
        self.preview_every = preview_every
        self._stops: dict[str, threading.Event] = {}

    def model_defaults(self, structure: str, texture: str) -> tuple:
        """Steps and guidance for the models just chosen (the texture model's when there is
        one), as ``generate`` fills them in: FluxPipeline's for Flux.1 (28 steps and 3.5 for
        dev, 4 for schnell), the release's for PanGu-Draw v3, pangu-draw's otherwise."""
        label = texture if texture and texture != NONE else structure
        try:
            defaults = request_defaults(self.served.model(label))
        except UserError:  # not served: the run reports it
            return gr.skip(), gr.skip()
        return min(defaults["steps"], self.served.limits.max_steps), defaults["guidance_scale"]

    # ------------------------------------------------------------------ runs

    @staticmethod
    def _session(request: gr.Request | None) -> str:
        return getattr(request, "session_hash", None) or "default"

    def stop(self, request: gr.Request) -> str:
        flag = self._stops.get(self._session(request))
        if flag is not None:
            flag.set()
        return "stopping at the next step..."

    def _run(self, work, request, progress, preview: bool) -> Iterator[tuple]:
        """Steps as ``(preview image or skip, status)``; finally ``("done", result)``."""
        session, flag = self._session(request), threading.Event()
        self._stops[session] = flag
        started = time.monotonic()
        every = self.preview_every if preview else 0
        try:
            for event in run_steps(work, flag, every):
                kind = event[0]
                if kind == "step":
                    _, done, total, image = event
                    progress((done, total), desc="denoising", unit="steps")
                    yield (gr.skip() if image is None else image), _eta(started, done, total)
                elif kind == "stopped":
                    raise gr.Error("stopped before the last step; nothing was saved")
                elif kind == "error":
                    raise gr.Error(event[1])
                else:
                    yield "done", event[1]
        finally:
            if self._stops.get(session) is flag:
                del self._stops[session]

    def _save(self, pictures, seeds) -> list[str]:
        paths = self.served.output_paths(seeds)
        write_outputs({path: p.writer() for path, p in zip(paths, pictures)})
        return [str(p) for p in paths]

    def generate(
        self,
        prompts: str,
        negative: str,
        structure: str,
        texture: str,
        split: float,
        steps: float,
        guidance: float,
        true_cfg: float | None,
        sampler: str,
        seed_mode: str,
        seed: float | None,
        width: float,
        height: float,
        num_images: float,
        preview: bool,
        last_seed: int | None,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008 - gradio's way of asking for a progress bar
    ):
        """Generate tab: yields (gallery, preview, status, last seed)."""
        try:
            numbers = {"width": width, "height": height, "images": num_images}
            width, height, num_images = (_whole(v, k) for k, v in numbers.items())
            r = self._request(
                prompts, negative, structure, texture, steps, guidance, sampler, seed_mode, seed,
                last_seed, width=width, height=height, num_images=num_images,
                t_split=float(split), true_cfg=float(1.0 if true_cfg is None else true_cfg),
            )  # fmt: skip
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        yield from self._render(r, {}, request, progress, preview)

    def edit(
        self,
        editor,
        prompts: str,
        negative: str,
        structure: str,
        texture: str,
        strength: float,
        blur: float,
        left: float,
        top: float,
        right: float,
        bottom: float,
        steps: float,
        guidance: float,
        sampler: str,
        seed_mode: str,
        seed: float | None,
        preview: bool,
        last_seed: int | None,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008
    ):
        """Edit tab (image to image, inpainting, outpainting): yields (gallery, preview,
        status, last seed)."""
        from .edit import edit_spec, read_editor, stored_names

        try:
            drawn = read_editor(editor, self.served)
            spec, width, height = edit_spec(
                drawn, self.served, strength, blur, [left, top, right, bottom]
            )
            r = self._request(
                prompts, negative, structure, texture, steps, guidance, sampler, seed_mode, seed,
                last_seed, width=width, height=height, edit=spec,
            )  # fmt: skip
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        yield from self._render(r, stored_names(spec, drawn), request, progress, preview)

    def _request(
        self,
        prompts: str,
        negative: str,
        structure: str,
        texture: str,
        steps: float,
        guidance: float,
        sampler: str,
        seed_mode: str,
        seed: float | None,
        last_seed: int | None,
        **settings,
    ) -> GenerateRequest:
        """A checked request from the form's fields (the tabs' shared ones, then the rest)."""
        lines = prompt_lines(prompts or "")
        if not lines:
            raise UserError("type a prompt (one per line for several)")
        if sampler not in SAMPLER_NAMES:
            raise UserError(f"sampler {sampler!r} is not one of {', '.join(SAMPLER_NAMES)}")
        steps = _whole(steps, "steps")
        if seed_mode == "fixed":
            seed = _whole(seed, "a fixed seed")
        else:
            seed = last_seed if seed_mode == "reuse last" else None
        texture_spec = None
        if texture and texture != NONE:
            texture_spec = self.served.model(texture, "texture model")
        count = len(lines) * settings.get("num_images", 1)
        self.served.limits.check(steps, count, settings["width"], settings["height"])
        return GenerateRequest(
            prompts=lines,
            negative_prompt=negative or None,
            structure=self.served.model(structure, "structure model"),
            texture=texture_spec,
            steps=steps,
            guidance_scale=float(guidance),
            sampler=sampler,
            seed=seed,
            **settings,
        ).check()

    def _render(self, r: GenerateRequest, stored: dict, request, progress, preview: bool):
        """Run a request in the worker: yields (gallery, preview, status, last seed)."""
        skip = gr.skip()
        yield skip, None, f"queued seed {r.seed}", r.seed
        work = lambda callback: render_generate(r, self.models, callback, stored=stored)  # noqa: E731
        for first, second in self._run(work, request, progress, preview):
            if first == "done":
                pictures = second
                paths = self._save(pictures, [p.record["seed"] for p in pictures])
                status = f"{len(paths)} image(s), seeds {r.seed}..{r.seed + r.count - 1}"
                yield paths, None, status, r.seed
            else:
                yield skip, first, second, r.seed

    def coop(
        self,
        recipe_text: str,
        preview: bool,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008
    ):
        """Coop tab: yields (image, preview, status)."""
        try:
            recipe = self.coop_recipe(recipe_text)
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        skip = gr.skip()
        yield skip, None, "queued"
        folder = self.served.outputs
        work = lambda callback: render_coop(recipe, folder, self.models, callback)  # noqa: E731
        for first, second in self._run(work, request, progress, preview):
            if first == "done":
                [path] = self._save([second], [recipe.seed])
                yield path, None, f"seed {recipe.seed}: {Path(path).name}"
            else:
                yield skip, first, second

    def coop_recipe(self, text: str):
        """The checked recipe of the Coop tab's TOML: served models, uploaded files only."""
        limits = self.served.limits
        if len(text or "") > 100_000:
            raise UserError("the recipe is over 100,000 characters")
        table = parse_toml(text or "", "recipe", "the recipe")
        policy = PathPolicy("the outputs folder", roots=self.served.model_dirs, hint=UI_HINT)
        recipe = parse_recipe(table, "the recipe", self.served.outputs, policy)
        if len(recipe.experts) > limits.max_experts:
            raise UserError(
                f"{len(recipe.experts)} experts; this server runs at most {limits.max_experts}"
            )
        for spec in recipe.experts:
            models = [spec.model] + [c.model for c in spec.controls]
            for model in models:
                if not self.served.is_served_spec(model):
                    raise UserError(f"model {model!r} is not served here; {UI_HINT}")
            if spec.loras:
                raise UserError("LoRAs are not served by the UI; use the CLI")
            if spec.size is not None:
                limits.check(1, 1, spec.size[1], spec.size[0])
        limits.check(recipe.steps, 1, recipe.width, recipe.height)
        check_coop_size(recipe)
        return recipe

    # ------------------------------------------------------------------ the Coop form

    def build_recipe(self, *values) -> str:
        """TOML of the Coop form (uploaded masks and controls kept in outputs/inputs)."""
        (prompt, negative, seed, steps, sampler, noise, width, height, canvas, count) = values[:10]
        fields = values[10:]
        per = len(fields) // SLOTS
        experts = []
        for k in range(int(count)):
            (model, e_prompt, weight, lo, hi, guidance, mask, control, image, as_source, scale) = (
                fields[k * per : (k + 1) * per - 1]
            )
            size = _working_size(fields[(k + 1) * per - 1], k)
            self.served.model(model, f"model of expert {k + 1}")
            table = {"name": f"e{k + 1}", "model": self.served.generators[model]}
            if e_prompt:
                table["prompt"] = e_prompt
            table |= {"weight": float(weight), "guidance": float(guidance)}
            if (float(lo), float(hi)) != (0.0, 1000.0):  # default: the whole trajectory
                table["window"] = {"t": [float(lo), float(hi)]}
            if size is not None:
                table["size"] = size
            mask_name = self._mask(mask, k)
            if mask_name:
                table["mask"] = mask_name
            if control and control != NONE:
                if not image:
                    raise UserError(f"expert {k + 1}: the ControlNet needs an image")
                name = self.served.keep_input(image, f"control image of expert {k + 1}")
                key = "source" if as_source else "image"
                model_spec = self.served.controlnet(control)
                table["controls"] = [{"model": model_spec, key: name, "scale": float(scale)}]
            experts.append(table)
        if not experts:
            raise UserError("add at least one expert")
        recipe = {"prompt": prompt or "", "seed": int(seed), "steps": int(steps)}
        if negative:
            recipe["negative_prompt"] = negative
        recipe |= {"sampler": sampler, "noise": noise}
        canvas_index = min(int(canvas), len(experts)) - 1
        recipe["canvas"] = {
            "width": int(width),
            "height": int(height),
            "expert": experts[canvas_index]["name"],
        }
        recipe["experts"] = experts
        return dumps(recipe)

    def _mask(self, mask, k: int) -> str | None:
        """A drawn or uploaded mask (gr.ImageEditor value) as a grayscale PNG input."""
        if not mask:
            return None
        source = mask.get("composite") if isinstance(mask, dict) else mask
        if source is None:
            return None
        from PIL import Image

        from ..imageio import opened

        with opened(source, f"mask of expert {k + 1}") as image:
            rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        grey = Image.alpha_composite(black, rgba).convert("L")
        if grey.getextrema() == (0, 0):
            return None  # nothing drawn
        return self.served.keep_image(grey)

    # ------------------------------------------------------------------ PNG info

    def png_info(self, path: str | None):
        """(parameters text, record) of a dropped pangu-draw PNG."""
        if not path:
            return "", None
        try:
            with open(path, "rb") as f:
                f.seek(0, 2)
                if f.tell() > self.served.limits.max_upload_mb * 2**20:
                    raise UserError("the PNG is over the upload limit")
            record = read_record(Path(path))
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        from ..imageio import opened

        with opened(path, "PNG") as image:
            parameters = getattr(image, "text", {}).get("parameters", "")
        return parameters, record

    def to_generate(self, record: dict | None):
        """The Generate tab's fields from a generate record (and the tab to show)."""
        if not isinstance(record, dict) or "prompt" not in record:
            raise gr.Error("this PNG was not made by generate; send it to Coop instead")
        structure = self.served.label_of(record.get("structure"))
        texture = self.served.label_of(record.get("texture")) or NONE
        if structure is None:
            raise gr.Error(f"model {record.get('structure')!r} is not served here")
        return (
            str(record.get("prompt", "")),
            record.get("negative_prompt") or "",
            structure,
            texture,
            record.get("split") or GENERATION["t_split"],
            record.get("steps", GENERATION["steps"]),
            record.get("guidance_scale", GENERATION["guidance_scale"]),
            record.get("true_cfg", 1.0),
            record.get("sampler", GENERATION["sampler"]),
            "fixed",
            record.get("seed", 0),
            record.get("width", 64),
            record.get("height", 64),
            1,
            gr.Tabs(selected="generate"),
        )

    def to_coop(self, record: dict | None):
        table = record.get("recipe") if isinstance(record, dict) else None
        if not isinstance(table, dict):
            raise gr.Error("this PNG holds no Coop recipe; send it to Generate instead")
        try:
            text = dumps(_open_windows(table))
        except (TypeError, ValueError) as exc:
            raise gr.Error(f"the PNG's recipe cannot be shown as TOML: {exc}") from None
        return text, gr.Tabs(selected="coop")


def _whole(value, what: str) -> int:
    if value is None or not float(value).is_integer():
        raise UserError(f"{what} must be a whole number, got {value!r}")
    return int(value)


def _working_size(text: str | None, k: int) -> list[int] | None:
    """``[height, width]`` of a ``WIDTHxHEIGHT`` choice; None for the native size."""
    if not text or text == NATIVE:
        return None
    width, sep, height = str(text).partition("x")
    if not (sep and width.isdigit() and height.isdigit() and int(width) and int(height)):
        raise UserError(f"working size of expert {k + 1}: expected WIDTHxHEIGHT, got {text!r}")
    return [int(height), int(width)]


def _open_windows(value):
    """A stored recipe table with ``null`` window tops (open windows) as TOML's ``inf``."""
    if isinstance(value, dict):
        return {k: _open_windows(v) for k, v in value.items()}
    if isinstance(value, list):
        return [math.inf if v is None else _open_windows(v) for v in value]
    return value
