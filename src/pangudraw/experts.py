"""Experts: a diffusers denoiser with its latent space, text encoder(s) and schedule.

Every expert exposes one sampler-facing call, ``denoise(x, sigma, cond) -> x0``, on the
shared noise axis of :mod:`pangudraw.noise`. An ``Expert`` holds only loaded models;
everything that belongs to one generation (prompt, guidance, window, weight) lives in
the caller's locals or in :class:`pangudraw.coop.Participant`, so one loaded expert can
serve concurrent requests.

Design: docs/design.md, section 2.
"""

from __future__ import annotations

import copy
import functools
import importlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, ControlNetModel

from .errors import UserError
from .files import read_json
from .latents import LatentSpace
from .limits import check_true_cfg
from .noise import (
    PREDICTION_TYPES,
    DiscreteVPSchedule,
    RectifiedFlowSchedule,
    Schedule,
    SigmaWindow,
    to_x0,
    unit,
)
from .options import HUB_PREFIX, ZOO_PREFIX
from .textenc import MINILM_REFERENCE, load_chinese_encoder, load_minilm


@dataclass
class Conditioning:
    """Encoded prompts for one expert, ready for its network.

    ``embeds`` is (2B, L, D) with the unconditional half first when ``guided``, else (B, L, D).
    ``added`` holds SDXL's ``text_embeds`` (pooled) and ``time_ids`` with the same batch layout.
    ``styles`` are the scales of extra guided branches (PanGu-Draw v3's style prompts),
    stacked after the conditional half: ``embeds`` is then ((2 + len(styles)) B, L, D).
    ``cfg_scale``: the classifier-free scale fixed at encoding, used instead of the
    expert's guidance value (Flux's true CFG, whose guidance value is the distilled one).
    """

    embeds: torch.Tensor
    guided: bool
    added: dict[str, torch.Tensor] | None = None
    styles: tuple[float, ...] = ()
    cfg_scale: float | None = None

    @property
    def copies(self) -> int:
        """How many times the latents are stacked for one network call."""
        return 2 + len(self.styles) if self.guided else 1


def _device(module: torch.nn.Module) -> torch.device:
    """Where a module computes. Tensors go there for the call and come back to the CPU, so
    the sampling loop (tiny tensors) stays on the CPU while networks sit on any device."""
    return next(module.parameters()).device


@dataclass
class SDText:
    """One tokenizer and text encoder whose last hidden state conditions the UNet (SD 1.x/2.x).

    ``chinese``: the bundled MiniLM's Chinese encoder (:func:`textenc.load_chinese_encoder`),
    which encodes the prompts that have a CJK character; the others keep ``encoder``.
    ``shared``: text stacks with the same non-None value encode alike (the bundled MiniLM,
    which every bundled model copies), so a generation encodes a prompt once for all of
    them; a LoRA on the encoder clears it.
    """

    tokenizer: object
    encoder: torch.nn.Module
    chinese: torch.nn.Module | None = None
    shared: str | None = None

    def _embed(self, prompts: list[str]) -> torch.Tensor:
        if self.chinese is None:
            return self._states(self.encoder, prompts)
        from .textenc import has_cjk

        routed = torch.tensor([has_cjk(p) for p in prompts])
        if not routed.any():
            return self._states(self.encoder, prompts)
        if routed.all():
            return self._states(self.chinese, prompts)
        plain = self._states(self.encoder, [p for p, r in zip(prompts, routed) if not r])
        chinese = self._states(self.chinese, [p for p, r in zip(prompts, routed) if r])
        out = plain.new_empty((len(prompts), *plain.shape[1:]))
        out[~routed], out[routed] = plain, chinese
        return out

    def _states(self, encoder: torch.nn.Module, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        mask = (
            tokens.attention_mask if getattr(encoder.config, "use_attention_mask", False) else None
        )
        device = _device(encoder)
        if mask is not None:
            mask = mask.to(device)
        return encoder(tokens.input_ids.to(device), attention_mask=mask)[0].cpu()

    @torch.no_grad()
    def encode(
        self, prompts: list[str], negatives: list[str] | None, guided: bool, size: tuple[int, int]
    ) -> Conditioning:
        embeds = self._embed(prompts)
        if guided:
            uncond = self._embed(negatives or [""] * len(prompts))
            embeds = torch.cat([uncond, embeds])
        return Conditioning(embeds, guided)


def _clip_states(tokenizer, encoder: torch.nn.Module, prompts: list[str]):
    """A CLIP text model's output with all hidden states, prompts padded to its length."""
    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return encoder(ids.to(_device(encoder)), output_hidden_states=True)


@dataclass
class SDXLText:
    """SDXL's two text encoders: penultimate hidden states concatenated, pooled output, time ids."""

    tokenizers: list
    encoders: list[torch.nn.Module]
    force_zeros_for_empty_prompt: bool = True
    aesthetic_score: float | None = None  # refiner-style time ids when set

    def _embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.encoders):
            out = _clip_states(tokenizer, encoder, prompts)
            if out[0].ndim == 2:  # the projection model's pooled output
                pooled = out[0].cpu()
            hidden.append(out.hidden_states[-2].cpu())
        return torch.cat(hidden, dim=-1), pooled

    def _time_ids(self, size: tuple[int, int], score: float) -> torch.Tensor:
        if self.aesthetic_score is None:
            return torch.tensor([list(size) + [0, 0] + list(size)], dtype=torch.float32)
        return torch.tensor([list(size) + [0, 0] + [score]], dtype=torch.float32)

    @torch.no_grad()
    def encode(
        self, prompts: list[str], negatives: list[str] | None, guided: bool, size: tuple[int, int]
    ) -> Conditioning:
        embeds, pooled = self._embed(prompts)
        time_ids = self._time_ids(size, self.aesthetic_score or 0.0).repeat(len(prompts), 1)
        if guided:
            if negatives is None and self.force_zeros_for_empty_prompt:
                uncond, uncond_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
            else:
                uncond, uncond_pooled = self._embed(negatives or [""] * len(prompts))
            negative_score = 2.5 if self.aesthetic_score is not None else 0.0
            uncond_ids = self._time_ids(size, negative_score).repeat(len(prompts), 1)
            embeds = torch.cat([uncond, embeds])
            pooled = torch.cat([uncond_pooled, pooled])
            time_ids = torch.cat([uncond_ids, time_ids])
        return Conditioning(embeds, guided, {"text_embeds": pooled, "time_ids": time_ids})


@dataclass
class FluxText:
    """Flux.1's text stack: CLIP's pooled output and T5's last hidden state (no mask).

    Flux is guidance-distilled: no unconditional branch unless ``guided`` asks for true
    classifier-free guidance (``FluxPipeline``'s ``true_cfg_scale``), which stacks the
    negative prompts' encodings first, as for the other families.
    """

    clip_tokenizer: object
    clip: torch.nn.Module
    t5_tokenizer: object
    t5: torch.nn.Module
    max_sequence_length: int = 512

    @torch.no_grad()
    def encode(
        self, prompts: list[str], negatives: list[str] | None, guided: bool, size: tuple[int, int]
    ) -> Conditioning:
        if guided:
            prompts = list(negatives or [""] * len(prompts)) + list(prompts)
        pooled = _clip_states(self.clip_tokenizer, self.clip, prompts).pooler_output
        embeds = _t5_states(self.t5_tokenizer, self.t5, prompts, self.max_sequence_length)
        return Conditioning(embeds, guided, {"pooled": pooled.cpu()})


def _t5_states(tokenizer, encoder: torch.nn.Module, prompts: list[str], limit: int):
    """T5's last hidden state for prompts padded to ``limit`` tokens; a longer prompt is
    refused (the pipelines would cut it silently)."""
    ids = tokenizer(prompts, padding="max_length", max_length=limit).input_ids
    for prompt, row in zip(prompts, ids):
        if len(row) > limit:
            raise UserError(
                f"prompt {prompt[:40]!r}... is {len(row)} tokens; this model takes at most "
                f"{limit}: shorten it"
            )
    return encoder(torch.tensor(ids, device=_device(encoder)))[0].cpu()


@dataclass
class SD3Text:
    """SD3's text stack: two CLIPs (penultimate hidden states concatenated, zero-padded to
    T5's width, stacked before T5's tokens; projected pooled outputs concatenated) and T5
    (zeros of the transformer's width when the model ships without it). The negative
    prompt is encoded, the empty one too."""

    clip_tokenizers: list
    clips: list[torch.nn.Module]
    t5_tokenizer: object | None
    t5: torch.nn.Module | None
    joint_dim: int
    max_sequence_length: int = 256

    def _embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = [], []
        for tokenizer, encoder in zip(self.clip_tokenizers, self.clips):
            out = _clip_states(tokenizer, encoder, prompts)
            pooled.append(out[0].cpu())
            hidden.append(out.hidden_states[-2].cpu())
        if self.t5 is None:
            t5 = torch.zeros(len(prompts), self.max_sequence_length, self.joint_dim)
        else:
            t5 = _t5_states(self.t5_tokenizer, self.t5, prompts, self.max_sequence_length)
        clip = torch.cat(hidden, dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)

    @torch.no_grad()
    def encode(
        self, prompts: list[str], negatives: list[str] | None, guided: bool, size: tuple[int, int]
    ) -> Conditioning:
        embeds, pooled = self._embed(prompts)
        if guided:
            uncond, uncond_pooled = self._embed(negatives or [""] * len(prompts))
            embeds, pooled = torch.cat([uncond, embeds]), torch.cat([uncond_pooled, pooled])
        return Conditioning(embeds, guided, {"pooled": pooled})


TextStack = SDText | SDXLText | FluxText | SD3Text  # or pangu.PanGuText


@dataclass
class Control:
    """A ControlNet with its control image, for one expert in one generation.

    ``image`` is (1 or B, 3, H, W) in [0, 1] at the expert's working size in pixels.
    """

    model: ControlNetModel
    image: torch.Tensor
    scale: float = 1.0
    window: SigmaWindow = SigmaWindow()

    def __post_init__(self):
        self.window = SigmaWindow(*self.window)  # a plain (lo, hi) pair is accepted too

    def active(self, sigma: float) -> bool:
        return self.window.contains(sigma)


@dataclass
class Expert:
    """A loaded denoiser on the shared noise axis.

    Attributes:
        name: a label for messages and metadata (usually the model folder).
        network: the diffusers denoiser (a UNet, or Flux's transformer).
        space: its latent space.
        text: its tokenizer(s) and text encoder(s).
        schedule: the training noise schedule (maps sigma to the network's timestep).
        prediction_type: what the network outputs (epsilon, v_prediction, sample, flow).
        scheduler_config: the training scheduler config; samplers are built from it.
        sample_size: native resolution in pixels, (height, width).
        dtype: the network's parameter dtype (read once: diffusers' ``.dtype`` walks
            every parameter on each call).
        family: "unet" (SD 1.x/2.x, SDXL and the zoo), "sd3" (MMDiT) or "flux" (packed
            2x2 latents).
    """

    name: str
    network: torch.nn.Module
    space: LatentSpace
    text: TextStack
    schedule: Schedule
    prediction_type: str
    scheduler_config: dict = field(repr=False)
    sample_size: tuple[int, int] = (512, 512)
    dtype: torch.dtype = torch.float32
    family: str = "unet"

    def to(self, device: str | torch.device | None, dtype: torch.dtype | None = None) -> Expert:
        """Move the network, the text encoders and the VAE to ``device`` (in place), and
        cast the network and text encoders to ``dtype`` when given. The VAE stays float32
        (SDXL's overflows in float16; diffusers upcasts it to decode). The loop keeps its
        own tensors on the CPU in float32; each call moves and casts its inputs to the
        network's device and dtype and its output back."""
        self.network.to(device=device, dtype=dtype)
        for value in vars(self.text).values():
            for module in value if isinstance(value, list) else [value]:
                if isinstance(module, torch.nn.Module):
                    module.to(device=device, dtype=dtype)
        if self.space.vae is not None:
            self.space.vae.to(device=device)
        self.dtype = dtype or self.dtype
        return self

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: what the family's diffusers pipeline
        accepts. A UNet takes any latent size (diffusers forwards the upsampling sizes), so
        the VAE factor; a transformer cuts latents into patches (Flux 2x2, SD3 its
        ``patch_size``), so the VAE factor times the patch."""
        if self.family == "flux":
            return self.space.factor * 2
        if self.family == "sd3":
            return self.space.factor * self.network.config.patch_size
        return self.space.factor

    @property
    def width(self) -> int:
        """The network's first feature width (for memory estimates)."""
        config = self.network.config
        if self.family in ("flux", "sd3"):
            return config.num_attention_heads * config.attention_head_dim
        return config.block_out_channels[0]

    def encode_prompt(
        self,
        prompts: list[str],
        negatives: list[str] | None = None,
        guidance_scale: float = 1.0,
        size: tuple[int, int] | None = None,
        styles: tuple[tuple[str, float], ...] = (),
        true_cfg: float = 1.0,
    ) -> Conditioning:
        """Encode prompts (and negatives when guidance is on) for this expert.

        ``size`` is the (height, width) in pixels that SDXL's time ids announce.
        ``styles`` are (name, scale) branches, for PanGu-Draw v3 models only.
        ``true_cfg`` > 1: Flux's true classifier-free guidance at that scale, against the
        negative prompts (empty ones when none are given); Flux models only.
        """
        guided, size = guidance_scale > 1.0, size or self.sample_size
        if true_cfg != 1.0:
            if self.family != "flux":
                raise UserError(
                    f"true CFG is for Flux models; {self.name} has classifier-free guidance "
                    "at its guidance scale already"
                )
            check_true_cfg(true_cfg)
            cond = self.text.encode(prompts, negatives, True, size)
            return replace(cond, cfg_scale=true_cfg)
        if self.family == "flux":
            guided = False  # the guidance value goes to the distilled embedding
        if styles:
            from .pangu import PanGuText

            if not isinstance(self.text, PanGuText):
                raise UserError(f"styles are a PanGu-Draw v3 feature; {self.name} has none")
            return self.text.encode(prompts, negatives, guided, size, styles)
        return self.text.encode(prompts, negatives, guided, size)

    def denoise(
        self,
        x: torch.Tensor,
        sigma: float,
        cond: Conditioning,
        guidance_scale: float = 1.0,
        controls: list[Control] = (),
    ) -> torch.Tensor:
        """Denoised estimate for ``x = x0 + sigma * n`` (finite sigma); see :meth:`predict`."""
        return self.predict(unit(sigma) * x, sigma, cond, guidance_scale, controls)

    @torch.no_grad()
    def predict(
        self,
        y: torch.Tensor,
        sigma: float,
        cond: Conditioning,
        guidance_scale: float = 1.0,
        controls: list[Control] = (),
    ) -> torch.Tensor:
        """Denoised estimate from the unit view ``y = unit(sigma) x0 + spread(sigma) n``.

        Args:
            y: (B, C, h, w) noisy latents in this expert's space (:mod:`pangudraw.noise`).
            sigma: noise level on the shared axis, possibly infinite (a flow trajectory's
                start). Beyond a VP schedule's last level the network sees that level.
            cond: this expert's encoded prompts; guided ones get classifier-free guidance.
            guidance_scale: classifier-free guidance scale (Flux: the distilled guidance
                value its ``guidance_embeds`` take; ignored by Flux schnell).
            controls: ControlNets whose residuals are added (those active at ``sigma``).

        Returns:
            x0: (B, C, h, w), float32.
        """
        level = min(sigma, self.schedule.sigma_max)
        alpha, s = self.schedule.coefficients(level)
        z = self.schedule.input_scale(level) * y
        t = self.schedule.sigma_to_t(level)
        if self.family == "flux":
            out = self._flux(z, t, cond, guidance_scale)
        elif self.family == "sd3":
            out = self._sd3(z, t, cond, guidance_scale)
        else:
            out = self._unet(z, t, sigma, cond, guidance_scale, controls)
        return to_x0(out, z, alpha, s, self.prediction_type)

    def _unet(self, z, t, sigma, cond, guidance_scale, controls) -> torch.Tensor:
        device = _device(self.network)
        t = torch.tensor(t, dtype=torch.float32, device=device)
        z_in = torch.cat([z] * cond.copies).to(device, self.dtype)
        embeds = cond.embeds.to(device, self.dtype)
        added = {k: v.to(device) for k, v in cond.added.items()} if cond.added else cond.added
        down, mid = None, None
        for control in controls:
            if not control.active(sigma):
                continue
            image = control.image.to(device, self.dtype).expand(z.shape[0], -1, -1, -1)
            d, m = control.model(
                z_in,
                t,
                encoder_hidden_states=embeds,
                controlnet_cond=torch.cat([image] * cond.copies),
                conditioning_scale=control.scale,
                added_cond_kwargs=added,
                return_dict=False,
            )
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        out = (
            self.network(
                z_in,
                t,
                encoder_hidden_states=embeds,
                added_cond_kwargs=added,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
                return_dict=False,
            )[0]
            .float()
            .to(z.device)
        )
        return _guide(out, cond, guidance_scale)

    def _sd3(self, z, t, cond, guidance_scale) -> torch.Tensor:
        """SD3's MMDiT as ``StableDiffusion3Pipeline`` calls it (raw timestep in [0, 1000])."""
        device = _device(self.network)
        z_in = (torch.cat([z, z]) if cond.guided else z).to(device, self.dtype)
        out = self.network(
            hidden_states=z_in,
            timestep=torch.full([z_in.shape[0]], t, device=device),
            encoder_hidden_states=cond.embeds.to(device, self.dtype),
            pooled_projections=cond.added["pooled"].to(device, self.dtype),
            return_dict=False,
        )[0]
        return _guide(out.float().to(z.device), cond, guidance_scale)

    def _flux(self, z, t, cond, guidance_scale) -> torch.Tensor:
        """Flux's transformer on 2x2 patches of ``z``, as ``FluxPipeline`` calls it."""
        from diffusers import FluxPipeline

        device = _device(self.network)
        batch, channels, h, w = z.shape
        packed = FluxPipeline._pack_latents(z, batch, channels, h, w).to(device, self.dtype)
        image_ids = _flux_image_ids(h // 2, w // 2, device, self.dtype)
        embeds = cond.embeds.to(device, self.dtype)
        text_ids = _flux_text_ids(embeds.shape[1], device, self.dtype)
        guidance = None
        if self.network.config.guidance_embeds:
            guidance = torch.full([batch], guidance_scale, device=device, dtype=torch.float32)
        timestep = torch.full([batch], t / self.schedule.num_train_timesteps, device=device)
        if cond.guided:  # true CFG: the negative and positive halves in one batch
            packed = torch.cat([packed, packed])
            guidance = None if guidance is None else torch.cat([guidance, guidance])
            timestep = torch.cat([timestep, timestep])
        out = self.network(
            hidden_states=packed,
            timestep=timestep.to(self.dtype),
            guidance=guidance,
            pooled_projections=cond.added["pooled"].to(device, self.dtype),
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        out = FluxPipeline._unpack_latents(out, h, w, 1).float().to(z.device)
        return _guide(out, cond, cond.cfg_scale) if cond.guided else out


def _guide(out: torch.Tensor, cond: Conditioning, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance on the raw output of a doubled batch (unconditional first).

    Guidance on the raw output equals guidance on x0 (the conversion is affine in the output
    with coefficients shared by both halves) and rounds like diffusers does. Style branches
    x_i add ``s_i (x_i - cond)`` (PanGu-Draw v3's guider).
    """
    if not cond.guided:
        return out
    out_uncond, out_cond, *extra = out.chunk(cond.copies)
    guided = out_uncond + guidance_scale * (out_cond - out_uncond)
    for scale, branch in zip(cond.styles, extra):
        guided = guided + scale * (branch - out_cond)
    return guided


@functools.lru_cache(maxsize=16)
def _flux_image_ids(rows: int, cols: int, device, dtype) -> torch.Tensor:
    """Flux's (0, row, col) position ids of the packed latent grid (read-only, shared)."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(1, rows, cols, device, dtype)


@functools.lru_cache(maxsize=16)
def _flux_text_ids(length: int, device, dtype) -> torch.Tensor:
    return torch.zeros(length, 3, device=device, dtype=dtype)


SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
"""A model path with one of these suffixes is an original-layout single file
(:mod:`pangudraw.convert.single`)."""
MODEL_SPEC_SUFFIX = ".toml"
"""A model path with this suffix is a model spec naming component files
(:mod:`pangudraw.convert.single`)."""


def resolve_model(path: str | Path) -> Path:
    """``zoo:NAME`` as the bundled model's folder; anything else as a path."""
    if str(path).startswith(ZOO_PREFIX):
        from . import zoo

        return zoo.folder(str(path).removeprefix(ZOO_PREFIX))
    return Path(path)


def download(repo_id: str, allow_pickle: bool = False) -> Path:
    """Fetch a diffusers model from the Hugging Face hub (only when the user names one)."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.model", "*.safetensors"]
    patterns += ["*.bin"] if allow_pickle else []
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repository, gated model, ...
        raise UserError(
            f"cannot download {repo_id} from the hub: {str(exc).splitlines()[0]}"
        ) from exc


_TEXT_ENCODERS = {
    ("transformers", "CLIPTextModel"),
    ("transformers", "CLIPTextModelWithProjection"),
}
_TOKENIZERS = {("transformers", "CLIPTokenizer"), ("transformers", "CLIPTokenizerFast")}
_BERT_TOKENIZERS = {("transformers", "BertTokenizer"), ("transformers", "BertTokenizerFast")}
_T5 = {("transformers", "T5EncoderModel")}
_T5_TOKENIZERS = {("transformers", "T5TokenizerFast"), ("transformers", "T5Tokenizer")}
COMPONENTS: dict[str, set[tuple[str, str]]] = {
    "unet": {("diffusers", "UNet2DConditionModel")},
    "transformer": {
        ("diffusers", "FluxTransformer2DModel"),
        ("diffusers", "SD3Transformer2DModel"),
    },
    "vae": {("diffusers", "AutoencoderKL")},
    "text_encoder": _TEXT_ENCODERS,
    "text_encoder_2": _TEXT_ENCODERS | _T5,
    "tokenizer": _TOKENIZERS | _BERT_TOKENIZERS,  # BERT: PanGu-Draw v3's Chinese CLIP
    "tokenizer_2": _TOKENIZERS | _T5_TOKENIZERS,
    "text_encoder_3": _T5,
    "tokenizer_3": _T5_TOKENIZERS,
}
"""The classes a model folder's ``model_index.json`` may name for the components we load.

A model folder is untrusted input: its index is checked against this list before anything
is imported, so it can neither import an arbitrary module nor pick a loader that ignores
the safetensors-only rule.
"""


def component_class(index_file: Path, name: str, spec) -> type:
    """The allow-listed class that ``model_index.json`` names for component ``name``."""
    allowed = COMPONENTS.get(name, set())
    entry = tuple(spec) if isinstance(spec, list) else None
    if entry not in allowed:
        shown = ".".join(map(str, spec)) if isinstance(spec, list) else repr(spec)
        known = ", ".join(sorted(".".join(a) for a in allowed)) or "nothing"
        raise UserError(f"{index_file}: {name} is {shown}; pangu-draw loads only {known} there")
    library, class_name = entry
    return getattr(importlib.import_module(library), class_name)


def bundled_vae(name: str) -> AutoencoderKL:
    """The bundled VAE ``name`` (the zoo's generators share their space's VAE instead of
    each carrying a copy)."""
    from . import zoo

    folder = zoo.folder(name)
    if not (folder / "config.json").is_file():
        raise UserError(f"bundled model {name} is not a VAE")
    return AutoencoderKL.from_pretrained(folder, use_safetensors=True, torch_dtype=torch.float32)


def read_scheduler_config(path: Path) -> tuple[dict, Schedule]:
    """A diffusers scheduler config file, checked (:func:`check_scheduler_config`)."""
    return check_scheduler_config(read_json(path, "scheduler config"), path)


def check_scheduler_config(config: dict, path: Path | str) -> tuple[dict, Schedule]:
    """A diffusers scheduler config, checked, and the training schedule it describes.

    ``_class_name`` must name a diffusers scheduler: nothing else is imported. Keys the
    class does not take are ignored, as diffusers' ``from_config`` ignores them (published
    configs carry leftovers of the scheduler they were made from: SD 1.5's ``clip_sample``,
    SDXL's ``skip_prk_steps``). What the sampling loop relies on is checked: the number of
    training steps, the prediction type, betas that give increasing finite noise levels,
    the timestep spacing and offset, and a flow model's shift settings.
    """
    import inspect

    import diffusers

    name = config.get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None or not inspect.isclass(cls) or not name.endswith("Scheduler"):
        raise UserError(f"{path}: _class_name {name!r} is not a diffusers scheduler")
    ignored = sorted(k for k in config if not k.startswith("_") and k not in _arguments(cls))
    if ignored:
        _log.debug("%s: %s ignored (not arguments of %s)", path, ", ".join(ignored), name)
    steps = config.get("num_train_timesteps", 1000)
    if not _is_int(steps) or not 2 <= steps <= 100_000:
        raise UserError(f"{path}: num_train_timesteps must be an integer in [2, 100000]")
    if name == "FlowMatchEulerDiscreteScheduler":
        _check_flow_shift(config, path)
        return config, RectifiedFlowSchedule(steps)
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise UserError(
            f"{path}: prediction_type {prediction_type!r} is not one of "
            f"{', '.join(PREDICTION_TYPES)}"
        )
    spacing = config.get("timestep_spacing", "leading")
    if spacing not in TIMESTEP_SPACINGS:
        raise UserError(
            f"{path}: timestep_spacing {spacing!r} is not one of {', '.join(TIMESTEP_SPACINGS)}"
        )
    offset = config.get("steps_offset", 0)
    if not _is_int(offset) or not 0 <= offset < steps:
        raise UserError(f"{path}: steps_offset must be an integer in [0, {steps})")
    try:
        schedule = DiscreteVPSchedule.from_config(config)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise UserError(f"{path}: {str(exc).splitlines()[0]}") from exc
    sigmas = schedule.log_sigmas
    if not bool(torch.isfinite(sigmas).all()) or not bool((sigmas[1:] >= sigmas[:-1]).all()):
        raise UserError(f"{path}: the betas do not give increasing, finite noise levels")
    return config, schedule


TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
_log = logging.getLogger(__name__)


def _arguments(cls: type) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_flow_shift(config: dict, path: Path | str) -> None:
    """A flow scheduler's shift settings: finite positive numbers, a boolean switch."""
    for key in ("shift", "base_shift", "max_shift"):
        value = config.get(key, 1.0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{path}: {key} must be a number, got {value!r}")
        if not math.isfinite(value) or (key == "shift" and value <= 0):
            raise UserError(
                f"{path}: {key} must be a finite{' positive' * (key == 'shift')} number"
            )
    for key in ("base_image_seq_len", "max_image_seq_len"):
        value = config.get(key, 256)
        if not _is_int(value) or value < 1:
            raise UserError(f"{path}: {key} must be a positive integer, got {value!r}")
    if not isinstance(config.get("use_dynamic_shifting", False), bool):
        raise UserError(f"{path}: use_dynamic_shifting must be true or false")


def _files_key(folder: Path, cls: type) -> tuple | None:
    """What identifies a component's files on disk: the same files (hard links included,
    as a converted PanGu-Draw v3 pair has) give the same key."""
    try:
        stats = [(f.name, f.stat()) for f in sorted(folder.iterdir()) if f.is_file()]
    except OSError:
        return None
    return (cls.__name__,) + tuple(
        (name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) for name, st in stats
    )


def load_expert(path: str | Path, allow_pickle: bool = False, cache: dict | None = None) -> Expert:
    """Load an expert from a local diffusers pipeline folder (SD 1.x/2.x, SDXL, SD3, Flux.1),
    an SD 1.x, SDXL, SD3 or Flux.1 single file in the original layout (``.safetensors``;
    ``.ckpt`` with ``allow_pickle``), a model spec naming component files (``.toml``), from
    the hub when ``path`` is ``hf:owner/name``, or a bundled model
    (``zoo:NAME``).

    Weights load from safetensors only unless ``allow_pickle`` is set. ``cache`` (a dict
    the caller keeps) lets experts whose components are the same files on disk share one
    loaded module: a PanGu-Draw v3 pair's VAE and text encoders load once. Only for experts
    nothing modifies in place (no LoRA).
    Raises :class:`UserError` with a one-line message for anything a user can fix.
    """
    if str(path).startswith(HUB_PREFIX):
        path = download(str(path)[len(HUB_PREFIX) :], allow_pickle)
    folder = resolve_model(path)
    if folder.suffix.lower() in SINGLE_FILE_SUFFIXES and not folder.is_dir():
        from .convert.single import load_single_file

        return load_single_file(folder, allow_pickle)
    if folder.suffix.lower() == MODEL_SPEC_SUFFIX and not folder.is_dir():
        from .convert.single import load_model_spec

        return load_model_spec(folder, allow_pickle)
    if not folder.exists():
        raise UserError(
            f"model folder {folder} does not exist (a Hugging Face hub model is named "
            f"{HUB_PREFIX}owner/name)"
        )
    index_file = folder / "model_index.json"
    if not folder.is_dir() or not index_file.is_file():
        raise UserError(
            f"{folder} is not a diffusers model folder (no model_index.json); "
            "save one with pipeline.save_pretrained()"
        )
    index = read_json(index_file, "model index")

    def component(name: str):
        spec = index.get(name)
        if not spec or spec[0] is None:
            return None
        cls = component_class(index_file, name, spec)
        key = None if cache is None else _files_key(folder / name, cls)
        build = lambda _: _from_pretrained(cls, folder / name, allow_pickle)  # noqa: E731
        return _shared(None if key is None else cache, key, build)

    denoiser = "transformer" if "transformer" in index else "unet"
    for required in (denoiser, "scheduler", "tokenizer" if "tokenizer" in index else "tokenizer_2"):
        if required not in index:
            raise UserError(
                f"{folder} has no {required}; only text-to-image UNet, SD3 and Flux models load"
            )
    network = component(denoiser)
    from . import zoo

    try:
        shared = zoo.referenced(index.get("vae"))
    except UserError as exc:
        raise UserError(f"{index_file}: vae {exc}") from exc
    vae = component("vae") if shared is None else _shared(cache, shared, bundled_vae)
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    if not scheduler_file.is_file():
        raise UserError(f"{folder} has no scheduler/scheduler_config.json")
    scheduler = read_scheduler_config(scheduler_file)
    return assemble(str(folder), index, component, network, vae, scheduler, index_file, cache)


def _from_pretrained(cls: type, folder: Path, allow_pickle: bool):
    """A diffusers or transformers component saved in ``folder``."""
    # None: safetensors when present, pickle allowed as a fallback. Weights stored in
    # float16 (the zoo's) are computed in float32 here.
    kwargs = {}
    if "Tokenizer" not in cls.__name__:
        kwargs = {"use_safetensors": None if allow_pickle else True, "torch_dtype": torch.float32}
        # Checked first: diffusers logs its own error line before raising.
        if not allow_pickle and not any(folder.glob("*.safetensors")):
            raise UserError(
                f"{folder} has no safetensors weights; pickle checkpoints are refused "
                "unless you pass --allow-pickle"
            )
    try:
        return cls.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load {folder}: {str(exc).splitlines()[0]}") from exc


def _shared(cache: dict | None, key, build: Callable):
    """``build(key)``, once per ``cache`` (every time without one)."""
    if cache is None:
        return build(key)
    if key not in cache:
        cache[key] = build(key)
    return cache[key]


def assemble(
    name: str,
    index: dict,
    component: Callable[[str], Any],
    network: torch.nn.Module,
    vae: AutoencoderKL | None,
    scheduler: tuple[dict, Schedule],
    index_file: Path | str,
    cache: dict | None = None,
) -> Expert:
    """An expert from its loaded denoiser, VAE and scheduler; ``component(name)`` gives the
    other components ``index`` (a ``model_index.json`` or its equivalent) lists; ``cache``
    as :func:`load_expert`'s (the bundled MiniLM loads once per cache)."""
    family = {"FluxTransformer2DModel": "flux", "SD3Transformer2DModel": "sd3"}.get(
        type(network).__name__, "unet"
    )
    scheduler_config, schedule = scheduler
    prediction_type = (
        "flow" if schedule.kind == "flow" else scheduler_config.get("prediction_type", "epsilon")
    )

    if family == "flux":
        text: TextStack = FluxText(
            component("tokenizer"),
            component("text_encoder"),
            component("tokenizer_2"),
            component("text_encoder_2"),
        )
    elif family == "sd3":
        text = SD3Text(
            [component("tokenizer"), component("tokenizer_2")],
            [component("text_encoder"), component("text_encoder_2")],
            component("tokenizer_3"),
            component("text_encoder_3"),
            network.config.joint_attention_dim,
        )
    elif "pangu_draw_v3" in index:
        from .pangu import PanGuText, check_buckets

        entry = index["pangu_draw_v3"]
        buckets = check_buckets(
            entry.get("size_buckets") if isinstance(entry, dict) else None, str(index_file)
        )
        text = PanGuText(
            [component("tokenizer"), component("tokenizer_2")],
            [component("text_encoder"), component("text_encoder_2")],
            buckets,
        )
    elif "text_encoder_2" in index or network.config.addition_embed_type == "text_time":
        pairs = [(component(f"tokenizer{k}"), component(f"text_encoder{k}")) for k in ("", "_2")]
        pairs = [(tok, enc) for tok, enc in pairs if enc is not None]
        text = SDXLText(
            [tok for tok, _ in pairs],
            [enc for _, enc in pairs],
            force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True),
            aesthetic_score=6.0 if index.get("requires_aesthetics_score") else None,
        )
    elif index.get("text_encoder") == MINILM_REFERENCE:
        # copies per cache: Expert.to moves and casts them in place
        key = "bundled MiniLM"
        tokenizer, encoder = _shared(cache, key, lambda _: load_minilm())
        chinese = _shared(
            cache, key + " (Chinese)", lambda _: copy.deepcopy(load_chinese_encoder())
        )
        text = SDText(tokenizer, encoder, chinese, shared=key)
    else:
        text = SDText(component("tokenizer"), component("text_encoder"))

    # No VAE: a pixel space, optionally folding patches into channels.
    space = (
        LatentSpace(vae) if vae is not None else LatentSpace(None, index.get("pixel_unshuffle", 1))
    )
    # A denoiser takes the latents and nothing else: an inpainting or instruct model's extra
    # input channels (mask, source image) have nothing to come from here.
    takes = network.config.in_channels // (4 if family == "flux" else 1)  # Flux: 2x2 packed
    if takes != space.channels:
        raise UserError(
            f"{name}: the {type(network).__name__} takes {takes} latent channels where its "
            f"latent space has {space.channels} (an inpainting or instruct model?); "
            "pangu-draw generates from text with text-to-image models"
        )
    # Convolutions in channels-last layout: a third faster for one image on the CPU, the
    # same in batches (BENCHMARKS.md, "Equal quality in fewer steps"); values agree with
    # the default layout to ~1e-6.
    if family == "unet":
        network.to(memory_format=torch.channels_last)
    if vae is not None:
        vae.to(memory_format=torch.channels_last)
    # Flux's pipeline draws 128 latent cells a side by default (1024 px with its VAE).
    size = 128 if family == "flux" else network.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    return Expert(
        name=name,
        network=network.eval(),
        space=space,
        text=text,
        schedule=schedule,
        prediction_type=prediction_type,
        scheduler_config=scheduler_config,
        sample_size=(height * space.factor, width * space.factor),
        dtype=next(network.parameters()).dtype,
        family=family,
    )


def load_controlnet(path: str, expert: Expert, allow_pickle: bool = False):
    """A diffusers ControlNetModel, refused when it was not built for ``expert``'s UNet."""
    if expert.family != "unet":
        raise UserError(
            f"{expert.name} is a {expert.family} model; ControlNets load for UNet models only "
            "(give the control to an SD or SDXL expert in the same recipe)"
        )
    path = str(resolve_model(path))
    if not (Path(path) / "config.json").is_file():
        raise UserError(f"{path} is not a diffusers ControlNet folder (no config.json)")
    try:
        model = ControlNetModel.from_pretrained(
            path, use_safetensors=None if allow_pickle else True
        )
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load ControlNet {path}: {str(exc).splitlines()[0]}") from exc
    model.to(memory_format=torch.channels_last)  # as the UNet it steers
    check_controlnet(model, path, expert)
    return model.eval()


def check_controlnet(model: ControlNetModel, path: str, expert: Expert) -> None:
    """Refuse a ControlNet built for another UNet than ``expert``'s."""
    if expert.family != "unet":
        raise UserError(
            f"{expert.name} is a {expert.family} model; ControlNets load for UNet models only "
            "(give the control to an SD or SDXL expert in the same recipe)"
        )
    keys = ("in_channels", "block_out_channels", "cross_attention_dim", "addition_embed_type")
    theirs, ours = model.config, expert.network.config
    mismatched = [k for k in keys if list(_listify(theirs.get(k))) != list(_listify(ours.get(k)))]
    if mismatched:
        raise UserError(
            f"ControlNet {path} was built for another base than {expert.name} "
            f"(differs in {', '.join(mismatched)}); use a ControlNet trained for that model"
        )


def _listify(value) -> list:
    return value if isinstance(value, list | tuple) else [value]
