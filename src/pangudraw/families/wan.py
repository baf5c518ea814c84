"""Wan 2.1 and 2.2 (``WanPipeline``), one frame as an image: a 3D transformer on 1x2x2
patches of a 16-channel causal video VAE (per-channel latent mean and std), flow
matching solved by the folder's UniPC on shifted flow sigmas, UMT5 text.

Wan2.2 A14B is time-decoupled generation in production: its folder holds a high-noise
expert (``transformer``) and a low-noise expert (``transformer_2``), switched where the
timestep falls below ``boundary_ratio x num_train_timesteps``, each with its own guidance
scale. Loaded, the folder is such a pair (:attr:`pangudraw.expert.Expert.low_noise`);
either expert also works alone (a recipe's ``denoiser``).

``-g`` is classifier-free guidance against the negative prompt (the empty one by
default), 1 = off, as ``WanPipeline`` does it. The transformer takes the scheduler's
integer timesteps. Folders: a ``transformer`` of class ``WanTransformer3DModel``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .base import Conditioning, TransformerFamily, device_of, expect, guide

# WanPipeline's defaults (T2V at 480x832): 50 UniPC steps, guidance 5; prompts of up to
# 512 tokens (__call__'s max_sequence_length).
DEFAULTS = {"steps": 50, "guidance_scale": 5.0, "sampler": "unipc"}
SIZE = (480, 832)
MAX_SEQUENCE_LENGTH = 512

TOKENIZERS = ("T5Tokenizer", "T5TokenizerFast")
ENCODERS = ("UMT5EncoderModel", "T5EncoderModel")


@dataclass
class WanText:
    """UMT5, as ``WanPipeline.encode_prompt`` runs it (its own helper): the prompt cleaned
    (ftfy where installed, HTML entities, spaces), the real tokens' states followed by
    zeros up to 512 rows; the negative prompt encoded the same way when guided."""

    tokenizer: object
    encoder: object
    max_sequence_length: int = MAX_SEQUENCE_LENGTH

    def _embed(self, prompts: list[str]):
        from types import SimpleNamespace

        from diffusers import WanPipeline

        device = device_of(self.encoder)
        pipe = SimpleNamespace(
            tokenizer=self.tokenizer, text_encoder=self.encoder, _execution_device=device
        )
        embeds = WanPipeline._get_t5_prompt_embeds(
            pipe, prompts, max_sequence_length=self.max_sequence_length, device=device
        )
        return embeds.cpu()

    def encode(
        self, prompts: list[str], negatives: list[str] | None, guided: bool, size: tuple[int, int]
    ) -> Conditioning:
        import torch

        with torch.no_grad():
            embeds = self._embed(prompts)
            if guided:
                embeds = torch.cat([self._embed(negatives or [""] * len(prompts)), embeds])
        return Conditioning(embeds, guided)


class Wan(TransformerFamily):
    name = "wan"
    label = "Wan"
    lora_pipeline = "WanPipeline"
    grid_timesteps = True

    def recognise(self, index, config) -> bool:
        for name in ("transformer", "transformer_2"):
            spec = index.get(name)
            if isinstance(spec, list) and spec[-1:] == ["WanTransformer3DModel"]:
                return True
        return False

    def defaults(self, index, config) -> dict:
        found = dict(DEFAULTS)
        boundary = boundary_timestep(index, config("scheduler"))
        if boundary is not None:
            found["t_split"] = boundary
        return found

    def recognise_component(self, keys: list[str]) -> bool:
        names = {k.removeprefix("model.diffusion_model.").split(".", 1)[0] for k in keys}
        return {"patch_embedding", "text_embedding", "time_projection", "blocks"} <= names

    def from_components(self, spec, tensors: dict, tokenizer: str, what: str):
        """ComfyUI's split files: the diffusion model(s) in Wan's own names (Wan2.2's
        high-noise one, and its low-noise one as ``denoiser_2``), ``umt5_xxl`` (UMT5 in
        Hugging Face's names), ``wan_2.1_vae``; the tokenizer from a folder. The scheduler
        must be named (Wan's flow shift differs between releases)."""
        from transformers import T5Tokenizer, T5TokenizerFast

        from .. import split_files

        vae = split_files.convert_wan_vae(tensors["vae"], "the Wan VAE")
        network = split_files.convert_wan_transformer(tensors["denoiser"], what)
        components = {}
        if "denoiser_2" in tensors:
            second = split_files.convert_wan_transformer(tensors["denoiser_2"], f"{what} 2")
            if dict(second.config) != dict(network.config):
                raise UserError(f"{what}: the two diffusion models are not one architecture")
            components["transformer_2"] = second
        encoder = split_files.convert_umt5(tensors["text_encoder"], "the UMT5 text encoder")
        split_files.check_text_width(network.config.text_dim, encoder.config.d_model, what)
        components["text_encoder"] = encoder
        components["tokenizer"] = split_files.tokenizer_folder(
            spec, tokenizer, (T5TokenizerFast, T5Tokenizer), "UMT5"
        )
        return network, vae, components, {}, None

    def text_stack(self, index, component, network, cache):
        encoder = expect(component("text_encoder"), ENCODERS, "text_encoder", self.label)
        tokenizer = expect(component("tokenizer"), TOKENIZERS, "tokenizer", self.label)
        return WanText(tokenizer, encoder)

    def native_size(self, network, factor: int) -> tuple[int, int]:
        return SIZE

    def denoise(self, expert, z, t, sigma, cond, scale, controls):
        """The transformer on one frame, at the integer timestep, as ``WanPipeline`` calls
        it (the conditional and unconditional halves in one batch)."""
        import torch

        network, dtype = expert.network, expert.dtype
        device = device_of(network)
        hidden = torch.cat([z] * cond.copies)[:, :, None].to(device, dtype)
        timestep = torch.full([hidden.shape[0]], int(t), dtype=torch.long, device=device)
        out = network(
            hidden_states=hidden,
            timestep=timestep,
            encoder_hidden_states=cond.embeds.to(device, dtype),
            return_dict=False,
        )[0]
        out = out[:, :, 0].float().to(z.device)
        return guide(out, cond, scale) if cond.guided else out


def boundary_timestep(index: dict, scheduler: dict) -> float | None:
    """Where a Wan2.2 folder hands over from ``transformer`` to ``transformer_2``: its
    ``boundary_ratio`` times the training timesteps; None for a folder of one expert."""
    ratio = index.get("boundary_ratio")
    second = index.get("transformer_2")
    if not isinstance(second, list) or second[0] is None:
        return None
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < 1:
        return None
    steps = scheduler.get("num_train_timesteps", 1000)
    return ratio * (steps if isinstance(steps, int) and steps > 1 else 1000)


FAMILY = Wan()
