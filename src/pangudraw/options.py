"""Names of user choices, importable without torch (the CLI parses before loading models)."""

SAMPLER_NAMES = ("ddim", "euler", "euler_a", "dpmpp_2m", "unipc")  # keys of coop.SAMPLERS
NOISE_POLICIES = ("carry", "resample")
# How estimates move between latent spaces: decode-resize-encode, or a bundled translator
# where one was trained for the two spaces (translate.py). The default is what
# benchmarks/bench_bridges.py found (BENCHMARKS.md, "Learned bridges").
BRIDGE_MODES = ("exact", "learned")
DEFAULT_BRIDGE = "learned"
DEFAULT_SPLIT = 500  # PanGu-Draw v3: structure on t in [500, 1000), texture on [0, 500)
ZOO_PREFIX = "zoo:"  # a bundled model by name: zoo:structure, zoo:controlnet_canny, ...
DTYPES = ("float32", "bfloat16", "float16")  # denoisers' and text encoders' precision
HUB_PREFIX = "hf:"  # a Hugging Face hub model, downloaded only when a user names one
# The default sampler settings of `generate` and the UI: the cheapest setting whose FID and
# retrieval on the bundled pair match 25 Euler steps within the noise between seeds
# (benchmarks/bench_steps.py); 25 was the default before.
DEFAULT_SAMPLER = "euler"
DEFAULT_STEPS = 15
