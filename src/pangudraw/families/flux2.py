"""FLUX.2 [klein] (``Flux2KleinPipeline``): a transformer on the cells of Flux.2's 32-channel
VAE with 2x2 patches folded into channels and normalised by the VAE's batch-norm
statistics (:class:`pangudraw.latents.LatentSpace` does this fold: the canvas is that
space), flow matching on ``linspace(1, 1/N, N)`` with Flux.2's empirical ``mu`` (it
depends on the step count), Qwen3 text.

Text: each prompt through the chat template (thinking off), padded to 512, the hidden
states of layers 9, 18 and 27 side by side per token, all 512 positions kept.

Guidance: classifier-free guidance against the empty prompt (``-n`` replaces it), 1 = off,
as the pipeline's ``guidance_scale``; a step-distilled model (``is_distilled`` in its
folder) takes none, as its pipeline ignores it.

FLUX.2 [dev] (``Flux2Pipeline``): the same transformer and latent space, guidance-distilled
(``-g`` is the value its network takes, 4 by default, 50 steps), Mistral Small 3's hidden
states 10, 20 and 30 after the pipeline's system message. Its folder names a
``PixtralProcessor`` as its tokenizer; the text side of that folder (its tokenizer and chat
template) is what the text takes, so no image library is needed. Folders: a
``transformer`` of class ``Flux2Transformer2DModel``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .base import Conditioning, TransformerFamily, chat_template, device_of, expect

# Flux2KleinPipeline's defaults: 50 steps at guidance 4; step-distilled models run in 4
# steps without guidance (their model cards).
DEFAULTS = {"base": {"steps": 50, "guidance_scale": 4.0}, "distilled": {"steps": 4}}
SIZE = (1024, 1024)
LAYERS = (9, 18, 27)

TOKENIZERS = ("Qwen2Tokenizer", "Qwen2TokenizerFast")
ENCODERS = ("Qwen3ForCausalLM",)
# FLUX.2 [dev]: Mistral Small 3's multimodal model, layers 10, 20 and 30, the text side of
# its PixtralProcessor; guidance-distilled, 50 steps at 4 (Flux2Pipeline's defaults).
DEV_ENCODERS = ("Mistral3ForConditionalGeneration",)
DEV_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast", "LlamaTokenizerFast")
DEV_LAYERS = (10, 20, 30)
DEV_DEFAULTS = {"steps": 50, "guidance_scale": 4.0}


def _is_dev(index: dict) -> bool:
    spec = index.get("text_encoder")
    return isinstance(spec, list) and spec[-1:] == list(DEV_ENCODERS)


@dataclass
class Flux2Text:
    """Qwen3 as ``Flux2KleinPipeline.encode_prompt`` runs it (its own helpers); with
    guidance the negative prompts' states in their own tensors (``added["negative"]``)."""

    tokenizer: object
    encoder: object
    distilled: bool = False
    max_sequence_length: int = 512

    def _embed(self, prompts: list[str]):
        from diffusers import Flux2KleinPipeline

        device = device_of(self.encoder)
        embeds = Flux2KleinPipeline._get_qwen3_prompt_embeds(
            self.encoder,
            self.tokenizer,
            list(prompts),
            device=device,
            max_sequence_length=self.max_sequence_length,
            hidden_states_layers=LAYERS,
        )
        return embeds.cpu()

    def encode(
        self, prompts: list[str], negatives: list[str] | None, guided: bool, size: tuple[int, int]
    ) -> Conditioning:
        import torch

        guided = guided and not self.distilled
        with torch.no_grad():
            embeds = self._embed(prompts)
            added = {"negative": self._embed(negatives or [""] * len(prompts))} if guided else {}
        return Conditioning(embeds, guided, added)


@dataclass
class Flux2DevText:
    """Mistral Small 3 as ``Flux2Pipeline.encode_prompt`` runs it (its own helper): each
    prompt after the pipeline's system message through the chat template, padded to 512,
    the hidden states of layers 10, 20 and 30 side by side. Guidance-distilled: no negative
    prompt."""

    tokenizer: object
    encoder: object
    max_sequence_length: int = 512

    def encode(
        self, prompts: list[str], negatives: list[str] | None, guided: bool, size: tuple[int, int]
    ) -> Conditioning:
        import torch
        from diffusers import Flux2Pipeline
        from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

        with torch.no_grad():
            embeds = Flux2Pipeline._get_mistral_3_small_prompt_embeds(
                self.encoder,
                self.tokenizer,
                list(prompts),
                device=device_of(self.encoder),
                max_sequence_length=self.max_sequence_length,
                system_message=SYSTEM_MESSAGE,
                hidden_states_layers=DEV_LAYERS,
            )
        return Conditioning(embeds.cpu(), False)


class Flux2(TransformerFamily):
    name = "flux2"
    label = "FLUX.2"
    lora_pipeline = "Flux2KleinPipeline"
    own_sigmas = True

    def recognise(self, index, config) -> bool:
        spec = index.get("transformer")
        return isinstance(spec, list) and spec[-1:] == ["Flux2Transformer2DModel"]

    def defaults(self, index, config) -> dict:
        if _is_dev(index):
            return dict(DEV_DEFAULTS)
        return dict(DEFAULTS["distilled" if index.get("is_distilled") else "base"])

    def guidance_distilled(self, network) -> bool:
        return bool(network.config.guidance_embeds)

    def flow_mu(self, config, latent_hw, steps):
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        return compute_empirical_mu(image_seq_len=latent_hw[0] * latent_hw[1], num_steps=steps)

    def text_stack(self, index, component, network, cache):
        if _is_dev(index):
            encoder = expect(component("text_encoder"), DEV_ENCODERS, "text_encoder", self.label)
            tokenizer = expect(component("tokenizer"), DEV_TOKENIZERS, "tokenizer", self.label)
            chat_template(tokenizer, self.label)
            if not network.config.guidance_embeds:
                raise UserError(f"{self.label} [dev]'s transformer must take a guidance value")
            return Flux2DevText(tokenizer, encoder)
        distilled = index.get("is_distilled") is True
        encoder = expect(component("text_encoder"), ENCODERS, "text_encoder", self.label)
        tokenizer = expect(component("tokenizer"), TOKENIZERS, "tokenizer", self.label)
        chat_template(tokenizer, self.label)
        return Flux2Text(tokenizer, encoder, distilled)

    def native_size(self, network, factor: int) -> tuple[int, int]:
        return SIZE

    def denoise(self, expert, z, t, sigma, cond, scale, controls):
        """The transformer on the latent cells as tokens (raster order, position ids
        (0, row, column, 0)) at time ``u``, as ``Flux2KleinPipeline`` calls it: the
        conditional and negative passes apart."""
        import torch
        from diffusers import Flux2KleinPipeline as Pipe

        network, dtype = expert.network, expert.dtype
        device = device_of(network)
        batch, channels, h, w = z.shape
        tokens = Pipe._pack_latents(z).to(device, dtype)
        image_ids = Pipe._prepare_latent_ids(z).to(device)
        time = torch.full([batch], t, dtype=dtype, device=device) / 1000
        guidance = None
        if network.config.guidance_embeds:  # [dev]: -g is its distilled value
            guidance = torch.full([batch], scale, dtype=torch.float32, device=device)

        def call(embeds):
            embeds = embeds.to(device, dtype)
            return network(
                hidden_states=tokens,
                timestep=time,
                guidance=guidance,
                encoder_hidden_states=embeds,
                txt_ids=Pipe._prepare_text_ids(embeds).to(device),
                img_ids=image_ids,
                return_dict=False,
            )[0]

        out = call(cond.embeds)
        if cond.guided:
            negative = call(cond.added["negative"])
            out = negative + scale * (out - negative)
        return out.float().to(z.device).permute(0, 2, 1).reshape(batch, channels, h, w)


FAMILY = Flux2()
