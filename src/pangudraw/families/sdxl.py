"""SDXL, base and refiner: a UNet conditioned on two CLIP text models' penultimate hidden
states (the refiner: OpenCLIP bigG alone) and a vector of the pooled text with size
numbers (base: original size, crop, target size; refiner: original size, crop, aesthetic
score).

Folders: a ``unet`` whose ``addition_embed_type`` is ``text_time``, or a ``text_encoder_2``
beside it. Single files: ``conditioner.embedders.1.model.*`` (base: CLIP-L and bigG) or
``conditioner.embedders.0.model.*`` alone (refiner).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import layouts
from ..layouts import REFINER_BIGG, UNET, XL_BIGG, has
from .base import Conditioning, Family, clip_states


@dataclass
class SDXLText:
    """SDXL's text encoders: penultimate hidden states concatenated, pooled output, time ids."""

    tokenizers: list
    encoders: list
    force_zeros_for_empty_prompt: bool = True
    aesthetic_score: float | None = None  # refiner-style time ids when set

    def _embed(self, prompts: list[str]):
        import torch

        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.encoders):
            out = clip_states(tokenizer, encoder, prompts)
            if out[0].ndim == 2:  # the projection model's pooled output
                pooled = out[0].cpu()
            hidden.append(out.hidden_states[-2].cpu())
        return torch.cat(hidden, dim=-1), pooled

    def _time_ids(self, size: tuple[int, int], score: float):
        import torch

        if self.aesthetic_score is None:
            return torch.tensor([list(size) + [0, 0] + list(size)], dtype=torch.float32)
        return torch.tensor([list(size) + [0, 0] + [score]], dtype=torch.float32)

    def encode(
        self, prompts: list[str], negatives: list[str] | None, guided: bool, size: tuple[int, int]
    ) -> Conditioning:
        import torch

        with torch.no_grad():
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


class SDXL(Family):
    name = "sdxl"
    label = "SDXL"
    lora_pipeline = "StableDiffusionXLPipeline"
    controlnets = True

    def recognise(self, index, config) -> bool:
        if "unet" not in index:
            return False
        return "text_encoder_2" in index or config("unet").get("addition_embed_type") == "text_time"

    def recognise_file(self, keys) -> bool:
        return has(keys, UNET) and has(keys, XL_BIGG, REFINER_BIGG)

    def text_stack(self, index, component, network, cache):
        pairs = [(component(f"tokenizer{k}"), component(f"text_encoder{k}")) for k in ("", "_2")]
        pairs = [(tok, enc) for tok, enc in pairs if enc is not None]
        return SDXLText(
            [tok for tok, _ in pairs],
            [enc for _, enc in pairs],
            force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True),
            aesthetic_score=6.0 if index.get("requires_aesthetics_score") else None,
        )

    def inpainting_channels(self, channels, factor):
        return 2 * channels + 1  # latents, mask, masked picture's latents (9 for SD's)

    def lora_text_encoders(self, text) -> dict:
        return dict(zip(("text_encoder", "text_encoder_2"), text.encoders))

    def from_original(self, path, tensors: dict, what: str):
        """An SDXL base or refiner single file: UNet, VAE, bigG (and CLIP-L for the base),
        with the family's published scheduler."""
        from .. import original
        from ..errors import UserError
        from ..loading.schedulers import published_scheduler

        layout = "an SDXL checkpoint"
        refiner = not layouts.has(tensors, layouts.XL_BIGG)
        part = original.part
        unet = original.convert_unet(part(tensors, layouts.UNET), what, layout, 64, 128)
        vae = original.convert_vae(part(tensors, layouts.VAE), 0.13025, layout)
        prefix = layouts.REFINER_BIGG if refiner else layouts.XL_BIGG
        bigg = original.convert_openclip(
            part(tensors, prefix), prefix, "the OpenCLIP text model", layout
        )
        components = {"text_encoder_2": bigg, "tokenizer_2": original.clip_tokenizer("!")}
        context = bigg.config.hidden_size
        if not refiner:
            clip = original.convert_clip(
                part(tensors, layouts.XL_CLIP), layouts.XL_CLIP, original.CLIP_WHAT, layout
            )
            components |= {
                "text_encoder": clip,
                "tokenizer": original.clip_tokenizer("<|endoftext|>"),
            }
            context += clip.config.hidden_size
        # size numbers: base 6 (original size, crop, target size), refiner 5 (original
        # size, crop, aesthetic score)
        model = "an SDXL refiner" if refiner else "an SDXL base model"
        numbers = 5 if refiner else 6
        original.check_vector_condition(unet, bigg.config.projection_dim, numbers, what, model)
        if unet.config.cross_attention_dim != context:
            raise UserError(
                f"{what} attends to {unet.config.cross_attention_dim}-wide text, not the "
                f"{context} its text encoders give"
            )
        index = {
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "force_zeros_for_empty_prompt": not refiner,
            "requires_aesthetics_score": refiner,
        }
        return unet, vae, components, index, published_scheduler("sdxl-base")


FAMILY = SDXL()
