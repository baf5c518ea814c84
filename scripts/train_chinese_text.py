"""Train the bundled Chinese rows for MiniLM and put them in the zoo (one command, CPU).

    .venv/bin/python scripts/train_chinese_text.py [--data data/emoji-google] [--steps 3000]

Needs the emoji dataset (``pangu-draw data emoji --style google --out data/emoji-google``).
``--cldr data/cldr/annotations`` adds CLDR's keyword lists: ``npm pack
cldr-annotations-full@48.2.0`` and extract ``package/annotations`` (Unicode licence).
``--unihan /usr/share/unicode`` adds Unihan's English glosses of the 3,755 common simplified
characters (Debian's ``unicode-data`` package, or unicode.org's Unihan.zip extracted;
Unicode licence). ``--from-bundled`` fine-tunes the bundled rows instead of starting from MiniLM's.
Resumable: run it again after an interruption (or ``--max-minutes``) and it continues from
``runs/minilm_zh``. When all steps are done, the rows, token list and resource record are
copied to ``src/pangudraw/zoo/models/minilm_zh`` and the zoo manifest gets their hash.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from pangudraw.cli.shared import quiet_libraries
from pangudraw.textenc import ZH_ADAPTER, ZH_FOLDER, ZH_ROWS, read_cjk_rows
from pangudraw.train.chinese import RowSettings, load_keyword_pairs, load_unihan_pairs, train
from pangudraw.zoo import write_manifest

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "emoji-google")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "minilm_zh")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-minutes", type=float, default=45.0)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the batches and noise draws (another seed measures the noise between "
        "training runs)",
    )
    parser.add_argument(
        "--cldr",
        type=Path,
        default=None,
        help="the annotations/ folder of npm's cldr-annotations-full: adds CLDR's keyword "
        "lists (English and Chinese bags of words) to the training pairs",
    )
    parser.add_argument(
        "--unihan",
        type=Path,
        default=None,
        help="a folder with Unicode's Unihan_Readings.txt and Unihan_OtherMappings.txt "
        "(.bz2 too): adds the English glosses of GB 2312's 3,755 common characters",
    )
    parser.add_argument(
        "--from-bundled", action="store_true", help="start from the bundled rows (fine-tune)"
    )
    parser.add_argument(
        "--generator-weight",
        type=float,
        default=10.0,
        help="weight of the generator loss (same noise prediction from Chinese and English) "
        "against the sentence loss",
    )
    parser.add_argument(
        "--draws",
        type=int,
        default=2,
        help="noisy versions of each image the generator loss draws from (fixed per run)",
    )
    parser.add_argument(
        "--adapter-rank",
        type=int,
        default=0,
        help="also train a low-rank change of MiniLM's linear layers, used only for text "
        "with a CJK character (0: rows only)",
    )
    parser.add_argument(
        "--attention-weight",
        type=float,
        default=0.0,
        help="weight of a loss on the generators' cross-attention outputs (Chinese against "
        "English token states, at recorded image tokens), applied to every batch, keyword "
        "bags and glosses too (0: off)",
    )
    args = parser.parse_args()
    quiet_libraries()
    keywords = load_keyword_pairs(args.cldr, args.data) if args.cldr else []
    glosses = load_unihan_pairs(args.unihan) if args.unihan else []
    init = read_cjk_rows(ZH_FOLDER) if args.from_bundled else None
    settings = RowSettings(
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        generator_weight=args.generator_weight,
        adapter_rank=args.adapter_rank,
        draws=args.draws,
        attention_weight=args.attention_weight,
    )
    record = train(args.data, args.out, settings, args.max_minutes, keywords, glosses, init)
    if record["step"] < record["steps"]:
        print(f"stopped at step {record['step']} of {record['steps']}; run again to continue")
        return
    ZH_FOLDER.mkdir(exist_ok=True)
    for name in (ZH_ROWS, "tokens.json"):
        shutil.copyfile(args.out / name, ZH_FOLDER / name)
    if args.adapter_rank:
        shutil.copyfile(args.out / ZH_ADAPTER, ZH_FOLDER / ZH_ADAPTER)
    else:
        (ZH_FOLDER / ZH_ADAPTER).unlink(missing_ok=True)
    (ZH_FOLDER / "resources.json").write_text(json.dumps(record, indent=2) + "\n")
    write_manifest()
    print(f"wrote {ZH_FOLDER}; write its card (README.md) from resources.json and the benchmark")


if __name__ == "__main__":
    main()
