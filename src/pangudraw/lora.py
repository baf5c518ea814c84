"""LoRA: low-rank additions to an expert's network (and text encoders), through diffusers.

A LoRA file is read here (safetensors only unless the user opts in to pickle), converted
from its format (diffusers, kohya, ...) by the expert family's own diffusers pipeline class,
and loaded with PEFT into the expert's modules under its own adapter name; each adapter's
scale is then set, so scale 0 leaves the expert's output exactly as it was. The loader is
strict where diffusers only warns: a LoRA whose layers do not all find their place in the
model (a LoRA for another architecture) is refused.

Applying a LoRA changes a loaded expert in place: give each generation that wants a LoRA
its own loaded expert (the CLI loads per command).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:  # torch and diffusers load only when a LoRA is applied
    import torch

    from .expert import Expert


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and the scale its addition is multiplied by."""

    path: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """``PATH`` or ``PATH:SCALE`` (the CLI's ``--lora``)."""
        path, sep, tail = text.rpartition(":")
        if sep and path:
            try:
                scale = float(tail)
            except ValueError:
                return cls(text)
            if not math.isfinite(scale):
                raise UserError(f"LoRA scale in {text!r} must be a finite number")
            return cls(path, scale)
        return cls(text)

    def check(self, allow_pickle: bool = False) -> None:
        """Refuse, before any model loads, a missing file or a pickle file not allowed."""
        path = Path(self.path)
        if not path.is_file():
            raise UserError(f"LoRA file {path} does not exist")
        if path.suffix != ".safetensors" and not allow_pickle:
            raise UserError(
                f"LoRA {path} is not a .safetensors file; pickle files are refused unless "
                "you pass --allow-pickle"
            )


def _pipeline_class(expert: Expert):
    """The diffusers pipeline class whose LoRA loader knows this expert's family."""
    import diffusers

    if expert.family.lora_pipeline is None:
        raise UserError(
            f"diffusers has no LoRA loader for {expert.family.label}; pangu-draw reads LoRAs "
            "through diffusers' loaders"
        )
    return getattr(diffusers, expert.family.lora_pipeline)


def read_lora(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors: safetensors, or a pickle file only when allowed."""
    import torch

    LoraSpec(str(path)).check(allow_pickle)
    if path.suffix != ".safetensors":
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any unreadable or hostile pickle
            raise UserError(f"cannot read LoRA {path}: {str(exc).splitlines()[0]}") from exc
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"cannot read LoRA {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(state, dict) or not state:
        raise UserError(f"LoRA {path} holds no tensors")
    if not all(
        isinstance(v, torch.Tensor) and torch.isfinite(v.float()).all() for v in state.values()
    ):
        raise UserError(f"LoRA {path} holds a value that is not a finite tensor")
    return state


METADATA_KEY = "lora_adapter_metadata"
"""Where diffusers' ``save_lora_weights`` keeps each model's LoRA settings (``unet.r``,
``unet.lora_alpha``, ``unet.rank_pattern``, ...) in a safetensors header."""


def read_metadata(path: Path, state: dict[str, torch.Tensor]) -> dict | None:
    """The LoRA settings in a diffusers-format file's header (None when it has none).

    Without them every layer would be applied at alpha = rank. They are someone else's
    data: a rank must be one the file's tensors have (a rank alone would make the loader
    allocate layers of that size), an alpha a finite number.
    """
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(path, "pt") as handle:
        raw = (handle.metadata() or {}).get(METADATA_KEY)
    if raw is None:
        return None
    from .files import parse_json

    metadata = parse_json(raw, f"the LoRA settings in {path}")
    if not isinstance(metadata, dict):
        raise UserError(f"the LoRA settings in {path} are not a JSON object")
    ranks = {int(v.shape[0]) for k, v in state.items() if ".lora_A." in k or "lora_down" in k}

    for key, value in metadata.items():
        field = key.rsplit(".", 1)[-1]
        problem = None
        if field == "r" and value not in ranks:
            problem = f"is {value!r}, not a rank its tensors have ({sorted(ranks)})"
        elif field == "rank_pattern" and not (
            isinstance(value, dict) and all(r in ranks for r in value.values())
        ):
            problem = f"names ranks its tensors do not have ({sorted(ranks)})"
        elif field == "lora_alpha" and not _finite(value):
            problem = f"is {value!r}, not a finite number"
        elif field == "alpha_pattern" and not (
            isinstance(value, dict) and all(_finite(a) for a in value.values())
        ):
            problem = "holds an alpha that is not a finite number"
        if problem:
            raise UserError(f"LoRA {path}: {key} in its settings {problem}")
    return metadata


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _targets(state: dict[str, torch.Tensor], prefix: str) -> set[str]:
    """The modules a converted state dict adds LoRA layers to, under ``prefix.`` (in any of
    diffusers' layouts: ``.lora_A``, ``.lora.down``, ``.processor.to_q_lora.down``,
    ``.lora_linear_layer.down``)."""
    import re

    modules = set()
    for key in state:
        if not key.startswith(prefix + "."):
            continue
        key = re.sub(r"_lora\.(down|up)\.", r".lora.\1.", key.replace(".processor.", "."))
        if ".lora" in key:
            modules.add(key.split(".lora")[0])
    return modules


def _adapted(module: torch.nn.Module, adapter: str) -> int:
    """How many layers of ``module`` carry the LoRA ``adapter``."""
    import torch

    return sum(
        1
        for m in module.modules()
        if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict) and adapter in m.lora_A
    )


def apply_loras(expert: Expert, loras: list[LoraSpec], allow_pickle: bool = False) -> Expert:
    """Load ``loras`` into ``expert`` (in place) at their scales; returns the expert."""
    if not loras:
        return expert
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        raise UserError("LoRA needs the peft package: pip install 'pangu-draw[lora]'")
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    cls = _pipeline_class(expert)
    network_prefix = expert.family.network_component
    modules = {network_prefix: expert.network, **expert.family.lora_text_encoders(expert.text)}
    if getattr(expert.text, "shared", None):  # its encoder may change: no longer alike
        expert.text.shared = None
    adapters: dict[str, list[tuple[str, float]]] = {prefix: [] for prefix in modules}
    for index, spec in enumerate(loras):
        path = Path(spec.path)
        name = f"lora{index}"
        state = read_lora(path, allow_pickle)
        metadata = read_metadata(path, state)
        state, alphas = _convert(cls, state, path, expert)
        wanted = {prefix: _targets(state, prefix) for prefix in modules}
        if not any(wanted.values()):
            raise UserError(
                f"LoRA {path} has no layers for {expert.name} (a {expert.family.label} model); "
                "is it for another architecture?"
            )
        try:
            for prefix, module in modules.items():
                if not wanted[prefix]:
                    continue
                if prefix == network_prefix:
                    _load_into_network(cls, state, alphas, expert, name, metadata)
                else:
                    cls.load_lora_into_text_encoder(
                        state, alphas, module, prefix=prefix, adapter_name=name, metadata=metadata
                    )
                adapters[prefix].append((name, spec.scale))
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise UserError(
                f"LoRA {path} does not fit {expert.name}: {str(exc).splitlines()[0][:200]}"
            ) from exc
        for prefix, targets in wanted.items():
            placed = _adapted(modules[prefix], name)
            if placed < len(targets):
                raise UserError(
                    f"LoRA {path} does not fit {expert.name}: only {placed} of its "
                    f"{len(targets)} {prefix} layers have a place in the model; is it for "
                    "another architecture?"
                )
    for prefix, loaded in adapters.items():
        if loaded:
            names, scales = [n for n, _ in loaded], [s for _, s in loaded]
            set_weights_and_activate_adapters(modules[prefix], names, scales)
    return expert


def _convert(cls, state: dict, path: Path, expert: Expert) -> tuple[dict, dict | None]:
    """The state dict in diffusers' layout and its alphas, by the family's own converter,
    called as the family's ``load_lora_weights`` calls it (SDXL's with the UNet's config,
    which renumbers kohya's ``input_blocks``/``output_blocks`` names)."""
    import inspect

    import diffusers

    kwargs = {}
    if "return_alphas" in inspect.signature(cls.lora_state_dict).parameters:
        kwargs["return_alphas"] = True
    if cls is diffusers.StableDiffusionXLPipeline:  # SDXL-shaped UNets (PanGu-Draw v3 too)
        kwargs["unet_config"] = expert.network.config
    try:
        out = cls.lora_state_dict(dict(state), **kwargs)
    except (ValueError, KeyError, RuntimeError, TypeError, AttributeError) as exc:
        raise UserError(
            f"LoRA {path} is not a LoRA for a {expert.family.label} model that diffusers can read: "
            f"{str(exc).splitlines()[0][:200]}"
        ) from exc
    if isinstance(out, tuple):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


def _load_into_network(
    cls, state: dict, alphas: dict | None, expert: Expert, name: str, metadata: dict | None
):
    """The LoRA layers into the denoiser, as the family's ``load_lora_weights`` loads them."""
    import inspect

    kwargs = {"adapter_name": name, "metadata": metadata}
    if expert.family.network_component == "unet":
        cls.load_lora_into_unet(state, alphas, expert.network, **kwargs)
    elif "network_alphas" in inspect.signature(cls.load_lora_into_transformer).parameters:
        cls.load_lora_into_transformer(state, alphas, expert.network, **kwargs)
    else:  # SD3's loader takes no alphas
        cls.load_lora_into_transformer(state, expert.network, **kwargs)
