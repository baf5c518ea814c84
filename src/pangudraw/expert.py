"""An expert: a loaded denoiser with its latent space, text stack and training schedule, on
the shared noise axis.

Every expert exposes one sampler-facing call, :meth:`Expert.predict` (``y, sigma, cond ->
x0``); :meth:`Expert.denoise` is the same on the plain ``x = x0 + sigma n`` view. What its
family does differently (text encoders, how the network is called, packing, sizes) is
its :class:`pangudraw.families.Family`'s; the expert itself asks no family question. An
``Expert`` holds only loaded models: everything that belongs to one generation (prompt,
guidance, window, weight) lives in the caller's locals or in
:class:`pangudraw.coop.Participant`, so one loaded expert can serve concurrent requests.

Loading lives in :mod:`pangudraw.loading`. Design: docs/design.md, section 2.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from diffusers import ControlNetModel

from .errors import UserError
from .families import Conditioning, Family
from .latents import LatentSpace
from .limits import check_true_cfg
from .noise import Schedule, SigmaWindow, to_x0, unit
from .offload import Residence


@dataclass
class Control:
    """A ControlNet with its control image, for one expert in one generation.

    ``image`` is (1 or B, 3, H, W) in [0, 1] at the expert's working size in pixels.
    """

    model: ControlNetModel
    image: torch.Tensor
    scale: float = 1.0
    window: SigmaWindow = SigmaWindow()

    def __post_init__(self):
        self.window = SigmaWindow(*self.window)  # a plain (lo, hi) pair is accepted too

    def active(self, sigma: float) -> bool:
        return self.window.contains(sigma)


@dataclass
class Expert:
    """A loaded denoiser on the shared noise axis.

    Attributes:
        name: a label for messages and metadata (usually the model folder).
        network: the diffusers denoiser (a UNet or a transformer).
        space: its latent space.
        text: its tokenizer(s) and text encoder(s): ``encode(prompts, negatives, guided,
            size) -> Conditioning``.
        schedule: the training noise schedule (maps sigma to the network's timestep).
        prediction_type: what the network outputs (epsilon, v_prediction, sample, flow).
        scheduler_config: the training scheduler config; samplers are built from it.
        family: its model family (``pangudraw.families``).
        sample_size: native resolution in pixels, (height, width).
        dtype: the network's parameter dtype (read once: diffusers' ``.dtype`` walks
            every parameter on each call).
        inpainting: a dedicated inpainting model (a 9-channel UNet, FLUX.1 Fill: latents,
            mask and masked picture), which generates only from a picture and a mask.
        residence: where the network waits between its windows (``--offload window``,
            :mod:`pangudraw.offload`); None: always in working memory.
        low_noise: a model that is a time-decoupled pair on its own (Wan2.2's folder):
            the expert that takes over below ``boundary`` (a training timestep), sharing
            this one's text stack and latent space; None for one model.
        next_sigma: the noise level this expert's next step lands on, set by the loop
            before each prediction (MeanFlow models take the step's end as an input).
    """

    name: str
    network: torch.nn.Module
    space: LatentSpace
    text: object
    schedule: Schedule
    prediction_type: str
    scheduler_config: dict = field(repr=False)
    family: Family = field(repr=False)
    sample_size: tuple[int, int] = (512, 512)
    dtype: torch.dtype = torch.float32
    inpainting: bool = False
    residence: Residence | None = field(default=None, repr=False)
    low_noise: Expert | None = field(default=None, repr=False)
    boundary: float | None = None
    next_sigma: float | None = field(default=None, repr=False)

    @property
    def resident(self) -> bool:
        """Whether the network is in working memory (always, without offloading)."""
        return self.residence is None or self.residence.attached

    def attach(self) -> None:
        """Bring a released network back into working memory (a no-op when it is)."""
        if self.residence is not None:
            self.residence.attach(self.network)

    def release(self) -> None:
        """Let the network leave working memory until it is needed (with offloading)."""
        if self.residence is not None:
            self.residence.release(self.network)

    def text_modules(self) -> list[torch.nn.Module]:
        """The text stack's networks."""
        found = []
        for value in vars(self.text).values():
            for module in value if isinstance(value, list) else [value]:
                if isinstance(module, torch.nn.Module):
                    found.append(module)
        return found

    def to(self, device: str | torch.device | None, dtype: torch.dtype | None = None) -> Expert:
        """Move the network, the text encoders and the VAE to ``device`` (in place), and
        cast the network and text encoders to ``dtype`` when given. The VAE stays float32
        (SDXL's overflows in float16; diffusers upcasts it to decode). The loop keeps its
        own tensors on the CPU in float32; each call moves and casts its inputs to the
        network's device and dtype and its output back."""
        self.network.to(device=device, dtype=dtype)
        if dtype is not None:  # what the model keeps in float32 (Wan's norms, embedders)
            keep = getattr(self.network, "_keep_in_fp32_modules", None) or ()
            for name, param in self.network.named_parameters():
                if any(k in name.split(".") for k in keep):
                    param.data = param.data.float()
        for module in self.text_modules():
            module.to(device=device, dtype=dtype)
        if self.space.vae is not None:
            self.space.vae.to(device=device)
        self.dtype = dtype or self.dtype
        if self.low_noise is not None:
            self.low_noise.to(device, dtype)
        return self

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (what its family's pipeline accepts)."""
        return self.family.size_multiple(self.network, self.space.factor)

    @property
    def feature_width(self) -> int:
        """The network's first feature width (for memory estimates)."""
        return self.family.feature_width(self.network)

    def encode_prompt(
        self,
        prompts: list[str],
        negatives: list[str] | None = None,
        guidance_scale: float = 1.0,
        size: tuple[int, int] | None = None,
        styles: tuple[tuple[str, float], ...] = (),
        true_cfg: float = 1.0,
    ) -> Conditioning:
        """Encode prompts (and negatives when guidance is on) for this expert.

        ``size`` is the (height, width) in pixels that SDXL's time ids announce.
        ``styles`` are (name, scale) branches, for PanGu-Draw v3 models only.
        ``true_cfg`` > 1: true classifier-free guidance at that scale, against the
        negative prompts (empty ones when none are given), for the families that take it.
        """
        with self._text_on_device():
            return self._encode(prompts, negatives, guidance_scale, size, styles, true_cfg)

    @contextmanager
    def _text_on_device(self):
        """With window offloading on a GPU the text encoders wait in host memory: they
        move to the GPU for the call."""
        away = self.residence is not None and self.residence.device.type != "cpu"
        if away:
            for module in self.text_modules():
                module.to(self.residence.device)
        try:
            yield
        finally:
            if away:
                for module in self.text_modules():
                    module.to("cpu")

    def _encode(self, prompts, negatives, guidance_scale, size, styles, true_cfg):
        guided, size = guidance_scale > 1.0, size or self.sample_size
        if true_cfg != 1.0:
            if not self.family.true_cfg:
                raise UserError(
                    f"true CFG is for Flux models; {self.name} has classifier-free guidance "
                    "at its guidance scale already"
                )
            check_true_cfg(true_cfg)
            cond = self.text.encode(prompts, negatives, True, size)
            return replace(cond, cfg_scale=true_cfg)
        if self.family.guidance_distilled(self.network):
            guided = False  # the guidance value goes to the distilled embedding
        if styles:
            if not self.family.styles:
                raise UserError(f"styles are a PanGu-Draw v3 feature; {self.name} has none")
            return self.text.encode(prompts, negatives, guided, size, styles)
        return self.text.encode(prompts, negatives, guided, size)

    def denoise(
        self,
        x: torch.Tensor,
        sigma: float,
        cond: Conditioning,
        guidance_scale: float = 1.0,
        controls: list[Control] = (),
    ) -> torch.Tensor:
        """Denoised estimate for ``x = x0 + sigma * n`` (finite sigma); see :meth:`predict`."""
        return self.predict(unit(sigma) * x, sigma, cond, guidance_scale, controls)

    @torch.no_grad()
    def predict(
        self,
        y: torch.Tensor,
        sigma: float,
        cond: Conditioning,
        guidance_scale: float = 1.0,
        controls: list[Control] = (),
        t: float | None = None,
    ) -> torch.Tensor:
        """Denoised estimate from the unit view ``y = unit(sigma) x0 + spread(sigma) n``.

        Args:
            y: (B, C, h, w) noisy latents in this expert's space (:mod:`pangudraw.noise`).
            sigma: noise level on the shared axis, possibly infinite (a flow trajectory's
                start). Beyond a VP schedule's last level the network sees that level.
            cond: this expert's encoded prompts; guided ones get classifier-free guidance.
            guidance_scale: classifier-free guidance scale (guidance-distilled families:
                the value their network takes).
            controls: ControlNets whose residuals are added (those active at ``sigma``).
            t: the network's timestep as the sampler gives it (families with
                ``grid_timesteps``, on the canvas); by default the schedule's for ``sigma``.

        Returns:
            x0: (B, C, h, w), float32.
        """
        self.attach()
        level = min(sigma, self.schedule.sigma_max)
        alpha, s = self.schedule.coefficients(level)
        z = self.schedule.input_scale(level) * y
        t = self.schedule.sigma_to_t(level) if t is None else t
        out = self.family.denoise(self, z, t, sigma, cond, guidance_scale, controls)
        return to_x0(out, z, alpha, s, self.prediction_type)
