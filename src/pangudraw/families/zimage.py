"""Z-Image (``ZImagePipeline``): a single-stream DiT on 2x2 patches of Flux's 16-channel
VAE, flow matching on ``linspace(1, 1/N, N)`` with a static shift (3), Qwen3 text.

Text: each prompt through the tokenizer's chat template (thinking on), padded to 512, the
penultimate hidden states of its real tokens only (prompts of different lengths stay
apart: the transformer takes lists). The transformer takes ``1 - u`` as its time and its
output is the negative velocity.

Guidance: Z-Image writes it as ``pos + s (pos - neg)``, which is classifier-free guidance
at ``g = s + 1``; ``-g`` keeps its one meaning (1 = off), so ``ZImagePipeline``'s default
``guidance_scale=5`` is ``-g 6`` here. Folders: a ``transformer`` of class
``ZImageTransformer2DModel``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Conditioning, TransformerFamily, chat_template, device_of, expect, guide

# ZImagePipeline's defaults: 50 steps at its guidance 5 (our 6), 1024 px.
DEFAULTS = {"steps": 50, "guidance_scale": 6.0}
SIZE = (1024, 1024)

# Z-Image-Turbo's scheduler, for a model spec that names none.
TURBO_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": False,
}

TOKENIZERS = ("Qwen2Tokenizer", "Qwen2TokenizerFast")
ENCODERS = ("Qwen3Model",)


@dataclass
class ZImageText:
    """Qwen3 as ``ZImagePipeline._encode_prompt`` runs it (its own helper): a list of
    (tokens, width) tensors, the negative prompts' first when guided."""

    tokenizer: object
    encoder: object
    max_sequence_length: int = 512

    def _embed(self, prompts: list[str]) -> list:
        from types import SimpleNamespace

        from diffusers import ZImagePipeline

        device = device_of(self.encoder)
        pipe = SimpleNamespace(tokenizer=self.tokenizer, text_encoder=self.encoder)
        embeds = ZImagePipeline._encode_prompt(
            pipe, list(prompts), device, max_sequence_length=self.max_sequence_length
        )
        return [e.cpu() for e in embeds]

    def encode(
        self, prompts: list[str], negatives: list[str] | None, guided: bool, size: tuple[int, int]
    ) -> Conditioning:
        import torch

        with torch.no_grad():
            embeds = self._embed(prompts)
            if guided:
                embeds = self._embed(negatives or [""] * len(prompts)) + embeds
        return Conditioning(embeds, guided)


class ZImage(TransformerFamily):
    name = "z-image"
    label = "Z-Image"
    lora_pipeline = "ZImagePipeline"
    own_sigmas = True

    def recognise(self, index, config) -> bool:
        spec = index.get("transformer")
        return isinstance(spec, list) and spec[-1:] == ["ZImageTransformer2DModel"]

    def defaults(self, index, config) -> dict:
        return dict(DEFAULTS)

    def recognise_component(self, keys: list[str]) -> bool:
        names = {k.removeprefix("model.diffusion_model.").split(".", 1)[0] for k in keys}
        return {"cap_embedder", "context_refiner", "noise_refiner"} <= names

    def from_components(self, spec, tensors: dict, tokenizer: str, what: str):
        """ComfyUI's split files: ``z_image_turbo_bf16.safetensors`` (the S3-DiT),
        ``qwen_3_4b.safetensors`` (Qwen3 with or without its LM head), Flux's
        ``ae.safetensors``; the tokenizer from a folder; the scheduler Z-Image-Turbo's
        (a flow shift of 3) unless the spec names one."""
        from transformers import Qwen2Tokenizer, Qwen2TokenizerFast

        from .. import original, split_files
        from ..layouts import VAE

        whole = {VAE + k: v for k, v in tensors["vae"].items()}  # as a whole file has it
        vae = original.convert_vae(whole, 0.3611, "Flux's VAE", shift_factor=0.1159)
        channels = vae.config.latent_channels
        network = split_files.convert_z_image_transformer(tensors["denoiser"], channels, what)
        encoder = split_files.convert_qwen3(tensors["text_encoder"], "the Qwen3 text encoder")
        split_files.check_text_width(network.config.cap_feat_dim, encoder.config.hidden_size, what)
        tokens = split_files.tokenizer_folder(
            spec, tokenizer, (Qwen2TokenizerFast, Qwen2Tokenizer), "Qwen2"
        )
        components = {"text_encoder": encoder, "tokenizer": tokens}
        return network, vae, components, {}, dict(TURBO_SCHEDULER)

    def text_stack(self, index, component, network, cache):
        encoder = expect(component("text_encoder"), ENCODERS, "text_encoder", self.label)
        tokenizer = expect(component("tokenizer"), TOKENIZERS, "tokenizer", self.label)
        chat_template(tokenizer, self.label)
        return ZImageText(tokenizer, encoder)

    def native_size(self, network, factor: int) -> tuple[int, int]:
        return SIZE

    def size_multiple(self, network, factor: int) -> int:
        return factor * network.config.all_patch_size[0]

    def feature_width(self, network) -> int:
        return network.config.dim

    def denoise(self, expert, z, t, sigma, cond, scale, controls):
        """The transformer on a list of one-frame latents, as ``ZImagePipeline`` calls it:
        time ``(1000 - t) / 1000``, the output negated (a velocity)."""
        import torch

        network, dtype = expert.network, expert.dtype
        device = device_of(network)
        x = torch.cat([z] * cond.copies).to(device, dtype)[:, :, None]
        time = torch.full([x.shape[0]], (1000 - t) / 1000, device=device)
        texts = [e.to(device, dtype) for e in cond.embeds]
        out = network(list(x.unbind(0)), time, texts, return_dict=False)[0]
        out = -torch.stack([o.float() for o in out])[:, :, 0].to(z.device)
        return guide(out, cond, scale) if cond.guided else out


FAMILY = ZImage()
