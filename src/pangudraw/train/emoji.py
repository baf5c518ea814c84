"""Build an imagefolder of emoji from the npm packages emoji-datasource-google / -twitter."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from PIL import Image

from ..errors import UserError
from ..files import check_output_folder
from ..imageio import to_rgb

VERSION = "16.0.0"
INTEGRITY = {  # npm's sha512 of each pinned package tarball
    "google": "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/"
    "jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
    "twitter": "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/"
    "dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
}
LICENCE = {"google": "Apache-2.0 (Noto Emoji)", "twitter": "CC-BY-4.0 (Twemoji)"}
TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}


def fetch(style: str, folder: Path) -> Path:
    """``npm pack`` the pinned package into ``folder`` and check its integrity."""
    if shutil.which("npm") is None:
        raise UserError("npm is missing; install Node.js and npm to build the emoji dataset")
    package = f"emoji-datasource-{style}@{VERSION}"
    result = subprocess.run(
        ["npm", "pack", package, "--json", "--pack-destination", str(folder)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise UserError(f"npm pack {package} failed: {result.stderr.strip().splitlines()[-1]}")
    tarball = folder / json.loads(result.stdout)[0]["filename"]
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != INTEGRITY[style]:
        raise UserError(f"{tarball.name} failed its integrity check ({digest[:24]}...)")
    return tarball


def chinese_names() -> dict[str, str]:
    import emoji

    emoji.config.load_language("zh")
    return {
        char: data.get("zh", "").strip(":").replace("_", " ")
        for char, data in emoji.EMOJI_DATA.items()
    }


def caption(name: str, short_names: list[str]) -> str:
    words = name.lower()
    extra = [s.replace("_", " ") for s in short_names if s.replace("_", " ") != words]
    return ", ".join([words, *extra])


def held_out(file: str) -> bool:
    """The emoji the bundled evaluator and the learned bridges never trained on: one in ten,
    by a hash of the image's name (its code points; both styles hold out the same emoji)."""
    return int(hashlib.sha256(Path(file).stem.encode()).hexdigest(), 16) % 10 == 0


def build_emoji(style: str, out: Path) -> dict:
    """Write ``out/images/*.png`` (RGBA composited on white) and ``out/metadata.jsonl``.

    The dataset is built in a temporary folder beside ``out`` and renamed into place when
    whole; ``out`` must not exist yet or be empty.
    """
    if style not in INTEGRITY:
        raise UserError(f"unknown emoji style {style!r}; use google or twitter")
    out = Path(out)
    check_output_folder(out, "dataset folder")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"dataset folder {out} is not empty; give a new folder")
    try:  # root passes the access check in places it cannot write (/sys, /proc)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise UserError(f"dataset folder {out} cannot be created: {exc.strerror}") from exc
    try:
        info = _build(style, staging)
        if out.is_dir():
            out.rmdir()
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def _build(style: str, out: Path) -> dict:
    zh = chinese_names()
    with tempfile.TemporaryDirectory() as tmp:
        tarball = fetch(style, Path(tmp))
        with tarfile.open(tarball) as tar:
            table = json.load(tar.extractfile("package/emoji.json"))
            images = {
                Path(m.name).name: m
                for m in tar.getmembers()
                if m.name.startswith(f"package/img/{style}/64/")
            }
            (out / "images").mkdir(parents=True, exist_ok=True)
            rows = []
            for entry in table:
                variants = [(entry, entry["name"])]
                for tone, variant in (entry.get("skin_variations") or {}).items():
                    tone_names = [TONES.get(t, t) for t in tone.split("-")]
                    variants.append((variant, f"{entry['name']}: {', '.join(tone_names)}"))
                for item, name in variants:
                    member = images.get(item["image"])
                    if not item.get(f"has_img_{style}") or member is None:
                        continue
                    with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:
                        to_rgb(image).save(out / "images" / item["image"])
                    char = "".join(chr(int(c, 16)) for c in item["unified"].split("-"))
                    rows.append(
                        {
                            "file_name": f"images/{item['image']}",
                            "text": caption(name, entry.get("short_names", [])),
                            "name": name.lower(),
                            "category": entry.get("category"),
                            "subcategory": entry.get("subcategory"),
                            "zh": zh.get(char, ""),
                        }
                    )
    (out / "metadata.jsonl").write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    )
    info = {
        "style": style,
        "package": f"emoji-datasource-{style}@{VERSION}",
        "licence": LICENCE[style],
        "images": len(rows),
    }
    (out / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
