"""The user's choices: their names and pangu-draw's defaults, one home for each, importable
without torch (the CLI parses and checks before loading models).

The library's functions, the CLI, the web UI and recipes all read their defaults from
:data:`GENERATION` (a test checks that they agree); a model family's own pipeline defaults
(Flux.1's 28 steps at 3.5, PanGu-Draw v3's release settings) replace them for its models
(:func:`pangudraw.families.model_defaults`).
"""

from __future__ import annotations

from .errors import UserError

SAMPLER_NAMES = ("ddim", "euler", "euler_a", "dpmpp_2m", "unipc")  # keys of coop.SAMPLERS
NOISE_POLICIES = ("carry", "resample")
# How estimates move between latent spaces: decode-resize-encode, or a bundled translator
# where one was trained for the two spaces (translate.py). The default is what
# benchmarks/bench_bridges.py found (BENCHMARKS.md, "Learned bridges").
BRIDGE_MODES = ("exact", "learned")
DTYPES = ("float32", "bfloat16", "float16")  # denoisers' and text encoders' precision
OFFLOAD_MODES = ("none", "window", "sequential")  # experts in memory: offload.py
HANDOFFS = ("sigma", "release")  # on the noise level, or PanGu-Draw v3's one-step lag
ZOO_PREFIX = "zoo:"  # a bundled model by name: zoo:structure, zoo:controlnet_canny, ...
HUB_PREFIX = "hf:"  # a Hugging Face hub model, downloaded only when a user names one

GENERATION = {
    # 15 Euler steps: the cheapest setting whose FID and retrieval on the bundled pair
    # match 25 steps within the noise between seeds (benchmarks/bench_steps.py).
    "steps": 15,
    "sampler": "euler",
    "guidance_scale": 7.0,
    # PanGu-Draw v3: structure on t in [500, 1000), texture on [0, 500)
    "t_split": 500,
    "bridge": "learned",
    "noise": "carry",
    "handoff": "sigma",
    # starting from a picture: how much of the trajectory runs (A1111's denoising strength)
    "strength": 0.75,
    "inpaint_strength": 1.0,
}
"""pangu-draw's generation defaults, wherever a model's own pipeline has none."""

DEFAULT_STEPS = GENERATION["steps"]
DEFAULT_SAMPLER = GENERATION["sampler"]
DEFAULT_GUIDANCE = GENERATION["guidance_scale"]
DEFAULT_SPLIT = GENERATION["t_split"]
DEFAULT_BRIDGE = GENERATION["bridge"]


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """``value`` if it is one of ``choices``, else a one-line error naming them."""
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}; use one of {', '.join(choices)}")
    return value
