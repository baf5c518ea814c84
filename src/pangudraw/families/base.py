"""What every family module answers, and the pieces several families share.

A family module (``families/sd.py``, ``sdxl.py``, ...) knows its models and nothing else:
how to recognise a folder (its ``model_index.json`` and configs) or a single file (its
tensor names) without torch, how to build its text stack, how its denoiser is called
(latents, timestep, conditioning -> output in its prediction type, with any packing), its
native size and size multiple, the defaults its diffusers pipeline uses, and which diffusers
loader reads its LoRAs. The loop, the bridges, Coop and the CLI ask a :class:`Family`
and never which family it is.

Importing a family module does not import torch (the CLI checks requests before torch
loads); the functions that compute import it when they run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UserError


@dataclass
class Conditioning:
    """Encoded prompts for one expert, ready for its network.

    ``embeds`` is (2B, L, D) with the unconditional half first when ``guided``, else (B, L, D).
    ``added`` holds the other inputs its network takes (SDXL's ``text_embeds`` and
    ``time_ids``, SD3's and Flux's ``pooled``) with the same batch layout.
    ``styles`` are the scales of extra guided branches (PanGu-Draw v3's style prompts),
    stacked after the conditional half: ``embeds`` is then ((2 + len(styles)) B, L, D).
    ``cfg_scale``: the classifier-free scale fixed at encoding, used instead of the
    expert's guidance value (Flux's true CFG, whose guidance value is the distilled one).
    ``extra``: (B, E, h, w) channels concatenated to the latents of every copy (a 9-channel
    inpainting UNet's mask and masked-picture latents), or None.
    """

    embeds: Any  # torch.Tensor
    guided: bool
    added: dict | None = None
    styles: tuple[float, ...] = ()
    cfg_scale: float | None = None
    extra: Any = None

    @property
    def copies(self) -> int:
        """How many times the latents are stacked for one network call."""
        return 2 + len(self.styles) if self.guided else 1


class Family:
    """A model family's answers (subclassed once per family module).

    Attributes:
        name: the family's one name, everywhere (recognition, metadata, messages).
        label: how messages name it.
        network_component: the folder component holding the denoiser ("unet" or
            "transformer"); also the prefix of its LoRA keys.
        lora_pipeline: the diffusers pipeline class whose LoRA loader reads its files
            (None: diffusers has none for the family).
        controlnets: whether diffusers ControlNets steer it.
        true_cfg: whether it takes true classifier-free guidance (Flux.1).
        distilled_guidance: whether ``-g`` is a distilled guidance value fed to the
            network instead of classifier-free guidance (Flux.1 dev).
        styles: whether it has PanGu-Draw v3's style branches.
        own_sigmas: whether its pipeline passes its own shifted sigma grid to the flow
            scheduler (Flux.1: ``linspace(1, 1/N, N)`` shifted by ``mu``).
        grid_timesteps: whether its network takes the sampler's timesteps as they are (on
            the canvas: Wan's integers) rather than ones recomputed from the noise level.
        picture_condition: for a model that draws from noise beside a picture's latents
            (HunyuanImage's refiner), the flow noise level its pipeline gives the picture;
            None for the others.
    """

    name = ""
    label = ""
    network_component = "unet"
    lora_pipeline = "StableDiffusionPipeline"
    controlnets = False
    true_cfg = False
    distilled_guidance = False
    styles = False
    own_sigmas = False
    grid_timesteps = False
    picture_condition: float | None = None

    # ------------------------------------------------------------------ recognition

    def recognise(self, index: dict, config: Callable[[str], dict]) -> bool:
        """Whether a diffusers folder is of this family: ``index`` is its
        ``model_index.json``, ``config(component)`` reads a component's ``config.json``
        (``{}`` when missing). No torch."""
        raise NotImplementedError

    def recognise_file(self, keys: list[str]) -> bool:
        """Whether a whole single file (its tensor names, from the header) is of this
        family. No torch. Families published only as folders answer False."""
        return False

    def recognise_component(self, keys: list[str]) -> bool:
        """Whether a model spec's denoiser file (its tensor names) is this family's
        diffusion model as ComfyUI publishes it apart (:mod:`pangudraw.split_files`); such
        a family builds its expert with ``from_components``. No torch."""
        return False

    def flow_mu(self, config, latent_hw: tuple[int, int], steps: int) -> float | None:
        """The shift ``mu`` its pipeline passes a flow scheduler for a canvas of
        ``latent_hw`` cells in ``steps`` steps; None: the rule of Flux.1's pipeline
        (``calculate_shift`` on 2x2 patches, when the config asks for dynamic shifting)."""
        return None

    def guidance_distilled(self, network) -> bool:
        """Whether ``-g`` goes to this network as a distilled guidance value instead of
        classifier-free guidance (the family's ``distilled_guidance``, unless its models
        differ one from another)."""
        return self.distilled_guidance

    def defaults(self, index: dict, config: Callable[[str], dict]) -> dict:
        """The sampling settings this family's diffusers pipeline uses where they differ
        from pangu-draw's own (:data:`pangudraw.options.GENERATION`): steps, guidance,
        size. No torch."""
        return {}

    # ------------------------------------------------------------------ building

    def text_stack(self, index: dict, component: Callable[[str], Any], network, cache: dict | None):
        """The text stack from a folder's loaded components (``component(name)``)."""
        raise NotImplementedError

    def native_size(self, network, factor: int) -> tuple[int, int]:
        """The pixel size (height, width) its pipeline draws by default."""
        size = network.config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        return height * factor, width * factor

    def size_multiple(self, network, factor: int) -> int:
        """Image sides must be multiples of this: what its diffusers pipeline accepts. A
        UNet takes any latent size (diffusers forwards the upsampling sizes), so the VAE
        factor; a transformer cuts latents into patches, so the factor times the patch."""
        return factor

    def latent_channels(self, network) -> int:
        """How many latent channels its denoiser takes (packed tokens unpacked)."""
        return network.config.in_channels

    def feature_width(self, network) -> int:
        """The network's first feature width (for memory estimates)."""
        return network.config.block_out_channels[0]

    def channels_last(self) -> bool:
        """Whether its convolutions run faster in channels-last layout (UNets)."""
        return True

    # A dedicated inpainting model at strength 1 starts from pure noise: SD's inpainting
    # pipelines then never encode the picture, FluxFillPipeline samples its posterior all
    # the same (which moves the generator).
    encodes_picture_at_full_strength = False

    def inpainting_channels(self, channels: int, factor: int) -> int | None:
        """The channels a dedicated inpainting model of this family takes over a latent
        space of ``channels`` channels, ``factor`` pixels a cell (the latents and
        :meth:`inpaint_inputs`); None where the family has none."""
        return None

    def inpaint_inputs(self, mask, masked):
        """A dedicated inpainting model's extra channels, from the binary mask (B, 1, H, W)
        at pixel size (1 repaints) and the masked picture's latents (B, C, h, w): a
        9-channel UNet's mask at the latent size, then the masked latents."""
        import torch
        import torch.nn.functional as F

        return torch.cat([F.interpolate(mask, size=tuple(masked.shape[-2:])), masked], dim=1)

    # ------------------------------------------------------------------ running

    def denoise(self, expert, z, t: float, sigma: float, cond: Conditioning, scale, controls):
        """The network's output (in the expert's prediction type) for the scaled input
        ``z`` at training timestep ``t``, with classifier-free guidance at ``scale``
        (or the distilled guidance value) and the ControlNets active at ``sigma``."""
        return unet_call(expert, z, t, sigma, cond, scale, controls)

    def lora_text_encoders(self, text) -> dict:
        """The text encoders a LoRA file may address, by their diffusers prefix."""
        return {}


class TransformerFamily(Family):
    """A family whose denoiser is a diffusers transformer (SD3, Flux, and the 2026
    families): patches of latent cells as tokens, no channels-last layout, its width the
    attention heads times their width."""

    network_component = "transformer"

    def size_multiple(self, network, factor: int) -> int:
        patch = network.config.patch_size
        return factor * (patch[-1] if isinstance(patch, list | tuple) else patch)

    def feature_width(self, network) -> int:
        return network.config.num_attention_heads * network.config.attention_head_dim

    def channels_last(self) -> bool:
        return False


# ---------------------------------------------------------------------- shared pieces


def expect(module, classes: tuple[str, ...], role: str, family: str):
    """``module`` when it is one of ``classes`` (a folder may name any allowed class for a
    component; a family takes only its own), else a one-line refusal."""
    name = type(module).__name__
    if module is None or name not in classes:
        raise UserError(
            f"{family} takes {' or '.join(classes)} as its {role}, the folder has "
            f"{'none' if module is None else name}"
        )
    return module


def chat_template(tokenizer, label: str):
    """``tokenizer`` when its chat template renders; a one-line refusal when it has none or
    one that fails (a folder's template is someone else's text, run by jinja)."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{label}'s tokenizer needs its chat template; this one has none")
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    except Exception as exc:  # noqa: BLE001 (jinja's errors, from the folder's text)
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(f"{label}'s chat template does not work: {detail}") from exc
    return tokenizer


def device_of(module):
    """Where a module computes. Tensors go there for the call and come back to the CPU, so
    the sampling loop (tiny tensors) stays on the CPU while networks sit on any device."""
    from ..offload import execution_device

    return execution_device(module) or next(module.parameters()).device


def clip_states(tokenizer, encoder, prompts: list[str]):
    """A CLIP text model's output with all hidden states, prompts padded to its length."""
    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return encoder(ids.to(device_of(encoder)), output_hidden_states=True)


def t5_states(tokenizer, encoder, prompts: list[str], limit: int):
    """T5's last hidden state for prompts padded to ``limit`` tokens; a longer prompt is
    refused (the pipelines would cut it silently)."""
    import torch

    ids = tokenizer(prompts, padding="max_length", max_length=limit).input_ids
    for prompt, row in zip(prompts, ids):
        if len(row) > limit:
            raise UserError(
                f"prompt {prompt[:40]!r}... is {len(row)} tokens; this model takes at most "
                f"{limit}: shorten it"
            )
    return encoder(torch.tensor(ids, device=device_of(encoder)))[0].cpu()


def guide(out, cond: Conditioning, guidance_scale: float):
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


def unet_call(expert, z, t: float, sigma: float, cond: Conditioning, scale: float, controls):
    """A diffusers UNet (SD, SDXL, PanGu-Draw v3, the bundled models) as their pipelines
    call it, with the residuals of the ControlNets active at ``sigma`` added."""
    import torch

    device = device_of(expert.network)
    t = torch.tensor(t, dtype=torch.float32, device=device)
    z_in = torch.cat([z] * cond.copies)
    if cond.extra is not None:  # an inpainting UNet: mask and masked picture beside
        z_in = torch.cat([z_in, torch.cat([cond.extra] * cond.copies)], dim=1)
    z_in = z_in.to(device, expert.dtype)
    embeds = cond.embeds.to(device, expert.dtype)
    added = {k: v.to(device) for k, v in cond.added.items()} if cond.added else cond.added
    down, mid = None, None
    for control in controls:
        if not control.active(sigma):
            continue
        image = control.image.to(device, expert.dtype).expand(z.shape[0], -1, -1, -1)
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
    out = expert.network(
        z_in,
        t,
        encoder_hidden_states=embeds,
        added_cond_kwargs=added,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
        return_dict=False,
    )[0]
    return guide(out.float().to(z.device), cond, scale)
