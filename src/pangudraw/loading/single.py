"""Single-file checkpoints (SD 1.x, SDXL, SD3 and Flux.1 in their own key layouts) and
model specs (a model's component files named in a TOML file) as experts.

A file like ``v1-5-pruned-emaonly.safetensors`` or ``sd_xl_base_1.0.safetensors`` holds the
UNet or MMDiT (``model.diffusion_model.*``), the VAE (``first_stage_model.*``) and the text
towers (``cond_stage_model.transformer.*`` in SD 1.x, ``conditioner.embedders.N.*`` in SDXL,
``text_encoders.clip_l/clip_g/t5xxl.transformer.*`` in SD3, and in Flux.1 as ComfyUI saves
a whole checkpoint, whose transformer keeps Black Forest Labs' names). It loads offline:
the architecture is read from the tensor shapes (:mod:`pangudraw.original`), the keys are
mapped by diffusers' single-file conversion, the tokenizers are built from CLIP's BPE and
T5's vocabulary that ship in the package, and the scheduler is the family's published
configuration (``published/``). No config or tokenizer is fetched from the hub.

Families told apart by their keys: SD 1.x (CLIP ViT-L/14), SDXL base (CLIP ViT-L/14 and
OpenCLIP bigG), SDXL refiner (bigG alone, aesthetic score), SD3/SD3.5 with its two CLIPs
and T5-XXL (``sd3_medium_incl_clips_t5xxlfp16.safetensors``) or without T5
(``sd3_medium_incl_clips.safetensors``; the MMDiT then sees zeros where T5's tokens would
be, as diffusers does without T5), Flux.1 dev or schnell (CLIP-L and T5-XXL; dev when the
transformer has a guidance embedding). Refused with what to do instead: SD 2.x (the file
does not say whether it predicts noise or velocity) and files without their VAE or text
encoders.

SD3.5 and Flux.1 are published as component files (``flux1-dev.safetensors`` holds the
transformer alone, ``ae.safetensors`` the VAE, ``clip_l`` and ``t5xxl_fp16`` the text
encoders). A model spec names them, paths relative to the spec::

    [model]
    denoiser = "flux1-dev.safetensors"
    vae = "ae.safetensors"
    clip_l = "clip_l.safetensors"
    t5xxl = "t5xxl_fp16.safetensors"

Each file's keys are put under the prefix its role has in a whole checkpoint (a file that
already uses those prefixes, like SD3.5's MMDiT with its VAE, keeps them), and the result
loads as one single file would. Each family module builds its own parts
(``from_original``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..families import BY_NAME, family_of_component
from ..layouts import (
    REFINER_BIGG,
    SD1_CLIP,
    SD2_CLIP,
    SD3_CLIP_G,
    SD3_CLIP_L,
    SD3_T5,
    UNET,
    VAE,
    XL_BIGG,
    XL_CLIP,
)
from ..layouts import has as _has
from ..original import IGNORED_PREFIXES, IGNORED_TAILS, SCHEDULE_BUFFERS

# A model spec's roles and the prefix each has in a whole checkpoint.
ROLES = {
    "denoiser": UNET,
    "vae": VAE,
    "clip_l": SD3_CLIP_L,
    "clip_g": SD3_CLIP_G,
    "t5xxl": SD3_T5,
}
WHOLE_PREFIXES = (UNET, VAE, "text_encoders.", "conditioner.", "cond_stage_model.")
SPEC_HINT = (
    "name the component files in a model spec (a .toml file with a [model] table: "
    "denoiser, vae, clip_l, clip_g, t5xxl)"
)
# What each kind of file holds besides its UNet and VAE, and how messages name it.
TOWERS = {
    "sd1": (SD1_CLIP,),
    "sdxl": (XL_CLIP, XL_BIGG),
    "sdxl-refiner": (REFINER_BIGG,),
    "sd3": (SD3_CLIP_L, SD3_CLIP_G, SD3_T5),
    "flux": (SD3_CLIP_L, SD3_T5),
}
LAYOUTS = {
    "sd1": "an SD 1.x checkpoint",
    "sdxl": "an SDXL checkpoint",
    "sdxl-refiner": "an SDXL checkpoint",
    "sd3": "an SD3 checkpoint",
    "flux": "a Flux.1 checkpoint",
}
FAMILY_OF_KIND = {"sd1": "sd", "sdxl": "sdxl", "sdxl-refiner": "sdxl", "sd3": "sd3", "flux": "flux"}


def _float32(tensor: torch.Tensor) -> torch.Tensor:
    """Floating-point values as float32 (experts compute in float32); others unchanged."""
    return tensor.float() if tensor.is_floating_point() else tensor


def read_tensors(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """The state dict of a ``.safetensors`` file (or, with ``allow_pickle``, a ``.ckpt``),
    floating-point values as float32, converted one tensor at a time as they are read (an
    SDXL file in float16 would otherwise sit in memory twice)."""
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    if path.suffix.lower() == ".ckpt":
        if not allow_pickle:
            raise UserError(
                f"{path} is a pickle checkpoint, which can run code when loaded; use a "
                ".safetensors file, or pass --allow-pickle if you trust this one"
            )
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # weights_only refusals, truncated or foreign files
            raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc
        if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
            loaded = loaded["state_dict"]
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
        ):
            raise UserError(f"{path} does not hold a state dict of tensors")
        return dequantised({k: _float32(v) for k, v in loaded.items()}, path)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "pt") as handle:
            tensors = {k: _float32(handle.get_tensor(k)) for k in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc
    return dequantised(tensors, path)


def dequantised(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Weights of ComfyUI's "scaled" fp8 files (``*_fp8_scaled.safetensors``, e.g.
    ``t5xxl_fp8_e4m3fn_scaled``), dequantised: each float8 ``X.weight`` (already float32
    here) times its ``X.scale_weight`` (one number, or one per output row), as ComfyUI's
    own loader computes it; the ``scaled_fp8`` marker and the activation scales
    (``X.scale_input``, for fp8 matrix products) go. Plain fp8 files need nothing more.
    Formats that need more than a scale per tensor are refused in one line."""
    if any(k.endswith(".comfy_quant") for k in tensors):
        raise UserError(
            f"{path}: ComfyUI's mixed quantisation (comfy_quant) is not supported; use the "
            "file's bf16, fp16 or fp8_scaled release"
        )
    tensors.pop("scaled_fp8", None)
    for key in [k for k in tensors if k.endswith(".scale_input")]:
        del tensors[key]
    for key in [k for k in tensors if k.endswith(".scale_weight")]:
        scale = tensors.pop(key)
        target = key[: -len("scale_weight")] + "weight"
        weight = tensors.get(target)
        if weight is None or not weight.is_floating_point() or not scale.is_floating_point():
            raise UserError(f"{path}: {key} scales no floating-point weight {target}")
        if scale.numel() == 1:
            scale = scale.reshape(())
        elif weight.dim() > 0 and scale.numel() == weight.shape[0]:
            scale = scale.reshape(-1, *[1] * (weight.dim() - 1))
        else:
            raise UserError(
                f"{path}: {key} has {scale.numel()} values for a weight of shape "
                f"{tuple(weight.shape)}; a scale is one number or one per row"
            )
        if not torch.isfinite(scale).all():
            raise UserError(f"{path}: {key} holds a value that is not finite")
        tensors[target] = weight * scale
    return tensors


def family_of(tensors: dict) -> str:
    """``sd1``, ``sdxl``, ``sdxl-refiner``, ``sd3``, ``flux``; the families recognised but
    not loaded, and anything else, are errors saying what to do."""
    if _has(tensors, "double_blocks."):
        raise UserError(f"this file holds a Flux transformer alone; {SPEC_HINT}")
    if _has(tensors, UNET + "double_blocks."):
        parts = {"VAE": VAE, "CLIP-L": SD3_CLIP_L, "T5-XXL": SD3_T5}
        missing = [name for name, prefix in parts.items() if not _has(tensors, prefix)]
        if missing:
            raise UserError(f"this Flux model lacks its {', '.join(missing)}; {SPEC_HINT}")
        return "flux"
    if _has(tensors, "model.diffusion_model.joint_blocks.", "joint_blocks."):
        if not (_has(tensors, SD3_CLIP_L) and _has(tensors, SD3_CLIP_G)):
            raise UserError(
                "this SD3 model has no CLIP text encoders (text_encoders.clip_l/clip_g); use "
                f"the file that includes them, or {SPEC_HINT}"
            )
        if not _has(tensors, "model.diffusion_model."):
            raise UserError("the MMDiT's keys lack the model.diffusion_model. prefix")
        return "sd3"
    if not _has(tensors, UNET):
        raise UserError(
            "no UNet (model.diffusion_model.*): not an SD 1.x, SDXL or SD3 checkpoint in the "
            "original layout (a LoRA goes to --lora, a diffusers model is a folder)"
        )
    if _has(tensors, XL_BIGG):
        return "sdxl"
    if _has(tensors, REFINER_BIGG):
        return "sdxl-refiner"
    if _has(tensors, SD2_CLIP):
        raise UserError(
            "this is an SD 2.x single file, which does not say whether the model predicts "
            "noise or velocity; save it as a diffusers folder and give the folder"
        )
    if _has(tensors, SD1_CLIP):
        return "sd1"
    raise UserError(
        "the UNet comes without its text encoder (cond_stage_model.* or conditioner.*): "
        "pangu-draw loads complete SD 1.x, SDXL and SD3 single files"
    )


def _unexpected(tensors: dict, known: tuple[str, ...]) -> list[str]:
    return sorted(
        k
        for k in tensors
        if not k.startswith(known + IGNORED_PREFIXES)
        and k not in SCHEDULE_BUFFERS
        and k.rsplit(".", 1)[-1] not in IGNORED_TAILS
    )


def load_single_file(path: str | Path, allow_pickle: bool = False):
    """An :class:`~pangudraw.experts.Expert` from an SD 1.x, SDXL, SD3 or Flux.1 single
    file."""
    path = Path(path)
    return _expert(path, read_tensors(path, allow_pickle))


def load_model_spec(path: str | Path, allow_pickle: bool = False):
    """An :class:`~pangudraw.experts.Expert` from a model spec: a TOML file whose
    ``[model]`` table names the component files (module docstring)."""
    from ..tomlconf import TableReader, read_toml

    path = Path(path)
    table = read_toml(path, "model spec")
    if not isinstance(table.get("model"), dict) or set(table) != {"model"}:
        raise UserError(
            f"{path} is not a model spec: expected one [model] table naming the files "
            "(denoiser, vae, clip_l, clip_g, t5xxl)"
        )
    reader = TableReader(str(path), table["model"], "model", set(ROLES) | set(SPLIT_ROLES))
    denoiser = reader.get("denoiser", str, required=True)
    family = family_of_component(path.parent / denoiser)
    if family is not None:
        return _split_expert(path, reader, family, allow_pickle)
    for role in SPLIT_ROLES:
        if role not in ROLES and role in table["model"]:
            reader.fail(role, "is for the diffusion models ComfyUI publishes apart (Z-Image, Wan)")
    names = {role: reader.get(role, str, required=role == "denoiser") for role in ROLES}
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for role, name in names.items():
        if name is None:
            continue
        file = path.parent / name
        if file.suffix.lower() not in (".safetensors", ".ckpt"):
            reader.fail(role, f"expected a .safetensors file, got {name!r}")
        part = read_tensors(file, allow_pickle)
        if not any(k.startswith(WHOLE_PREFIXES) for k in part):
            part = {ROLES[role] + k: v for k, v in part.items()}
        for key in part:
            if key in tensors:
                raise UserError(f"{path}: {key} is in both {origin[key].name} and {file.name}")
            origin[key] = file
        tensors |= part
    return _expert(path, tensors)


# A split-file spec's roles (the 2026 families: :mod:`pangudraw.split_files`): Wan2.2's
# pair names its low-noise model too, and where it takes over.
SPLIT_ROLES = (
    "denoiser", "denoiser_2", "boundary_ratio", "vae", "text_encoder", "tokenizer", "scheduler",
)  # fmt: skip


def _split_expert(path: Path, reader, family, allow_pickle: bool):
    """An expert of ``family`` from its split files: each file named in the spec, the
    tokenizer a folder, the scheduler a config file or the family's published one."""
    from ..files import read_json
    from .folder import assemble
    from .schedulers import check_scheduler_config

    tensors = {}
    second = reader.get("denoiser_2", str) is not None
    for role in ("denoiser", "vae", "text_encoder") + (("denoiser_2",) if second else ()):
        name = reader.get(role, str, required=True)
        file = path.parent / name
        if file.suffix.lower() not in (".safetensors", ".ckpt"):
            reader.fail(role, f"expected a .safetensors file, got {name!r}")
        tensors[role] = read_tensors(file, allow_pickle)
    ratio = reader.get("boundary_ratio", float, required=second)
    if ratio is not None and not second:
        reader.fail("boundary_ratio", "is where a denoiser_2 takes over; name one")
    tokenizer = reader.get("tokenizer", str, required=True)
    what = f"{path.name}'s diffusion model"
    network, vae, components, index, scheduler = family.from_components(
        path, tensors, tokenizer, what
    )
    named = reader.get("scheduler", str, required=scheduler is None)
    if named is not None:
        scheduler = read_json(path.parent / named, "scheduler config")
    for module in (network, vae, *components.values()):
        if isinstance(module, torch.nn.Module):
            module.eval()
    checked = check_scheduler_config(dict(scheduler), f"{path.name}'s scheduler")
    expert = assemble(str(path), family, index, components.get, network, vae, checked)
    if second:
        from .folder import pair_up

        index = {**index, "transformer_2": ["diffusers", "split"], "boundary_ratio": ratio}
        low = components["transformer_2"]
        pair_up(expert, path, index, components.get, low.eval(), checked)
    return expert


def _expert(path: Path, tensors: dict):
    from .folder import assemble
    from .schedulers import check_scheduler_config

    try:
        kind = family_of(tensors)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from exc
    unexpected = _unexpected(tensors, (UNET, VAE) + TOWERS[kind])
    if unexpected:
        shown = ", ".join(unexpected[:3]) + (
            f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""
        )
        raise UserError(f"{path}: tensors {LAYOUTS[kind]} does not have: {shown}")
    if not _has(tensors, VAE):
        raise UserError(f"{path} has no VAE (first_stage_model.*); {SPEC_HINT}")
    family = BY_NAME[FAMILY_OF_KIND[kind]]
    network_name = {"sd3": "MMDiT", "flux": "transformer"}.get(kind, "UNet")
    what = f"{path.name}'s {network_name}"
    network, vae, components, index, scheduler = family.from_original(path, tensors, what)
    for module in (network, vae, *components.values()):
        if isinstance(module, torch.nn.Module):
            module.eval()
    checked = check_scheduler_config(dict(scheduler), f"{path.name}'s family's scheduler")
    return assemble(str(path), family, index, components.get, network, vae, checked)
