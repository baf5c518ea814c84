"""Training configuration: one TOML file per stage, read into a dataclass.

stage = "texture"             # vae | structure | texture | full | controlnet
data = "../data/emoji-google" # imagefolder or webdataset shards; relative to this file
output = "../runs/texture"
resolution = 64
min_size = 64                 # images whose short side is smaller are not used
t_split = 500                 # structure: t in [t_split, T); texture: [0, t_split)
# t_range = [0, 1000]         # an explicit range instead of the stage's
text_encoder = "minilm"       # or a diffusers pipeline folder (tokenizer/, text_encoder/)
vae = "../runs/vae/model"     # a trained AutoencoderKL folder; omit for pixel space
pixel_unshuffle = 1           # pixel space only: fold k x k patches into channels
seed = 0
batch_size = 32
grad_accum = 1
lr = 2e-4
max_steps = 2000
ema_decay = 0.999
cfg_dropout = 0.1             # captions replaced by the empty caption
grad_clip = 1.0
kl_weight = 1e-4              # vae stage
checkpoint_every = 200
keep_checkpoints = 2
sample_every = 0              # 0: a sample grid at the end only
snapshot_every = 0            # > 0: also export the EMA model every N steps to snapshots/
sample_prompts = ["red apple", "grinning face"]
mixed_precision = "no"        # no | fp16 | bf16 (GPU only)
export_dtype = "float32"      # float32 | float16
base = "../runs/texture/model"  # controlnet stage: the frozen expert it controls
control = { kind = "canny", low = 100, high = 200 }  # or { kind = "colour", cells = 8 }

[unet]                        # diffusers UNet2DConditionModel arguments
block_out_channels = [64, 128]
[vae_model]                   # diffusers AutoencoderKL arguments (vae stage)
latent_channels = 4
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..options import DEFAULT_SPLIT
from ..tomlconf import TableReader, apply_overrides, read_toml

STAGES = ("vae", "structure", "texture", "full", "controlnet")
NUM_TRAIN_TIMESTEPS = 1000
SCHEDULE = {
    "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "timestep_spacing": "trailing",
    "prediction_type": "epsilon",
}


@dataclass
class TrainConfig:
    stage: str
    data: str
    output: str
    resolution: int = 64
    min_size: int = 0
    t_split: int = DEFAULT_SPLIT
    t_range: tuple[int, int] | None = None
    text_encoder: str = "minilm"
    vae: str | None = None
    pixel_unshuffle: int = 1
    seed: int = 0
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 2e-4
    max_steps: int = 1000
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1
    grad_clip: float = 1.0
    kl_weight: float = 1e-4
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    sample_every: int = 0
    snapshot_every: int = 0
    sample_prompts: list[str] = field(default_factory=lambda: ["red apple", "grinning face"])
    mixed_precision: str = "no"
    export_dtype: str = "float32"
    unet: dict = field(default_factory=dict)
    vae_model: dict = field(default_factory=dict)
    base: str | None = None
    control: dict = field(default_factory=dict)
    config_dir: str | None = field(default=None, compare=False, repr=False)  # paths' base

    @property
    def timestep_range(self) -> tuple[int, int]:
        """[lo, hi) of the training timesteps this stage draws from."""
        if self.t_range is not None:
            return self.t_range
        return {
            "structure": (self.t_split, NUM_TRAIN_TIMESTEPS),
            "texture": (0, self.t_split),
            "full": (0, NUM_TRAIN_TIMESTEPS),
            "controlnet": (0, NUM_TRAIN_TIMESTEPS),
        }[self.stage]

    def to_dict(self) -> dict:
        """The config as saved beside an exported model: bundled models as ``zoo:NAME`` and
        other paths relative to the config file's folder, so no machine path is stored."""
        data = asdict(self)
        folder = data.pop("config_dir")
        for key in PATH_KEYS:
            data[key] = portable_path(data[key], folder)
        return data


INT_KEYS = (
    "resolution",
    "min_size",
    "t_split",
    "pixel_unshuffle",
    "seed",
    "batch_size",
    "grad_accum",
    "max_steps",
    "checkpoint_every",
    "keep_checkpoints",
    "sample_every",
    "snapshot_every",
)
FLOAT_KEYS = ("lr", "ema_decay", "cfg_dropout", "grad_clip", "kl_weight")


def parse_config(data: dict, source: str, base: Path) -> TrainConfig:
    r = TableReader(source, data, "", {f for f in TrainConfig.__dataclass_fields__})
    stage = r.get("stage", str, required=True)
    if stage not in STAGES:
        r.fail("stage", f"expected one of {', '.join(STAGES)}, got {stage!r}")

    def path(key: str, required: bool = False) -> str | None:
        value = r.get(key, str, required=required)
        if value is None or (key == "text_encoder" and value == "minilm"):
            return value
        if value.startswith("zoo:"):
            from ..loading.paths import resolve_model

            return str(resolve_model(value))
        return str((base / value).resolve())

    values = {k: r.get(k, int) for k in INT_KEYS} | {k: r.get(k, float) for k in FLOAT_KEYS}
    values = {k: v for k, v in values.items() if v is not None}
    for key, (lo, hi, open_lo, open_hi) in RANGES.items():
        value = values.get(key)
        if value is None:
            continue
        if value < lo or value > hi or (open_lo and value == lo) or (open_hi and value == hi):
            interval = f"{'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
            r.fail(key, f"expected a value in {interval}, got {value}")
    for key, cls in (("unet", "UNet2DConditionModel"), ("vae_model", "AutoencoderKL")):
        _check_architecture(r, key, cls)
    t_range = r.get("t_range", list)
    if t_range is not None:
        if not (
            len(t_range) == 2
            and all(isinstance(t, int) for t in t_range)
            and 0 <= t_range[0] < t_range[1] <= NUM_TRAIN_TIMESTEPS
        ):
            r.fail(
                "t_range",
                f"expected [lo, hi] integers with 0 <= lo < hi <= "
                f"{NUM_TRAIN_TIMESTEPS}, got {t_range!r}",
            )
        t_range = tuple(t_range)
    t_split = values.get("t_split", DEFAULT_SPLIT)
    if not 0 < t_split < NUM_TRAIN_TIMESTEPS:
        r.fail("t_split", f"expected 0 < t_split < {NUM_TRAIN_TIMESTEPS}, got {t_split}")
    prompts = r.get("sample_prompts", list)
    if prompts is not None and not all(isinstance(p, str) for p in prompts):
        r.fail("sample_prompts", "expected a list of strings")
    for key, allowed in (
        ("mixed_precision", ("no", "fp16", "bf16")),
        ("export_dtype", ("float32", "float16")),
    ):
        value = r.get(key, str)
        if value is not None and value not in allowed:
            r.fail(key, f"expected one of {', '.join(allowed)}, got {value!r}")
        if value is not None:
            values[key] = value
    config = TrainConfig(
        config_dir=str(base),
        stage=stage,
        data=path("data", required=True),
        output=path("output", required=True),
        t_range=t_range,
        text_encoder=path("text_encoder") or "minilm",
        vae=path("vae"),
        base=path("base"),
        control=r.get("control", dict, {}),
        unet=r.get("unet", dict, {}),
        vae_model=r.get("vae_model", dict, {}),
        **values,
        **({"sample_prompts": prompts} if prompts is not None else {}),
    )
    if stage == "controlnet":
        if config.base is None:
            r.fail("base", "missing; the controlnet stage needs the expert folder it controls")
        from ..controls import ControlTransform

        ControlTransform.from_dict(config.control, f"{source}: control")
    return config


# Ranges of the numeric fields: (lo, hi, lo excluded, hi excluded).
RANGES = {
    "resolution": (1, 8192, False, False),
    "min_size": (0, 1 << 20, False, False),
    "pixel_unshuffle": (1, 64, False, False),
    "seed": (0, 2**32 - 1, False, False),
    "batch_size": (1, 1 << 16, False, False),
    "grad_accum": (1, 1 << 10, False, False),
    "max_steps": (1, 10**8, False, False),
    "checkpoint_every": (1, 10**8, False, False),
    "keep_checkpoints": (1, 1000, False, False),
    "sample_every": (0, 10**8, False, False),
    "snapshot_every": (0, 10**8, False, False),
    "lr": (0, 1, True, False),
    "ema_decay": (0, 1, False, True),
    "cfg_dropout": (0, 1, False, False),
    "grad_clip": (0, 1e6, True, False),
    "kl_weight": (0, 1e6, False, False),
}
# Set by the stage itself (from the data, the latent space and the text encoder).
DERIVED = {"sample_size", "in_channels", "out_channels", "cross_attention_dim"}


def _check_architecture(reader: TableReader, key: str, class_name: str) -> None:
    """Every key of an architecture table must be an argument of the diffusers class."""
    import inspect

    import diffusers

    table = reader.get(key, dict, {})
    known = set(inspect.signature(getattr(diffusers, class_name).__init__).parameters) - {"self"}
    for name in sorted(table):
        if name in DERIVED:
            reader.fail(f"{key}.{name}", "is set by the stage; remove it")
        if name not in known:
            reader.fail(f"{key}.{name}", f"unknown key; not an argument of diffusers' {class_name}")


PATH_KEYS = ("data", "output", "text_encoder", "vae", "base")


def portable_path(path: str | None, folder: str | None) -> str | None:
    """``zoo:NAME`` for a bundled model, else ``path`` relative to ``folder`` (if given)."""
    from .. import zoo

    if path is None or path == "minilm" or not Path(path).is_absolute():
        return path
    return zoo.name_of(path) or (os.path.relpath(path, folder) if folder else path)


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a config file; ``overrides`` are ``key=value`` strings as for recipes' --set."""
    path = Path(path)
    data = apply_overrides(read_toml(path, "training config"), list(overrides), str(path))
    return parse_config(data, str(path), path.parent.resolve())
