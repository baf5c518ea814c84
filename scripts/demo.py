"""The main job until the bundled models land: time-decoupled and Coop generation.

The bundled (trained) models are not in the repository yet, so this builds tiny
random-weight diffusers models, saves them as model folders in demo/, and runs

1. ``pangu-draw generate`` with one as structure and another as texture (shared VAE);
2. ``pangu-draw coop examples/demo_recipe.toml``: a layout expert in another latent space
   (8 channels at 1/4, 32 px) and a texture expert (4 channels at 1/2, 64 px) fused in one
   loop on a 96x64 canvas.

The images show the plumbing works (loading, splitting on the noise axis, bridging between
latent spaces, PNG metadata); with random weights they are coloured noise, not pictures.
"""

from pathlib import Path

from pangudraw.cli.main import main
from pangudraw.testing import tiny_sd

root = Path("demo")
builds = {
    "structure": dict(seed=0, sample_size=32),
    "texture": dict(seed=1, sample_size=32),
    "layout": dict(seed=2, vae_seed=7, latent_channels=8, vae_blocks=3, sample_size=8),
}
for name, options in builds.items():
    if not (root / name / "model_index.json").exists():
        tiny_sd(root / name, **options)
print("untrained demo models in demo/ (bundled trained models are not available yet)")
main(
    [
        "generate",
        "a red apple",
        "--structure",
        str(root / "structure"),
        "--texture",
        str(root / "texture"),
        "--split",
        "500",
        "--steps",
        "25",
        "--seed",
        "0",
        "--num-images",
        "4",
        "-o",
        str(root / "apple.png"),
    ]
)
main(["coop", "examples/demo_recipe.toml", "-o", str(root / "coop.png")])
