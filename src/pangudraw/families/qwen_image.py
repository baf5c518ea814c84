"""Qwen-Image (``QwenImagePipeline``): an MMDiT on 2x2-packed latents of a 16-channel causal
video VAE (per-channel mean and std; one frame), flow matching on ``linspace(1, 1/N, N)``
with the resolution-dependent exponential shift and a terminal stretch, Qwen2.5-VL text.

Text: each prompt inside the pipeline's fixed system template, the last hidden states of
its real tokens with the template's first 34 tokens dropped, zero-padded across the batch
(with a mask where lengths differ). The transformer takes ``u`` as its time.

Guidance: Qwen-Image runs classifier-free guidance only against a negative prompt and
calls its scale ``true_cfg_scale``, with the guided velocity rescaled per token to the
conditional one's norm. ``-g g > 1`` is that guidance at ``g`` against the negative prompt
(the empty one unless given); 1 = off. A guidance-distilled transformer
(``guidance_embeds``) takes ``-g`` as its guidance value instead. Folders: a
``transformer`` of class ``QwenImageTransformer2DModel``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Conditioning, TransformerFamily, device_of, expect

# QwenImagePipeline's defaults: 50 steps; its model card's true_cfg_scale 4 at 1328 px,
# the pipeline's 1024 px.
DEFAULTS = {"steps": 50, "guidance_scale": 4.0}
SIZE = (1024, 1024)
MAX_SEQUENCE_LENGTH = 512  # QwenImagePipeline.__call__'s

TOKENIZERS = ("Qwen2Tokenizer", "Qwen2TokenizerFast")
ENCODERS = ("Qwen2_5_VLForConditionalGeneration",)


@dataclass
class QwenText:
    """Qwen2.5-VL as ``QwenImagePipeline.encode_prompt`` runs it (its own helpers). The
    conditioning holds the prompts' states and, when guided, the negative prompts' apart
    (their lengths differ): ``embeds`` is ``[negative, positive]``."""

    tokenizer: object
    encoder: object

    def _embed(self, prompts: list[str]):
        import functools
        from types import SimpleNamespace

        from diffusers import QwenImagePipeline

        device = device_of(self.encoder)
        pipe = SimpleNamespace(
            tokenizer=self.tokenizer,
            text_encoder=self.encoder,
            tokenizer_max_length=1024,
            prompt_template_encode=_TEMPLATE,
            prompt_template_encode_start_idx=34,
            _execution_device=device,
        )
        for name in ("_get_qwen_prompt_embeds", "_extract_masked_hidden"):
            setattr(pipe, name, functools.partial(getattr(QwenImagePipeline, name), pipe))
        embeds, mask = QwenImagePipeline.encode_prompt(
            pipe, list(prompts), device, max_sequence_length=MAX_SEQUENCE_LENGTH
        )
        return embeds.cpu(), None if mask is None else mask.cpu()

    def encode(
        self, prompts: list[str], negatives: list[str] | None, guided: bool, size: tuple[int, int]
    ) -> Conditioning:
        import torch

        with torch.no_grad():
            embeds, mask = self._embed(prompts)
            if not guided:
                return Conditioning(embeds, False, {"mask": mask})
            negative, negative_mask = self._embed(negatives or [""] * len(prompts))
        added = {"mask": mask, "negative_mask": negative_mask, "negative": negative}
        return Conditioning(embeds, True, added)


_TEMPLATE = (  # QwenImagePipeline's prompt_template_encode
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
    "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)


class QwenImage(TransformerFamily):
    name = "qwen-image"
    label = "Qwen-Image"
    lora_pipeline = "QwenImagePipeline"
    own_sigmas = True

    def recognise(self, index, config) -> bool:
        spec = index.get("transformer")
        return isinstance(spec, list) and spec[-1:] == ["QwenImageTransformer2DModel"]

    def defaults(self, index, config) -> dict:
        return dict(DEFAULTS)

    def recognise_component(self, keys: list[str]) -> bool:
        names = {k.removeprefix("model.diffusion_model.").split(".", 1)[0] for k in keys}
        return {"img_in", "txt_in", "transformer_blocks", "time_text_embed"} <= names

    def from_components(self, spec, tensors: dict, tokenizer: str, what: str):
        """ComfyUI's split files: ``qwen_image_*.safetensors`` (diffusers' own names),
        ``qwen_2.5_vl_7b`` (Hugging Face's names), ``qwen_image_vae`` (Wan 2.1's VAE in
        Wan's names); the tokenizer from a folder; the scheduler must be named."""
        from transformers import Qwen2Tokenizer, Qwen2TokenizerFast

        from .. import split_files

        vae = split_files.convert_wan_vae(tensors["vae"], "the Qwen-Image VAE", qwen_image=True)
        network = split_files.convert_qwen_image_transformer(tensors["denoiser"], what)
        encoder = split_files.convert_qwen25_vl(tensors["text_encoder"], "the Qwen2.5-VL encoder")
        split_files.check_text_width(
            network.config.joint_attention_dim, encoder.config.text_config.hidden_size, what
        )
        tokens = split_files.tokenizer_folder(
            spec, tokenizer, (Qwen2TokenizerFast, Qwen2Tokenizer), "Qwen2"
        )
        return network, vae, {"text_encoder": encoder, "tokenizer": tokens}, {}, None

    def guidance_distilled(self, network) -> bool:
        return bool(network.config.guidance_embeds)

    def text_stack(self, index, component, network, cache):
        encoder = expect(component("text_encoder"), ENCODERS, "text_encoder", self.label)
        tokenizer = expect(component("tokenizer"), TOKENIZERS, "tokenizer", self.label)
        return QwenText(tokenizer, encoder)

    def native_size(self, network, factor: int) -> tuple[int, int]:
        return SIZE

    def latent_channels(self, network) -> int:
        return network.config.in_channels // 4  # 2x2 packed

    def denoise(self, expert, z, t, sigma, cond, scale, controls):
        """The transformer on 2x2 patches of ``z`` at time ``u``, as ``QwenImagePipeline``
        calls it: the conditional and negative passes apart, combined at ``scale`` and
        rescaled per token to the conditional velocity's norm."""
        import torch
        from diffusers import QwenImagePipeline

        network, dtype = expert.network, expert.dtype
        device = device_of(network)
        batch, channels, h, w = z.shape
        packed = QwenImagePipeline._pack_latents(z, batch, channels, h, w).to(device, dtype)
        time = torch.full([batch], t, dtype=dtype, device=device) / 1000
        guidance = None
        if network.config.guidance_embeds:
            guidance = torch.full([batch], scale, device=device, dtype=torch.float32)
        shapes = [[(1, h // 2, w // 2)]] * batch

        def call(embeds, mask):
            return network(
                hidden_states=packed,
                timestep=time,
                guidance=guidance,
                encoder_hidden_states_mask=None if mask is None else mask.to(device),
                encoder_hidden_states=embeds.to(device, dtype),
                img_shapes=shapes,
                return_dict=False,
            )[0]

        out = call(cond.embeds, cond.added["mask"])
        if cond.guided:
            negative = call(cond.added["negative"], cond.added["negative_mask"])
            combined = negative + scale * (out - negative)
            norm = torch.norm(out, dim=-1, keepdim=True)
            out = combined * (norm / torch.norm(combined, dim=-1, keepdim=True))
        out = out.float().to(z.device)
        return QwenImagePipeline._unpack_latents(out, h, w, 1)[:, :, 0]


FAMILY = QwenImage()
