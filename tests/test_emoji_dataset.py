"""The emoji dataset builder, on a fake package (tests never download)."""

import io
import json
import tarfile

import pytest
from PIL import Image

from pangudraw.errors import UserError
from pangudraw.train import emoji


def fake_package(path, style="google"):
    entries = [
        {
            "name": "RED APPLE",
            "unified": "1F34E",
            "image": "1f34e.png",
            "short_names": ["apple"],
            "category": "Food & Drink",
            "subcategory": "food-fruit",
            f"has_img_{style}": True,
        },
        {
            "name": "WAVING HAND SIGN",
            "unified": "1F44B",
            "image": "1f44b.png",
            "short_names": ["wave"],
            "category": "People & Body",
            "subcategory": "hand-fingers-open",
            f"has_img_{style}": True,
            "skin_variations": {
                "1F3FB": {
                    "unified": "1F44B-1F3FB",
                    "image": "1f44b-1f3fb.png",
                    f"has_img_{style}": True,
                }
            },
        },
        {
            "name": "NO IMAGE",
            "unified": "1F600",
            "image": "1f600.png",
            "short_names": [],
            f"has_img_{style}": False,
        },
    ]
    with tarfile.open(path, "w:gz") as tar:

        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("package/emoji.json", json.dumps(entries).encode())
        for image in ("1f34e.png", "1f44b.png", "1f44b-1f3fb.png"):
            buffer = io.BytesIO()
            Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(buffer, format="PNG")  # transparent
            add(f"package/img/{style}/64/{image}", buffer.getvalue())
    return path


def test_build_writes_an_imagefolder_with_captions_and_extra_columns(tmp_path, monkeypatch):
    monkeypatch.setattr(emoji, "fetch", lambda style, folder: fake_package(folder / "p.tgz"))
    info = emoji.build_emoji("google", tmp_path / "out")
    assert info["images"] == 3 and info["licence"].startswith("Apache-2.0")
    rows = [json.loads(line) for line in (tmp_path / "out/metadata.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == [
        "red apple, apple",
        "waving hand sign, wave",
        "waving hand sign: light skin tone, wave",
    ]
    assert rows[0]["zh"] == "红苹果" and rows[0]["subcategory"] == "food-fruit"
    with Image.open(tmp_path / "out" / rows[0]["file_name"]) as image:
        assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)  # on white


def test_missing_npm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(emoji.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="npm is missing"):
        emoji.fetch("google", tmp_path)


def test_tampered_package_fails_its_integrity_check(tmp_path, monkeypatch):
    class Done:
        returncode, stderr = 0, ""
        stdout = json.dumps([{"filename": "p.tgz"}])

    fake_package(tmp_path / "p.tgz")
    monkeypatch.setattr(emoji.subprocess, "run", lambda *a, **k: Done())
    monkeypatch.setattr(emoji.shutil, "which", lambda name: "/usr/bin/npm")
    with pytest.raises(UserError, match="failed its integrity check"):
        emoji.fetch("google", tmp_path)
