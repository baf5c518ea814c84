"""Single-file checkpoints (SD 1.x, SDXL, SD3 and Flux.1 in their own key layouts) and
model specs (a model's component files named in a TOML file) as experts.

A file like ``v1-5-pruned-emaonly.safetensors`` or ``sd_xl_base_1.0.safetensors`` holds the
UNet or MMDiT (``model.diffusion_model.*``), the VAE (``first_stage_model.*``) and the text
towers (``cond_stage_model.transformer.*`` in SD 1.x, ``conditioner.embedders.N.*`` in SDXL,
``text_encoders.clip_l/clip_g/t5xxl.transformer.*`` in SD3, and in Flux.1 as ComfyUI saves
a whole checkpoint, whose transformer keeps Black Forest Labs' names). It
loads offline: the architecture is read from the tensor shapes (:mod:`.sgm`), the keys are
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
loads as one single file would.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from . import sgm
from .sgm import UNET, VAE

# Buffers a training run saves beside the weights (the DDPM schedule, derived from the
# betas; the EMA copy of the UNet, which single files prune or carry under ``model_ema.``),
# and buffers derived from the architecture: read and dropped.
SCHEDULE_BUFFERS = {
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
}
# ... and the VAE's training loss (LPIPS and a discriminator), which some SD 1.x training
# checkpoints still carry.
IGNORED_PREFIXES = ("model_ema.", "denoiser.", "first_stage_model.loss.")
IGNORED_TAILS = ("position_ids", "logit_scale", "attn_mask")

SD3_CLIP_L = "text_encoders.clip_l.transformer."
SD3_CLIP_G = "text_encoders.clip_g.transformer."
SD3_T5 = "text_encoders.t5xxl.transformer."
SD1_CLIP = "cond_stage_model.transformer."
SD2_CLIP = "cond_stage_model.model."
XL_CLIP = "conditioner.embedders.0.transformer."
XL_BIGG = "conditioner.embedders.1.model."
REFINER_BIGG = "conditioner.embedders.0.model."

PUBLISHED = Path(__file__).resolve().parents[1] / "published"
"""Configs of published model folders (``published/README.md``)."""


def published_scheduler(model: str) -> dict:
    """The scheduler config ``model`` (a folder of :data:`PUBLISHED`) was published with:
    a single file carries none, so its family's is used, as diffusers' ``from_single_file``
    does with the family's published folder."""
    from ..files import read_json

    return read_json(PUBLISHED / model / "scheduler" / "scheduler_config.json", "scheduler config")


CLIP_WHAT = "the CLIP text model"
SD1 = "an SD 1.x checkpoint"
SDXL = "an SDXL checkpoint"
SD3 = "an SD3 checkpoint"
FLUX = "a Flux.1 checkpoint"
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
        return {k: _float32(v) for k, v in loaded.items()}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "pt") as handle:
            return {k: _float32(handle.get_tensor(k)) for k in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc


def _has(tensors: dict, *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in tensors)


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


def _part(tensors: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {
        k: v
        for k, v in tensors.items()
        if k.startswith(prefix)
        and not k.startswith(IGNORED_PREFIXES)
        and k.rsplit(".", 1)[-1] not in IGNORED_TAILS
    }


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
    reader = TableReader(str(path), table["model"], "model", set(ROLES))
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


def _expert(path: Path, tensors: dict):
    from ..experts import assemble, check_scheduler_config

    try:
        family = family_of(tensors)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from exc
    layout = {"sd1": SD1, "sd3": SD3, "flux": FLUX}.get(family, SDXL)  # for the messages
    towers = {
        "sd1": (SD1_CLIP,),
        "sdxl": (XL_CLIP, XL_BIGG),
        "sdxl-refiner": (REFINER_BIGG,),
        "sd3": (SD3_CLIP_L, SD3_CLIP_G, SD3_T5),
        "flux": (SD3_CLIP_L, SD3_T5),
    }
    known = (UNET, VAE) + towers[family]
    unexpected = _unexpected(tensors, known)
    if unexpected:
        shown = ", ".join(unexpected[:3]) + (
            f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""
        )
        raise UserError(f"{path}: tensors {layout} does not have: {shown}")
    if not _has(tensors, VAE):
        raise UserError(f"{path} has no VAE (first_stage_model.*); {SPEC_HINT}")
    network_name = {"sd3": "MMDiT", "flux": "transformer"}.get(family, "UNet")
    what = f"{path.name}'s {network_name}"
    build = {"sd3": _sd3, "flux": _flux}.get(family, _unet_family)
    network, vae, components, index, scheduler = build(path, tensors, family, what)
    for module in (network, vae, *components.values()):
        if isinstance(module, torch.nn.Module):
            module.eval()
    return assemble(
        str(path),
        index,
        components.get,
        network,
        vae,
        check_scheduler_config(dict(scheduler), f"{path.name}'s family's scheduler"),
        str(path),
    )


def _unet_family(path: Path, tensors: dict, family: str, what: str):
    """SD 1.x (CLIP-L, last hidden state) or SDXL (CLIP-L and bigG, or bigG alone in the
    refiner; pooled text and size numbers in the vector condition)."""
    layout = SD1 if family == "sd1" else SDXL
    if family == "sd1":
        unet = sgm.convert_unet(_part(tensors, UNET), what, layout, None, 64)
        vae = sgm.convert_vae(_part(tensors, VAE), 0.18215, layout)
        encoder = sgm.convert_clip(_part(tensors, SD1_CLIP), SD1_CLIP, CLIP_WHAT, layout)
        components = {"text_encoder": encoder, "tokenizer": sgm.clip_tokenizer("<|endoftext|>")}
        index = {"text_encoder": ["transformers", "CLIPTextModel"]}
        context, scheduler = encoder.config.hidden_size, published_scheduler("sd15")
    else:
        unet = sgm.convert_unet(_part(tensors, UNET), what, layout, 64, 128)
        vae = sgm.convert_vae(_part(tensors, VAE), 0.13025, layout)
        bigg_prefix = XL_BIGG if family == "sdxl" else REFINER_BIGG
        bigg = sgm.convert_openclip(
            _part(tensors, bigg_prefix), bigg_prefix, "the OpenCLIP text model", layout
        )
        components = {"text_encoder_2": bigg, "tokenizer_2": sgm.clip_tokenizer("!")}
        context = bigg.config.hidden_size
        if family == "sdxl":
            clip = sgm.convert_clip(_part(tensors, XL_CLIP), XL_CLIP, CLIP_WHAT, layout)
            components |= {"text_encoder": clip, "tokenizer": sgm.clip_tokenizer("<|endoftext|>")}
            context += clip.config.hidden_size
        # size numbers: base 6 (original size, crop, target size), refiner 5 (original
        # size, crop, aesthetic score)
        model = "an SDXL base model" if family == "sdxl" else "an SDXL refiner"
        numbers = 6 if family == "sdxl" else 5
        sgm.check_vector_condition(unet, bigg.config.projection_dim, numbers, what, model)
        index = {
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "force_zeros_for_empty_prompt": family == "sdxl",
            "requires_aesthetics_score": family == "sdxl-refiner",
        }
        scheduler = published_scheduler("sdxl-base")
    if unet.config.cross_attention_dim != context:
        raise UserError(
            f"{what} attends to {unet.config.cross_attention_dim}-wide text, not the "
            f"{context} its text encoders give"
        )
    return unet, vae, components, index, scheduler


def _sd3(path: Path, tensors: dict, family: str, what: str):
    """SD3 / SD3.5 with its two CLIPs (penultimate states, projected pooled outputs) and
    T5-XXL when the file holds it; without T5 the MMDiT gets zeros in T5's place, as
    ``StableDiffusion3Pipeline`` without it."""
    network = sgm.convert_sd3_transformer(_part(tensors, UNET), what, SD3)
    vae = sgm.convert_vae(_part(tensors, VAE), 1.5305, SD3, shift_factor=0.0609)
    clip_l = sgm.convert_clip(_part(tensors, SD3_CLIP_L), SD3_CLIP_L, "CLIP-L", SD3)
    clip_g = sgm.convert_clip(
        _part(tensors, SD3_CLIP_G), SD3_CLIP_G, "CLIP-G", SD3, {"hidden_act": "gelu"}
    )
    for encoder, name in ((clip_l, "CLIP-L"), (clip_g, "CLIP-G")):
        if not hasattr(encoder, "text_projection"):
            raise UserError(f"{path}: {name} has no text projection (SD3's pooled text needs it)")
    pooled = clip_l.config.projection_dim + clip_g.config.projection_dim
    if network.config.pooled_projection_dim != pooled:
        raise UserError(
            f"{what} takes {network.config.pooled_projection_dim}-wide pooled text, not the "
            f"{pooled} its CLIPs give"
        )
    components = {
        "text_encoder": clip_l,
        "tokenizer": sgm.clip_tokenizer("<|endoftext|>"),
        "text_encoder_2": clip_g,
        "tokenizer_2": sgm.clip_tokenizer("!"),
    }
    if _has(tensors, SD3_T5):
        t5 = sgm.convert_t5(_part(tensors, SD3_T5), SD3_T5, "T5", SD3)
        if t5.config.d_model != network.config.joint_attention_dim:
            raise UserError(
                f"{what} attends to {network.config.joint_attention_dim}-wide text, not "
                f"the {t5.config.d_model} its T5 gives"
            )
        components |= {"text_encoder_3": t5, "tokenizer_3": sgm.t5_tokenizer()}
    return network, vae, components, {}, published_scheduler("sd3-medium")


def _flux(path: Path, tensors: dict, family: str, what: str):
    """Flux.1 dev or schnell: CLIP-L's pooled output (unprojected, so a projection the
    file may carry is not used) and T5-XXL's last hidden state; the 16-channel VAE."""
    network = sgm.convert_flux_transformer(_part(tensors, UNET), what, FLUX)
    vae = sgm.convert_vae(_part(tensors, VAE), 0.3611, FLUX, shift_factor=0.1159)
    projection = SD3_CLIP_L + "text_projection."
    clip_part = {
        k: v for k, v in _part(tensors, SD3_CLIP_L).items() if not k.startswith(projection)
    }
    clip = sgm.convert_clip(clip_part, SD3_CLIP_L, "CLIP-L", FLUX)
    t5 = sgm.convert_t5(_part(tensors, SD3_T5), SD3_T5, "T5", FLUX)
    for wanted, given, name in (
        (network.config.pooled_projection_dim, clip.config.hidden_size, "pooled text, CLIP-L"),
        (network.config.joint_attention_dim, t5.config.d_model, "text, T5"),
    ):
        if wanted != given:
            raise UserError(f"{what} takes {wanted}-wide {name} gives {given}")
    components = {
        "tokenizer": sgm.clip_tokenizer("<|endoftext|>"),
        "text_encoder": clip,
        "tokenizer_2": sgm.t5_tokenizer(),
        "text_encoder_2": t5,
    }
    dev = network.config.guidance_embeds
    scheduler = published_scheduler("flux1-dev" if dev else "flux1-schnell")
    return network, vae, components, {}, scheduler
