"""Stable Diffusion 3 and 3.5: an MMDiT on 2x2 patches, rectified flow, two projected CLIPs
(penultimate states zero-padded to T5's width and stacked before T5's tokens; pooled
outputs concatenated) and T5-XXL, or zeros in T5's place when the model ships without it.

Folders: a ``transformer`` of class ``SD3Transformer2DModel``. Single files:
``joint_blocks`` in the MMDiT with ``text_encoders.clip_l/clip_g`` (and ``t5xxl``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import layouts
from ..layouts import SD3_BLOCKS, has
from .base import Conditioning, TransformerFamily, clip_states, device_of, guide, t5_states


@dataclass
class SD3Text:
    """SD3's text stack. The negative prompt is encoded, the empty one too."""

    clip_tokenizers: list
    clips: list
    t5_tokenizer: object | None
    t5: object | None
    joint_dim: int
    max_sequence_length: int = 256

    def _embed(self, prompts: list[str]):
        import torch

        hidden, pooled = [], []
        for tokenizer, encoder in zip(self.clip_tokenizers, self.clips):
            out = clip_states(tokenizer, encoder, prompts)
            pooled.append(out[0].cpu())
            hidden.append(out.hidden_states[-2].cpu())
        if self.t5 is None:
            t5 = torch.zeros(len(prompts), self.max_sequence_length, self.joint_dim)
        else:
            t5 = t5_states(self.t5_tokenizer, self.t5, prompts, self.max_sequence_length)
        clip = torch.cat(hidden, dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)

    def encode(
        self, prompts: list[str], negatives: list[str] | None, guided: bool, size: tuple[int, int]
    ) -> Conditioning:
        import torch

        with torch.no_grad():
            embeds, pooled = self._embed(prompts)
            if guided:
                uncond, uncond_pooled = self._embed(negatives or [""] * len(prompts))
                embeds, pooled = torch.cat([uncond, embeds]), torch.cat([uncond_pooled, pooled])
        return Conditioning(embeds, guided, {"pooled": pooled})


class SD3(TransformerFamily):
    name = "sd3"
    label = "SD3"
    lora_pipeline = "StableDiffusion3Pipeline"

    def recognise(self, index, config) -> bool:
        return _named(index.get("transformer")) == "SD3Transformer2DModel"

    def recognise_file(self, keys) -> bool:
        return has(keys, SD3_BLOCKS)

    def text_stack(self, index, component, network, cache):
        return SD3Text(
            [component("tokenizer"), component("tokenizer_2")],
            [component("text_encoder"), component("text_encoder_2")],
            component("tokenizer_3"),
            component("text_encoder_3"),
            network.config.joint_attention_dim,
        )

    def denoise(self, expert, z, t, sigma, cond, scale, controls):
        """The MMDiT as ``StableDiffusion3Pipeline`` calls it (raw timestep in [0, 1000])."""
        import torch

        device = device_of(expert.network)
        z_in = (torch.cat([z, z]) if cond.guided else z).to(device, expert.dtype)
        out = expert.network(
            hidden_states=z_in,
            timestep=torch.full([z_in.shape[0]], t, device=device),
            encoder_hidden_states=cond.embeds.to(device, expert.dtype),
            pooled_projections=cond.added["pooled"].to(device, expert.dtype),
            return_dict=False,
        )[0]
        return guide(out.float().to(z.device), cond, scale)

    def lora_text_encoders(self, text) -> dict:
        return dict(zip(("text_encoder", "text_encoder_2"), text.clips))

    def from_original(self, path, tensors: dict, what: str):
        """SD3 / SD3.5 with its two CLIPs and T5-XXL when the file holds it; without T5 the
        MMDiT gets zeros in T5's place, as ``StableDiffusion3Pipeline`` without it."""
        from .. import original
        from ..errors import UserError
        from ..loading.schedulers import published_scheduler

        layout, part = "an SD3 checkpoint", original.part
        network = original.convert_sd3_transformer(part(tensors, layouts.UNET), what, layout)
        vae = original.convert_vae(part(tensors, layouts.VAE), 1.5305, layout, shift_factor=0.0609)
        clip_l = original.convert_clip(
            part(tensors, layouts.SD3_CLIP_L), layouts.SD3_CLIP_L, "CLIP-L", layout
        )
        clip_g = original.convert_clip(
            part(tensors, layouts.SD3_CLIP_G),
            layouts.SD3_CLIP_G,
            "CLIP-G",
            layout,
            {"hidden_act": "gelu"},
        )
        for encoder, name in ((clip_l, "CLIP-L"), (clip_g, "CLIP-G")):
            if not hasattr(encoder, "text_projection"):
                raise UserError(
                    f"{path}: {name} has no text projection (SD3's pooled text needs it)"
                )
        pooled = clip_l.config.projection_dim + clip_g.config.projection_dim
        if network.config.pooled_projection_dim != pooled:
            raise UserError(
                f"{what} takes {network.config.pooled_projection_dim}-wide pooled text, not "
                f"the {pooled} its CLIPs give"
            )
        components = {
            "text_encoder": clip_l,
            "tokenizer": original.clip_tokenizer("<|endoftext|>"),
            "text_encoder_2": clip_g,
            "tokenizer_2": original.clip_tokenizer("!"),
        }
        if layouts.has(tensors, layouts.SD3_T5):
            t5 = original.convert_t5(part(tensors, layouts.SD3_T5), layouts.SD3_T5, "T5", layout)
            if t5.config.d_model != network.config.joint_attention_dim:
                raise UserError(
                    f"{what} attends to {network.config.joint_attention_dim}-wide text, not "
                    f"the {t5.config.d_model} its T5 gives"
                )
            components |= {"text_encoder_3": t5, "tokenizer_3": original.t5_tokenizer()}
        return network, vae, components, {}, published_scheduler("sd3-medium")


def _named(spec) -> str | None:
    """The class a ``model_index.json`` entry names (``[library, class]``)."""
    return spec[1] if isinstance(spec, list) and len(spec) == 2 else None


FAMILY = SD3()
