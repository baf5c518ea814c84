"""Pack what a lent GPU machine needs to train the zoo into .dev/ (carried by the device tool).

That machine has PyTorch but no internet, no diffusers and no text-encoder package, and a
call carries at most 64 MiB. So: the diffusers wheel; both emoji datasets as their
precomputed pixel caches (no image files); and all-MiniLM-L6-v2 in float16 with the
word-embedding rows that no caption or prompt uses set to zero (it compresses to a third).
The trimmed encoder is hash-checked on arrival, and reference embeddings of real captions,
computed here with the verified float32 original, bound the difference it makes.

    .venv/bin/python scripts/device/pack.py     # then scripts/device/zoo_gpu.sh there
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT / ".dev"
STYLES = ("google", "twitter")
GPU_STAGES = ("structure", "texture", "full", "generator_b", "controlnet_canny",
              "controlnet_colour")  # fmt: skip
EXTRA_PROMPTS = [
    "red apple", "grinning face", "red heart", "dog face", "cat face", "banana", "pizza",
    "smiling face with sunglasses", "sun", "star", "rocket", "tree", "flower", "fish",
    "blue heart", "green apple", "face with tears of joy", "thumbs up", "fire", "rainbow",
]  # fmt: skip


def captions(style: str) -> list[str]:
    rows = (ROOT / f"data/emoji-{style}/metadata.jsonl").read_text().splitlines()
    return [json.loads(r)["text"] for r in rows if r.strip()]


def trimmed_minilm(texts: list[str], folder: Path) -> None:
    from pangudraw.families.sd import SDText
    from pangudraw.textenc import load_minilm, minilm_folder, sha256

    tokenizer, encoder = load_minilm()
    used = set(tokenizer.all_special_ids)
    for text in texts:
        used.update(tokenizer(text, truncation=True).input_ids)
    keep = torch.zeros(encoder.config.vocab_size, dtype=torch.bool)
    keep[sorted(used)] = True
    reference = SDText(tokenizer, encoder).encode(texts[:64], None, False, (0, 0)).embeds
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    state["embeddings.word_embeddings.weight"][~keep] = 0
    folder.mkdir(parents=True)
    save_file({k: v.half().contiguous() for k, v in state.items()}, folder / "model.safetensors")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):  # fmt: skip
        shutil.copy(minilm_folder() / name, folder / name)
    (folder / "SHA256").write_text(sha256(folder / "model.safetensors") + "\n")
    save_file({"embeds": reference.contiguous()}, folder / "reference.safetensors")
    (folder / "reference.json").write_text(json.dumps(texts[:64]))
    print(f"MiniLM: kept {int(keep.sum())} of {len(keep)} vocabulary rows")


def main() -> None:
    from pangudraw.train.config import load_config
    from pangudraw.train.stagedata import load_pool

    shutil.rmtree(DEV, ignore_errors=True)
    stage = DEV / "stage"
    for name in GPU_STAGES:
        config = load_config(ROOT / f"zoo/configs/{name}.toml")
        key = load_pool(config).report["cache_key"]  # computes the pool if it is missing
        source = Path(config.data)
        dest = stage / "data" / source.name
        (dest / ".cache").mkdir(parents=True, exist_ok=True)
        for item in ("metadata.jsonl", "dataset.json", f".cache/pool-{key}.json",
                     f".cache/pixels-{key}.safetensors"):  # fmt: skip
            shutil.copy(source / item, dest / item)
    texts = sorted({t for style in STYLES for t in captions(style)}) + EXTRA_PROMPTS + [""]
    trimmed_minilm(texts, stage / "minilm")
    subprocess.run(
        ["tar", "-C", str(stage), "-cJf", str(DEV / "pack.tar.xz"), "."],
        check=True,
        env={"XZ_OPT": "-6 -T2", "PATH": "/usr/bin:/bin"},
    )
    shutil.rmtree(stage)
    import diffusers

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(DEV / "whl"),
            f"diffusers=={diffusers.__version__}",
        ],  # fmt: skip
        check=True,
    )
    total = sum(f.stat().st_size for f in DEV.rglob("*") if f.is_file())
    print(f".dev: {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
