"""The main job until the bundled models land: time-decoupled generation end to end.

The bundled (trained) models are not in the repository yet, so this builds two tiny
random-weight diffusers models that share a VAE, saves them as model folders, and runs
``pangu-draw generate`` with one as structure and the other as texture. The images show
the plumbing works (loading, splitting on the noise axis, sampling, PNG metadata); with
random weights they are not pictures.
"""

from pathlib import Path

from pangudraw.cli.main import main
from pangudraw.testing import tiny_sd

root = Path("demo")
for name, seed in (("structure", 0), ("texture", 1)):
    if not (root / name / "model_index.json").exists():
        tiny_sd(root / name, seed=seed, sample_size=32)
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
