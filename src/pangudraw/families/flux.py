"""FLUX.1 dev and schnell: a transformer on 2x2-packed latents of a 16-channel VAE,
rectified flow on its own shifted sigmas, CLIP-L's pooled output and T5-XXL's last hidden
state (padded to 512 tokens, no mask).

Guidance-distilled: ``-g`` is the value dev's guidance embedding takes (schnell has none
and ignores it); true classifier-free guidance against a negative prompt is
``FluxPipeline``'s ``true_cfg_scale``. Folders: a ``transformer`` of class
``FluxTransformer2DModel`` (dev when its config has ``guidance_embeds``). Single files:
``double_blocks`` (Black Forest Labs' names) under ``model.diffusion_model.``; dev when
the transformer has ``guidance_in``. FLUX.1 Fill (``FluxFillPipeline``) is its inpainting
model: the masked picture and the mask go in beside the latents.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .. import layouts
from ..layouts import FLUX_BLOCKS, has
from .base import Conditioning, TransformerFamily, clip_states, device_of, guide, t5_states

# FluxPipeline's defaults: 28 steps, distilled guidance 3.5 (schnell ignores the value
# and is distilled to about 4 steps).
DEFAULTS = {
    "dev": {"steps": 28, "guidance_scale": 3.5},
    "schnell": {"steps": 4, "guidance_scale": 3.5},
    "fill": {"steps": 50, "guidance_scale": 30.0},  # FluxFillPipeline's
}
LATENT_CELLS = 128  # FluxPipeline draws 128 latent cells a side by default (1024 px)


@dataclass
class FluxText:
    """Flux.1's text stack. No unconditional branch unless ``guided`` asks for true
    classifier-free guidance, which stacks the negative prompts' encodings first."""

    clip_tokenizer: object
    clip: object
    t5_tokenizer: object
    t5: object
    max_sequence_length: int = 512

    def encode(
        self, prompts: list[str], negatives: list[str] | None, guided: bool, size: tuple[int, int]
    ) -> Conditioning:
        import torch

        if guided:
            prompts = list(negatives or [""] * len(prompts)) + list(prompts)
        with torch.no_grad():
            pooled = clip_states(self.clip_tokenizer, self.clip, prompts).pooler_output
            embeds = t5_states(self.t5_tokenizer, self.t5, prompts, self.max_sequence_length)
        return Conditioning(embeds, guided, {"pooled": pooled.cpu()})


class Flux(TransformerFamily):
    name = "flux"
    label = "FLUX.1"
    lora_pipeline = "FluxPipeline"
    true_cfg = True
    distilled_guidance = True
    own_sigmas = True

    def recognise(self, index, config) -> bool:
        spec = index.get("transformer")
        return isinstance(spec, list) and spec[-1:] == ["FluxTransformer2DModel"]

    def recognise_file(self, keys) -> bool:
        return has(keys, FLUX_BLOCKS)

    def defaults(self, index, config) -> dict:
        if index.get("_class_name") == "FluxFillPipeline":
            return DEFAULTS["fill"]
        return DEFAULTS["dev" if config("transformer").get("guidance_embeds") else "schnell"]

    def text_stack(self, index, component, network, cache):
        return FluxText(
            component("tokenizer"),
            component("text_encoder"),
            component("tokenizer_2"),
            component("text_encoder_2"),
        )

    def native_size(self, network, factor: int) -> tuple[int, int]:
        return LATENT_CELLS * factor, LATENT_CELLS * factor

    def size_multiple(self, network, factor: int) -> int:
        return factor * 2  # 2x2 patches

    def latent_channels(self, network) -> int:
        return network.config.in_channels // 4  # 2x2 packed

    encodes_picture_at_full_strength = True  # FluxFillPipeline always encodes it

    def inpainting_channels(self, channels, factor):
        """FLUX.1 Fill: the latents, the masked picture's latents and the mask folded from
        pixels into factor x factor channels (16 + 16 + 64, packed 2x2: 384)."""
        return 2 * channels + factor * factor

    def inpaint_inputs(self, mask, masked):
        """Fill's extra channels as ``FluxFillPipeline.prepare_mask_latents`` lays them: the
        masked latents, then each cell's factor x factor mask pixels as channels (row-major:
        ``pixel_unshuffle``'s order)."""
        import torch
        import torch.nn.functional as F

        factor = mask.shape[-1] // masked.shape[-1]
        return torch.cat([masked, F.pixel_unshuffle(mask, factor)], dim=1)

    def denoise(self, expert, z, t, sigma, cond, scale, controls):
        """The transformer on 2x2 patches of ``z``, as ``FluxPipeline`` calls it; ``scale``
        is the distilled guidance value (true CFG uses ``cond.cfg_scale``)."""
        import torch
        from diffusers import FluxPipeline

        network, dtype = expert.network, expert.dtype
        device = device_of(network)
        if cond.extra is not None:  # Fill: the masked picture and the mask beside
            z = torch.cat([z, cond.extra.to(z.device, z.dtype)], dim=1)
        batch, channels, h, w = z.shape
        packed = FluxPipeline._pack_latents(z, batch, channels, h, w).to(device, dtype)
        image_ids = _image_ids(h // 2, w // 2, device, dtype)
        embeds = cond.embeds.to(device, dtype)
        text_ids = _text_ids(embeds.shape[1], device, dtype)
        guidance = None
        if network.config.guidance_embeds:
            guidance = torch.full([batch], scale, device=device, dtype=torch.float32)
        timestep = torch.full([batch], t / expert.schedule.num_train_timesteps, device=device)
        if cond.guided:  # true CFG: the negative and positive halves in one batch
            packed = torch.cat([packed, packed])
            guidance = None if guidance is None else torch.cat([guidance, guidance])
            timestep = torch.cat([timestep, timestep])
        out = network(
            hidden_states=packed,
            timestep=timestep.to(dtype),
            guidance=guidance,
            pooled_projections=cond.added["pooled"].to(device, dtype),
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        out = FluxPipeline._unpack_latents(out, h, w, 1).float().to(z.device)
        return guide(out, cond, cond.cfg_scale) if cond.guided else out

    def lora_text_encoders(self, text) -> dict:
        return {"text_encoder": text.clip}

    def from_original(self, path, tensors: dict, what: str):
        """Flux.1 dev or schnell: CLIP-L's pooled output (unprojected, so a projection the
        file may carry is not used) and T5-XXL's last hidden state; the 16-channel VAE."""
        from .. import original
        from ..errors import UserError
        from ..loading.schedulers import published_scheduler

        layout, part = "a Flux.1 checkpoint", original.part
        network = original.convert_flux_transformer(part(tensors, layouts.UNET), what, layout)
        vae = original.convert_vae(part(tensors, layouts.VAE), 0.3611, layout, shift_factor=0.1159)
        projection = layouts.SD3_CLIP_L + "text_projection."
        clip_part = {
            k: v
            for k, v in part(tensors, layouts.SD3_CLIP_L).items()
            if not k.startswith(projection)
        }
        clip = original.convert_clip(clip_part, layouts.SD3_CLIP_L, "CLIP-L", layout)
        t5 = original.convert_t5(part(tensors, layouts.SD3_T5), layouts.SD3_T5, "T5", layout)
        for wanted, given, name in (
            (network.config.pooled_projection_dim, clip.config.hidden_size, "pooled text, CLIP-L"),
            (network.config.joint_attention_dim, t5.config.d_model, "text, T5"),
        ):
            if wanted != given:
                raise UserError(f"{what} takes {wanted}-wide {name} gives {given}")
        components = {
            "tokenizer": original.clip_tokenizer("<|endoftext|>"),
            "text_encoder": clip,
            "tokenizer_2": original.t5_tokenizer(),
            "text_encoder_2": t5,
        }
        dev = network.config.guidance_embeds
        scheduler = published_scheduler("flux1-dev" if dev else "flux1-schnell")
        return network, vae, components, {}, scheduler


def file_variant(keys: list[str]) -> str | None:
    """``"dev"`` or ``"schnell"`` for a Flux.1 file's tensor names, None for another file."""
    if not any("double_blocks." in k for k in keys):
        return None
    return "dev" if any("guidance_in." in k for k in keys) else "schnell"


@functools.lru_cache(maxsize=16)
def _image_ids(rows: int, cols: int, device, dtype):
    """Flux's (0, row, col) position ids of the packed latent grid (read-only, shared)."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(1, rows, cols, device, dtype)


@functools.lru_cache(maxsize=16)
def _text_ids(length: int, device, dtype):
    import torch

    return torch.zeros(length, 3, device=device, dtype=dtype)


FAMILY = Flux()
