"""Names of user choices, importable without torch (the CLI parses before loading models)."""

SAMPLER_NAMES = ("ddim", "euler", "euler_a", "dpmpp_2m", "unipc")  # keys of coop.SAMPLERS
NOISE_POLICIES = ("carry", "resample")
