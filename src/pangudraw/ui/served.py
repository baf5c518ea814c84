"""What the web UI serves and refuses: its models, its limits, its outputs folder.

Nothing here imports gradio or torch, so the checks run (and are tested) on their own.
A request names a model by its label (a bundled name, or ``FOLDER/NAME`` for a model
under a ``--models`` folder); any other label, and so any path on the server, is refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..files import check_output_folder, read_text, write_outputs
from ..options import ZOO_PREFIX

GENERATORS = ("structure", "texture", "full", "generator_b")  # bundled text-to-image models
CONTROLNETS = ("controlnet_canny", "controlnet_colour")


@dataclass(frozen=True)
class Limits:
    """The most one request may ask for (defaults a 2-core machine survives)."""

    max_side: int = 256
    max_steps: int = 100
    max_images: int = 8
    max_upload_mb: int = 10
    max_experts: int = 4

    def check(self, steps: int, count: int, width: int | None, height: int | None) -> None:
        def over(what: str, value, limit, unit: str = "") -> None:
            raise UserError(
                f"{what} {value}{unit} is over this server's limit of {limit}{unit}; "
                "ask for less (the server's --max-* options set the limits)"
            )

        if steps > self.max_steps:
            over("steps", steps, self.max_steps)
        if count > self.max_images:
            over("number of images", count, self.max_images)
        for name, side in (("width", width), ("height", height)):
            if side is not None and side > self.max_side:
                over(name, side, self.max_side, " px")


def _is_model_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def _is_single_file_model(path: Path) -> bool:
    """A ``.safetensors`` file with a UNet in the original layout (not a LoRA or a VAE);
    only the file's header is read."""
    from ..files import safetensors_keys

    return any(k.startswith("model.diffusion_model.") for k in safetensors_keys(path) or [])


def _is_model_spec(path: Path) -> bool:
    """A ``.toml`` file with a ``[model]`` table naming a denoiser (a model spec)."""
    from ..families import spec_denoiser

    return spec_denoiser(path) is not None


def _is_controlnet_folder(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == "ControlNetModel"
    except (OSError, ValueError, AttributeError):
        return False


@dataclass
class Served:
    """The models a request may name (label -> path) and where results go."""

    outputs: Path
    model_dirs: tuple[Path, ...] = ()
    limits: Limits = field(default_factory=Limits)
    generators: dict[str, str] = field(default_factory=dict)  # label -> model spec
    controlnets: dict[str, str] = field(default_factory=dict)

    @classmethod
    def find(cls, outputs: Path, model_dirs=(), limits: Limits | None = None) -> Served:
        """The bundled models plus every model folder, single-file checkpoint and model
        spec directly under ``model_dirs``."""
        from .. import zoo

        dirs = tuple(Path(d).resolve() for d in model_dirs)
        for folder in dirs:
            if not folder.is_dir():
                raise UserError(f"models folder {folder} does not exist")
        served = cls(Path(outputs), dirs, limits or Limits())
        for name in GENERATORS:
            if zoo.is_model(name):
                served.generators[name] = f"{ZOO_PREFIX}{name}"
        for name in CONTROLNETS:
            if zoo.is_model(name):
                served.controlnets[name] = f"{ZOO_PREFIX}{name}"
        for folder in dirs:
            for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
                label = f"{folder.name}/{sub.name}"
                if _is_model_folder(sub):
                    served.generators[label] = str(sub)
                elif _is_controlnet_folder(sub):
                    served.controlnets[label] = str(sub)
            for file in sorted(folder.glob("*.safetensors")):
                if file.is_file() and _is_single_file_model(file):
                    served.generators[f"{folder.name}/{file.name}"] = str(file)
            for file in sorted(folder.glob("*.toml")):
                if file.is_file() and _is_model_spec(file):
                    served.generators[f"{folder.name}/{file.name}"] = str(file)
        return served

    def model(self, label: str | None, what: str = "model") -> str:
        """The model spec of a served label; an error for anything else."""
        if label not in self.generators:
            known = ", ".join(self.generators)
            raise UserError(f"{what} {label!r} is not served here; choose one of: {known}")
        return self.generators[label]

    def controlnet(self, label: str) -> str:
        if label not in self.controlnets:
            known = ", ".join(self.controlnets) or "none"
            raise UserError(f"ControlNet {label!r} is not served here; choose one of: {known}")
        return self.controlnets[label]

    def label_of(self, spec: str | None) -> str | None:
        """The label of a model spec as a PNG records it (``zoo:NAME`` or a path)."""
        if spec is None:
            return None
        for table in (self.generators, self.controlnets):
            for label, known in table.items():
                if known == spec:
                    return label
        return None

    def is_served_spec(self, spec: str) -> bool:
        """Whether a resolved recipe model (``zoo:NAME`` or a path) is a served model."""
        known = set(self.generators.values()) | set(self.controlnets.values())
        if spec.startswith(ZOO_PREFIX):
            return spec in known
        resolved = Path(spec).resolve()
        return any(Path(k).resolve() == resolved for k in known if not k.startswith(ZOO_PREFIX))

    # ------------------------------------------------------------------------ outputs

    def prepare(self) -> None:
        check_output_folder(self.outputs, "outputs folder")
        (self.outputs / "inputs").mkdir(parents=True, exist_ok=True)

    def output_paths(self, seeds: list[int]) -> list[Path]:
        """New, unused PNG names in the outputs folder, one per image."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        paths = []
        for i, seed in enumerate(seeds):
            n = 0
            while True:
                path = self.outputs / f"{stamp}-{seed}-{i}{'' if n == 0 else f'-{n}'}.png"
                if not path.exists() and path not in paths:
                    break
                n += 1
            paths.append(path)
        return paths

    def check_upload(self, path: str | Path, what: str) -> None:
        """Refuse an upload over the limit (before it is decoded)."""
        if Path(path).stat().st_size > self.limits.max_upload_mb * 2**20:
            raise UserError(f"{what} is over the {self.limits.max_upload_mb} MB upload limit")

    def keep_input(self, path: str | Path, what: str) -> str:
        """An uploaded image, kept by :meth:`keep_image`; refused over the upload limit."""
        from ..imageio import opened

        self.check_upload(path, what)
        with opened(path, what) as image:
            kept = image.convert("RGBA" if image.mode in ("RGBA", "LA") else "RGB")
        return self.keep_image(kept)

    def keep_image(self, image) -> str:
        """Save a PIL image as PNG in ``outputs/inputs`` under its content hash; the name
        relative to the outputs folder (what a recipe, and a PNG's record, names)."""
        import io

        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        name = f"inputs/{hashlib.sha256(data).hexdigest()[:16]}.png"
        target = self.outputs / name
        if not target.exists():
            write_outputs({target: lambda f: f.write(data)})
        return name

    def history(self, count: int = 24) -> list[str]:
        """The newest result PNGs, newest first."""
        found = sorted(self.outputs.glob("*.png"), key=lambda p: p.stat().st_mtime, reverse=True)
        return [str(p) for p in found[:count]]


def card(name: str) -> tuple[str, Path | None]:
    """A bundled model's card (markdown) and its sample grid, if it has one."""
    from .. import zoo

    folder = zoo.folder(name)
    text = read_text(folder / "README.md", "model card")
    grid = next((folder / g for g in ("grid.png", "samples.png") if (folder / g).is_file()), None)
    return text, grid
