"""Names of user choices, importable without torch (the CLI parses before loading models)."""

SAMPLER_NAMES = ("ddim", "euler", "euler_a", "dpmpp_2m", "unipc")  # keys of coop.SAMPLERS
NOISE_POLICIES = ("carry", "resample")
DEFAULT_SPLIT = 500  # PanGu-Draw v3: structure on t in [500, 1000), texture on [0, 500)
