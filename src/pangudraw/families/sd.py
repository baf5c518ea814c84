"""Stable Diffusion 1.x and 2.x: a UNet conditioned on one CLIP text model's last hidden
state; epsilon or v prediction (the scheduler config says which).

Folders: a ``unet`` and one CLIP ``text_encoder`` (what is left once the other UNet
families are told apart). Single files: ``cond_stage_model.transformer.*`` (CLIP-L); SD 2.x
files (OpenCLIP under ``cond_stage_model.model.*``) do not say epsilon or v and are
refused by the loader.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import layouts
from ..layouts import SD1_CLIP, UNET, has
from .base import Family, device_of


@dataclass
class SDText:
    """One tokenizer and text encoder whose last hidden state conditions the UNet.

    ``chinese``: the bundled MiniLM's Chinese encoder (:func:`textenc.load_chinese_encoder`),
    which encodes the prompts that have a CJK character; the others keep ``encoder``.
    ``shared``: text stacks with the same non-None value encode alike (the bundled MiniLM,
    which every bundled model copies), so a generation encodes a prompt once for all of
    them; a LoRA on the encoder clears it.
    """

    tokenizer: object
    encoder: object  # torch.nn.Module
    chinese: object | None = None
    shared: str | None = None

    def _embed(self, prompts: list[str]):
        if self.chinese is None:
            return self._states(self.encoder, prompts)
        import torch

        from ..textenc import has_cjk

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

    def _states(self, encoder, prompts: list[str]):
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
        device = device_of(encoder)
        if mask is not None:
            mask = mask.to(device)
        return encoder(tokens.input_ids.to(device), attention_mask=mask)[0].cpu()

    def encode(
        self, prompts: list[str], negatives: list[str] | None, guided: bool, size: tuple[int, int]
    ):
        import torch

        from .base import Conditioning

        with torch.no_grad():
            embeds = self._embed(prompts)
            if guided:
                uncond = self._embed(negatives or [""] * len(prompts))
                embeds = torch.cat([uncond, embeds])
        return Conditioning(embeds, guided)


class SD(Family):
    name = "sd"
    label = "SD 1.x/2.x"
    controlnets = True

    def recognise(self, index, config) -> bool:
        return "unet" in index and "text_encoder" in index

    def recognise_file(self, keys) -> bool:
        return has(keys, UNET) and has(keys, SD1_CLIP)

    def text_stack(self, index, component, network, cache):
        return SDText(component("tokenizer"), component("text_encoder"))

    def inpainting_channels(self, channels, factor):
        return 2 * channels + 1  # latents, mask, masked picture's latents (9 for SD's)

    def lora_text_encoders(self, text) -> dict:
        return {} if text.encoder is None else {"text_encoder": text.encoder}

    def from_original(self, path, tensors: dict, what: str):
        """An SD 1.x single file's UNet, VAE and CLIP-L (its last hidden state), with the
        family's published scheduler."""
        from .. import original
        from ..errors import UserError
        from ..loading.schedulers import published_scheduler

        layout = "an SD 1.x checkpoint"
        unet = original.convert_unet(original.part(tensors, layouts.UNET), what, layout, None, 64)
        vae = original.convert_vae(original.part(tensors, layouts.VAE), 0.18215, layout)
        encoder = original.convert_clip(
            original.part(tensors, layouts.SD1_CLIP), layouts.SD1_CLIP, original.CLIP_WHAT, layout
        )
        if unet.config.cross_attention_dim != encoder.config.hidden_size:
            raise UserError(
                f"{what} attends to {unet.config.cross_attention_dim}-wide text, not the "
                f"{encoder.config.hidden_size} its text encoder gives"
            )
        components = {
            "text_encoder": encoder,
            "tokenizer": original.clip_tokenizer("<|endoftext|>"),
        }
        index = {"text_encoder": ["transformers", "CLIPTextModel"]}
        return unet, vae, components, index, published_scheduler("sd15")


FAMILY = SD()
