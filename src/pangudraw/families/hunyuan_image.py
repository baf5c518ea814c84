"""HunyuanImage 2.1 (``HunyuanImagePipeline``): an MMDiT on the latents of a 32x VAE (64
channels, no patching), flow matching on ``linspace(1, 1/N, N)`` shifted by the folder's
``shift``, two text encoders: Qwen2.5-VL for the prompt and ByT5 for the text in quotes
that the picture should spell (glyphs).

Text: each prompt inside the pipeline's system template, the hidden states two layers
below the top with the template's first 34 tokens dropped, padded to 1,000 tokens with a
mask; the quoted parts (``'...'``, ``"..."`` and the Chinese quotes) as
``Text "...". `` through ByT5 at 128 bytes, zeros where a prompt quotes nothing. The
transformer takes the scheduler's timesteps (``1000 u``).

Guidance: the folder's guider (``AdaptiveProjectedMixGuidance``): classifier-free guidance
for its first steps, then adaptive projected guidance (APG: the guided update projected
against the conditional prediction, with momentum and a norm limit), each against the
negative prompt (empty by default); its ``ocr_guider``, where it has one, when a prompt
quotes text. ``-g g`` is the guider's classifier-free scale (the folder's 3.5 by default),
1 = off (no negative pass, as the pipeline skips it); the APG phase keeps the folder's own
settings. A guidance-distilled transformer (``guidance_embeds``) takes ``-g`` as its value
instead. Folders: a ``transformer`` of class ``HunyuanImageTransformer2DModel``; the
distilled one (HunyuanImage-2.1-Distilled: ``guidance_embeds`` and ``use_meanflow``) takes
``-g`` as its distilled value (3.25 by default) and each step's end timestep beside its
start, as a MeanFlow model does.

Its refiner (:class:`HunyuanImageRefiner`, below) is a second family: the same transformer
in another latent space, drawing beside a picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UserError
from .base import Conditioning, TransformerFamily, device_of, expect

# HunyuanImagePipeline's defaults: 50 steps, 2048 px (its default_sample_size 64 x 32);
# guidance is the folder's guider's (3.5 in the published folder).
DEFAULTS = {"steps": 50}
DISTILLED_GUIDANCE = 3.25
SAMPLE_SIZE = 64  # latent cells a side by default
MAX_TOKENS = 1000  # the pipeline's tokenizer_max_length (after the template's 34)
DROP = 34
MAX_GLYPH_BYTES = 128  # tokenizer_2_max_length

TOKENIZERS = ("Qwen2Tokenizer", "Qwen2TokenizerFast")
ENCODERS = ("Qwen2_5_VLForConditionalGeneration",)
GLYPH_TOKENIZERS = ("ByT5Tokenizer",)
GLYPH_ENCODERS = ("T5EncoderModel",)
GUIDERS = ("AdaptiveProjectedMixGuidance",)

_TEMPLATE = (  # HunyuanImagePipeline's prompt_template_encode
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
    "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>"
)


@dataclass
class HunyuanText:
    """Qwen2.5-VL and ByT5 as ``HunyuanImagePipeline.encode_prompt`` runs them (its own
    helpers), with the folder's guiders: the conditioning says which guider steers it
    (the OCR one when a prompt quotes text) and carries that guider's running state."""

    tokenizer: object
    encoder: object
    glyph_tokenizer: object
    glyph_encoder: object
    guider: object | None
    ocr_guider: object | None

    def _pipe(self):
        import functools
        from types import SimpleNamespace

        from diffusers import HunyuanImagePipeline

        pipe = SimpleNamespace(
            tokenizer=self.tokenizer,
            text_encoder=self.encoder,
            tokenizer_2=self.glyph_tokenizer,
            text_encoder_2=self.glyph_encoder,
            tokenizer_max_length=MAX_TOKENS,
            tokenizer_2_max_length=MAX_GLYPH_BYTES,
            prompt_template_encode=_TEMPLATE,
            prompt_template_encode_start_idx=DROP,
            _execution_device=device_of(self.encoder),
        )
        for name in ("_get_qwen_prompt_embeds", "_get_byt5_prompt_embeds"):
            setattr(pipe, name, functools.partial(getattr(HunyuanImagePipeline, name), pipe))
        return pipe

    def _check(self, prompts: list[str]) -> None:
        """The pipeline cuts a longer prompt or quote silently; we refuse it."""
        from diffusers.pipelines.hunyuan_image.pipeline_hunyuanimage import extract_glyph_text

        for prompt in prompts:
            tokens = len(self.tokenizer(_TEMPLATE.format(prompt)).input_ids) - DROP
            if tokens > MAX_TOKENS:
                raise UserError(
                    f"prompt {prompt[:40]!r}... is {tokens} tokens; HunyuanImage takes at "
                    f"most {MAX_TOKENS}: shorten it"
                )
            glyphs = extract_glyph_text(prompt)
            if glyphs and len(self.glyph_tokenizer(glyphs).input_ids) > MAX_GLYPH_BYTES:
                raise UserError(
                    f"the quoted text of {prompt[:40]!r}... is over {MAX_GLYPH_BYTES} bytes, "
                    "what HunyuanImage spells: quote less"
                )

    def _embed(self, prompts: list[str]) -> dict:
        from diffusers import HunyuanImagePipeline

        pipe = self._pipe()
        embeds, mask, glyphs, glyph_mask = HunyuanImagePipeline.encode_prompt(
            pipe, list(prompts), pipe._execution_device, batch_size=len(prompts)
        )
        return {
            "embeds": embeds.cpu(),
            "mask": mask.cpu(),
            "glyphs": glyphs.cpu(),
            "glyph_mask": glyph_mask.cpu(),
        }

    def encode(
        self, prompts: list[str], negatives: list[str] | None, guided: bool, size: tuple[int, int]
    ) -> Conditioning:
        import torch

        negatives = negatives or [""] * len(prompts)
        self._check(list(prompts) + (list(negatives) if guided else []))
        with torch.no_grad():
            positive = self._embed(prompts)
            quotes = not torch.all(positive["glyphs"] == 0)
            guider = self.ocr_guider if quotes and self.ocr_guider is not None else self.guider
            added = {"positive": positive, "guider": guider, "runs": {}}
            if guided:
                added["negative"] = self._embed(negatives)
        return Conditioning(positive["embeds"], guided, added)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _guider_values(guider, where: str) -> None:
    """A folder's guider config is someone else's data: its numbers must be numbers."""
    config = guider.config
    for key in (
        "guidance_scale",
        "guidance_rescale",
        "adaptive_projected_guidance_scale",
        "adaptive_projected_guidance_rescale",
        "eta",
        "adaptive_projected_guidance_start_step",
        "adaptive_projected_guidance_momentum",
    ):
        value = config.get(key)
        if not _number(value) and not (key.endswith("momentum") and value is None):
            raise UserError(f"{where}: {key} must be a finite number, not {value!r}")
    if config.get("start", 0.0) != 0.0 or config.get("stop", 1.0) != 1.0:
        raise UserError(
            f"{where}: a guider that starts or stops part-way (start {config.get('start')!r}, "
            f"stop {config.get('stop')!r}) is not supported; pangu-draw guides every step"
        )


class HunyuanImage(TransformerFamily):
    name = "hunyuan-image"
    label = "HunyuanImage"
    lora_pipeline = None  # diffusers has no LoRA loader for it
    own_sigmas = True

    def recognise(self, index, config) -> bool:
        spec = index.get("transformer")
        return isinstance(spec, list) and spec[-1:] == ["HunyuanImageTransformer2DModel"]

    def defaults(self, index, config) -> dict:
        defaults = dict(DEFAULTS)
        scale = config("guider").get("guidance_scale")
        if config("transformer").get("guidance_embeds") is True:
            scale = DISTILLED_GUIDANCE  # the pipeline's distilled_guidance_scale
        if _number(scale) and scale >= 1:
            defaults["guidance_scale"] = float(scale)
        return defaults

    def guidance_distilled(self, network) -> bool:
        return bool(network.config.guidance_embeds)

    def text_stack(self, index, component, network, cache):
        encoder = expect(component("text_encoder"), ENCODERS, "text_encoder", self.label)
        tokenizer = expect(component("tokenizer"), TOKENIZERS, "tokenizer", self.label)
        glyph_encoder = expect(
            component("text_encoder_2"), GLYPH_ENCODERS, "text_encoder_2", self.label
        )
        glyph_tokenizer = expect(
            component("tokenizer_2"), GLYPH_TOKENIZERS, "tokenizer_2", self.label
        )
        guiders = {}
        for name in ("guider", "ocr_guider"):
            guider = component(name) if index.get(name) else None
            if guider is not None:
                expect(guider, GUIDERS, name, self.label)
                _guider_values(guider, f"{self.label} {name}")
            guiders[name] = guider
        return HunyuanText(tokenizer, encoder, glyph_tokenizer, glyph_encoder, **guiders)

    def native_size(self, network, factor: int) -> tuple[int, int]:
        return SAMPLE_SIZE * factor, SAMPLE_SIZE * factor

    def denoise(self, expert, z, t, sigma, cond, scale, controls):
        """The transformer at the scheduler's timestep ``t``, as ``HunyuanImagePipeline``
        calls it: the conditional and negative passes apart, combined by the guider."""
        import torch

        network, dtype = expert.network, expert.dtype
        device = device_of(network)
        x = self._network_input(z, cond).to(device, dtype)
        time = torch.full([z.shape[0]], t, device=device).to(dtype)
        guidance = end = None
        if network.config.guidance_embeds:
            guidance = torch.full([z.shape[0]], scale * 1000.0, device=device).to(dtype)
        if network.config.use_meanflow:  # the step's end: the next timestep, 0 at the last
            nxt = expert.next_sigma or 0.0
            at = expert.schedule.sigma_to_t(nxt) if nxt > 0 else 0.0
            end = torch.full([z.shape[0]], at, device=device).to(dtype)

        def call(inputs):
            glyphs = {}
            if "glyphs" in inputs:  # (the refiner's text has none)
                glyphs["encoder_hidden_states_2"] = inputs["glyphs"].to(device, dtype)
                glyphs["encoder_attention_mask_2"] = inputs["glyph_mask"].to(device)
            return network(
                hidden_states=x,
                timestep=time,
                timestep_r=end,
                encoder_hidden_states=inputs["embeds"].to(device, dtype),
                encoder_attention_mask=inputs["mask"].to(device),
                guidance=guidance,
                return_dict=False,
                **glyphs,
            )[0]

        out = call(cond.added["positive"])
        if cond.guided:
            negative = call(cond.added["negative"])
            out = _guided(cond, id(network), out, negative, self._guider_scale(cond, scale))
        return self._network_output(out).float().to(z.device)

    def _network_input(self, z, cond):
        return z

    def _network_output(self, out):
        return out

    def _guider_scale(self, cond, scale: float) -> float:
        """The guider's CFG scale: ``-g``."""
        return scale


def _guided(cond: Conditioning, run: int, positive, negative, scale: float):
    """The guider's combination at this expert's next step. A guider keeps state from step
    to step (its momentum, APG after its start step): each expert's run has its own copy,
    started at its first step. Without a guider in the folder: classic guidance."""
    from diffusers.guiders.adaptive_projected_guidance_mix import MomentumBuffer

    template = cond.added["guider"]
    if template is None:
        return negative + scale * (positive - negative)
    runs = cond.added["runs"]
    if run not in runs:
        guider = template.new()
        momentum = guider.adaptive_projected_guidance_momentum
        guider.momentum_buffer = None if momentum is None else MomentumBuffer(momentum)
        runs[run] = [guider, 0]
    guider, step = runs[run]
    runs[run][1] += 1
    guider.guidance_scale = scale
    guider.set_state(step=step, num_inference_steps=None, timestep=None)
    return guider.forward(positive, negative).pred


# ------------------------------------------------------------------------- the refiner

REFINER_DEFAULTS = {"steps": 4, "guidance_scale": 3.25}  # HunyuanImageRefinerPipeline's
REFINER_TOKENS = 256
REFINER_DROP = 36
PICTURE_NOISE = 0.25  # the noise level the refiner's pipeline gives its picture
_REFINER_TEMPLATE = (  # HunyuanImageRefinerPipeline's prompt_template_encode
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the image by detailing the "
    "color, shape, size, texture, quantity, text, spatial relationships of the objects and "
    "background:<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)


@dataclass
class RefinerText:
    """Qwen2.5-VL in the refiner's own template, as
    ``HunyuanImageRefinerPipeline.encode_prompt`` runs it. Its guider, where its folder has
    one, guides at its own scale (``-g`` is the refiner's distilled guidance value)."""

    tokenizer: object
    encoder: object
    guider: object | None

    def _embed(self, prompts: list[str]) -> dict:
        import functools
        from types import SimpleNamespace

        from diffusers import HunyuanImageRefinerPipeline

        device = device_of(self.encoder)
        pipe = SimpleNamespace(
            tokenizer=self.tokenizer,
            text_encoder=self.encoder,
            tokenizer_max_length=REFINER_TOKENS,
            prompt_template_encode=_REFINER_TEMPLATE,
            prompt_template_encode_start_idx=REFINER_DROP,
            _execution_device=device,
        )
        name = "_get_qwen_prompt_embeds"
        setattr(pipe, name, functools.partial(getattr(HunyuanImageRefinerPipeline, name), pipe))
        embeds, mask = HunyuanImageRefinerPipeline.encode_prompt(
            pipe, list(prompts), device, batch_size=len(prompts)
        )
        return {"embeds": embeds.cpu(), "mask": mask.cpu()}

    def encode(
        self, prompts: list[str], negatives: list[str] | None, guided: bool, size: tuple[int, int]
    ) -> Conditioning:
        import torch

        for prompt in prompts:
            tokens = len(self.tokenizer(_REFINER_TEMPLATE.format(prompt)).input_ids)
            if tokens - REFINER_DROP > REFINER_TOKENS:
                raise UserError(
                    f"prompt {prompt[:40]!r}... is {tokens - REFINER_DROP} tokens; the "
                    f"HunyuanImage refiner takes at most {REFINER_TOKENS}: shorten it"
                )
        guided = self.guider is not None  # its guider decides, not -g (distilled)
        with torch.no_grad():
            positive = self._embed(prompts)
            added = {"positive": positive, "guider": self.guider, "runs": {}}
            if guided:
                added["negative"] = self._embed(negatives or [""] * len(prompts))
        return Conditioning(positive["embeds"], guided, added)


class HunyuanImageRefiner(HunyuanImage):
    """HunyuanImage 2.1's refiner (``HunyuanImageRefinerPipeline``): the same MMDiT, guidance
    distilled, in its own latent space (a causal video VAE at 16x whose frame is doubled
    into 64 channels: :attr:`pangudraw.latents.LatentSpace.doubled`), drawing from noise
    with a picture's latents beside its own as extra channels.

    Given a picture (``--init-image``), it refines it as its pipeline does: the picture's
    latents noised to 0.25 are its condition and it draws all its steps from noise (4 by
    default; the strength does not apply). As the texture expert of a pair (or in a
    recipe) it takes over the canvas at the split, and its picture is the canvas's estimate
    there, noised to 0.25 with the loop's noise: the base's picture so far, through the
    bridge, instead of its decoded and re-encoded PNG. ``-g`` is its distilled guidance
    value (3.25 by default)."""

    name = "hunyuan-image-refiner"
    label = "HunyuanImage refiner"
    picture_condition = PICTURE_NOISE

    def recognise(self, index, config) -> bool:
        spec, vae = index.get("transformer"), index.get("vae")
        return (
            isinstance(spec, list)
            and spec[-1:] == ["HunyuanImageTransformer2DModel"]
            and isinstance(vae, list)
            and vae[-1:] == ["AutoencoderKLHunyuanImageRefiner"]
        )

    def defaults(self, index, config) -> dict:
        return dict(REFINER_DEFAULTS)

    def text_stack(self, index, component, network, cache):
        if not network.config.guidance_embeds:
            raise UserError(f"{self.label}: its transformer must be guidance-distilled")
        encoder = expect(component("text_encoder"), ENCODERS, "text_encoder", self.label)
        tokenizer = expect(component("tokenizer"), TOKENIZERS, "tokenizer", self.label)
        guider = component("guider") if index.get("guider") else None
        if guider is not None:
            expect(guider, GUIDERS, "guider", self.label)
            _guider_values(guider, f"{self.label} guider")
        return RefinerText(tokenizer, encoder, guider)

    def latent_channels(self, network) -> int:
        return network.config.in_channels // 2  # its latents, then the picture's

    def _network_input(self, z, cond):
        """Its latents beside the picture's, as one frame."""
        import torch

        return torch.cat([z, cond.extra], dim=1)[:, :, None]

    def _network_output(self, out):
        return out[:, :, 0]

    def _guider_scale(self, cond, scale: float) -> float:
        """Its folder's guider guides at its own scale (``-g`` is the distilled value)."""
        return cond.added["guider"].config.guidance_scale


FAMILY = HunyuanImage()
REFINER = HunyuanImageRefiner()
