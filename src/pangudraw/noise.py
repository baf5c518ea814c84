"""One noise axis for every expert.

All experts meet on the variance-exploding axis of k-diffusion: a noisy input at
noise level ``sigma`` is ``x = x0 + sigma * n`` with ``n ~ N(0, I)``. Each
expert's own network sees ``z = alpha(sigma) * x0 + s(sigma) * n = alpha * x``:

- discrete VP schedules (DDPM family): ``sigma(t) = sqrt((1 - abar_t) / abar_t)``,
  ``alpha = 1 / sqrt(1 + sigma^2)``, ``s = sigma / sqrt(1 + sigma^2)``;
- rectified flow: ``z = (1 - u) x0 + u n`` so ``sigma = u / (1 - u)``,
  ``alpha = 1 / (1 + sigma)``, ``s = sigma / (1 + sigma)``.

Prediction types (epsilon, v, sample, flow velocity) are converted to and from
the denoised estimate ``x0`` here and nowhere else.

The loop hands noisy samples around in the *unit view* ``y = x / sqrt(1 + sigma^2)
= unit(sigma) x0 + spread(sigma) n``, which is what a VP network sees and stays finite
where ``x`` does not: a rectified-flow trajectory starts at ``u = 1``, which is
``sigma = inf`` on this axis, where ``y = n``.

Design: docs/design.md, section 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample", "flow")


class SigmaWindow(NamedTuple):
    """The noise levels [lo, hi) on the shared axis where an expert or a ControlNet acts
    (an open top, ``hi = inf``, includes sigma = inf: a flow trajectory's start)."""

    lo: float = 0.0
    hi: float = math.inf

    def contains(self, sigma: float) -> bool:
        return self.lo <= sigma < self.hi or sigma == self.hi == math.inf


def unit(sigma: float) -> float:
    """The factor ``1 / sqrt(1 + sigma^2)`` of ``x0`` in the unit view (0 at sigma = inf)."""
    return 0.0 if math.isinf(sigma) else 1.0 / math.sqrt(1.0 + sigma * sigma)


def spread(sigma: float) -> float:
    """The factor ``sigma / sqrt(1 + sigma^2)`` of the noise in the unit view (1 at inf)."""
    return 1.0 if math.isinf(sigma) else sigma / math.sqrt(1.0 + sigma * sigma)


def noisy(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """The unit view of ``x0 + sigma * noise``."""
    if sigma == 0:
        return x0
    return unit(sigma) * x0 + spread(sigma) * noise


def noise_of(y: torch.Tensor, x0: torch.Tensor, sigma: float) -> torch.Tensor:
    """The noise ``n`` with ``y = noisy(x0, n, sigma)`` (sigma > 0)."""
    return (y - unit(sigma) * x0) / spread(sigma)


def to_x0(
    output: torch.Tensor, z: torch.Tensor, alpha: float, s: float, prediction_type: str
) -> torch.Tensor:
    """Denoised estimate from a network output.

    Args:
        output: network output, same shape as ``z``.
        z: the network's input ``alpha * x0 + s * n``.
        alpha, s: signal and noise coefficients at this noise level.
        prediction_type: one of ``PREDICTION_TYPES``.
    """
    if prediction_type == "epsilon":
        return (z - s * output) / alpha
    if prediction_type == "v_prediction":  # v = alpha n - s x0, with alpha^2 + s^2 = 1
        return alpha * z - s * output
    if prediction_type == "sample":
        return output
    if prediction_type == "flow":  # u = n - x0, with alpha + s = 1
        return z - s * output
    raise ValueError(f"unknown prediction type {prediction_type!r}; use one of {PREDICTION_TYPES}")


def from_x0(
    x0: torch.Tensor, z: torch.Tensor, alpha: float, s: float, prediction_type: str
) -> torch.Tensor:
    """Inverse of :func:`to_x0`: the network output that would give ``x0``."""
    if prediction_type == "epsilon":
        return (z - alpha * x0) / s
    if prediction_type == "v_prediction":
        return (alpha * z - x0) / s
    if prediction_type == "sample":
        return x0
    if prediction_type == "flow":
        return (z - x0) / s
    raise ValueError(f"unknown prediction type {prediction_type!r}; use one of {PREDICTION_TYPES}")


@dataclass(frozen=True)
class DiscreteVPSchedule:
    """A DDPM-family training schedule on ``num_train_timesteps`` integer steps.

    ``t <-> sigma`` interpolates ``log sigma`` linearly in ``t`` (as k-diffusion and
    diffusers' ``_sigma_to_t`` do), so integer timesteps and Karras-style
    fractional ones both round-trip exactly.
    """

    alphas_cumprod: torch.Tensor  # (T,) float64
    kind: str = field(default="vp", init=False)

    @classmethod
    def from_config(cls, config: dict) -> DiscreteVPSchedule:
        """Build from a diffusers scheduler config (beta_schedule, beta_start, ...)."""
        from diffusers import DDPMScheduler

        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
        kwargs = {k: config[k] for k in keys if config.get(k) is not None}
        if config.get("rescale_betas_zero_snr"):
            raise ValueError("zero-terminal-SNR schedules (sigma_max = inf) are not supported yet")
        return cls(DDPMScheduler(**kwargs).alphas_cumprod.to(torch.float64))

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @property
    def log_sigmas(self) -> torch.Tensor:
        return 0.5 * torch.log((1 - self.alphas_cumprod) / self.alphas_cumprod)

    @property
    def sigma_min(self) -> float:
        return float(self.log_sigmas[0].exp())

    @property
    def sigma_max(self) -> float:
        return float(self.log_sigmas[-1].exp())

    def t_to_sigma(self, t: float) -> float:
        """Noise level at (possibly fractional) training timestep ``t`` in [0, T-1]."""
        if not 0 <= t <= self.num_train_timesteps - 1:
            raise ValueError(f"timestep {t} outside [0, {self.num_train_timesteps - 1}]")
        lo = min(int(math.floor(t)), self.num_train_timesteps - 2)
        w = t - lo
        log_sigmas = self.log_sigmas
        return math.exp((1 - w) * float(log_sigmas[lo]) + w * float(log_sigmas[lo + 1]))

    def sigma_to_t(self, sigma: float) -> float:
        """Fractional training timestep whose noise level is ``sigma`` (clamped to the table)."""
        log_sigmas = self.log_sigmas
        log_sigma = math.log(sigma) if sigma > 0 else float("-inf")
        lo = int(torch.searchsorted(log_sigmas, torch.tensor(log_sigma, dtype=torch.float64)))
        lo = min(max(lo - 1, 0), self.num_train_timesteps - 2)
        w = (log_sigma - float(log_sigmas[lo])) / float(log_sigmas[lo + 1] - log_sigmas[lo])
        return lo + min(max(w, 0.0), 1.0)

    def coefficients(self, sigma: float) -> tuple[float, float]:
        """``(alpha, s)`` with ``z = alpha * x0 + s * n`` at noise level ``sigma``."""
        norm = math.sqrt(1.0 + sigma * sigma)
        return 1.0 / norm, sigma / norm

    def input_scale(self, sigma: float) -> float:
        """The network input is the unit view itself: ``z = y``."""
        return 1.0


@dataclass(frozen=True)
class RectifiedFlowSchedule:
    """Rectified flow ``z = (1 - u) x0 + u n`` with model time ``t = u * num_train_timesteps``."""

    num_train_timesteps: int = 1000
    kind: str = field(default="flow", init=False)
    sigma_min: float = 0.0
    sigma_max: float = float("inf")

    def t_to_sigma(self, t: float) -> float:
        u = t / self.num_train_timesteps
        if not 0 <= u <= 1:
            raise ValueError(f"flow time {t} outside [0, {self.num_train_timesteps}]")
        return flow_sigma(u)

    def sigma_to_t(self, sigma: float) -> float:
        return self.num_train_timesteps * flow_time(sigma)

    def coefficients(self, sigma: float) -> tuple[float, float]:
        u = flow_time(sigma)
        return 1.0 - u, u

    def input_scale(self, sigma: float) -> float:
        """``z = (1 - u) x0 + u n = y * sqrt(1 + sigma^2) / (1 + sigma)`` (1 at sigma = inf)."""
        return 1.0 if math.isinf(sigma) else math.sqrt(1.0 + sigma * sigma) / (1.0 + sigma)


def flow_sigma(u: float) -> float:
    """The shared-axis noise level of flow time ``u`` in [0, 1] (inf at u = 1)."""
    return math.inf if u >= 1 else u / (1.0 - u)


def flow_time(sigma: float) -> float:
    """Flow time ``u = sigma / (1 + sigma)`` (1 at sigma = inf)."""
    return 1.0 if math.isinf(sigma) else sigma / (1.0 + sigma)


Schedule = DiscreteVPSchedule | RectifiedFlowSchedule
