"""``pangu-draw eval``: the offline metrics on a folder of generated images.

Design: docs/design.md, section 8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..files import read_text
from ..imageio import read_rgb, resize_pixels

FID_NOTE = "FID (emoji features, domain-trained, not Inception)"


def read_folder(folder: Path, size: int = 64) -> tuple[list[Path], torch.Tensor]:
    """The PNGs of ``folder`` (sorted; contact sheets ``*-grid.png`` skipped) as
    (N, 3, size, size) uint8."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder of images")
    paths = sorted(p for p in folder.glob("*.png") if not p.stem.endswith("-grid"))
    if not paths:
        raise UserError(f"{folder} has no .png images")
    arrays = [read_rgb(path, size) for path in paths]
    return paths, torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def read_prompts(paths: list[Path], prompts_file: Path | None) -> list[str]:
    """One prompt per image: from the file (one line per image in sorted order, or one line
    for all), else from each PNG's pangu-draw record."""
    if prompts_file is not None:
        text = read_text(prompts_file, "prompts file")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if len(lines) == 1:
            return lines * len(paths)
        if len(lines) != len(paths):
            raise UserError(
                f"{prompts_file} has {len(lines)} prompts for {len(paths)} images; "
                "give one line per image (sorted by file name) or one line for all"
            )
        return lines
    from ..imageio import read_record

    prompts = []
    for path in paths:
        try:
            prompt = read_record(path).get("prompt")
        except UserError:
            prompt = None
        if not isinstance(prompt, str):
            raise UserError(f"{path} carries no pangu-draw prompt; give --prompts FILE")
        prompts.append(prompt)
    return prompts


def evaluate(
    images: torch.Tensor,
    prompts: list[str] | None = None,
    reference: torch.Tensor | None = None,
    edges_from: torch.Tensor | None = None,
    layout_from: torch.Tensor | None = None,
    evaluator=None,
) -> dict:
    """Metrics for (N, 3, 64, 64) uint8 ``images``; each part runs when its input is given.

    Retrieval: each image's prompt among the set's distinct prompts (top-1 / top-5).
    FID: against ``reference`` images, in the evaluator's feature space.
    Control: edge F1 against the Canny edges of ``edges_from`` (1, 3, H, W uint8), colour
    layout error against the 8x8 layout of ``layout_from``.
    """
    from .features import caption_embeddings, load_evaluator

    net = evaluator or load_evaluator()
    report: dict = {"images": len(images)}
    if prompts is not None:
        distinct = sorted(set(prompts))
        truth = torch.tensor([distinct.index(p) for p in prompts])
        accuracy = retrieval(net, images, caption_embeddings(distinct), truth)
        report |= {
            "retrieval_candidates": len(distinct),
            "retrieval_top1": accuracy[1],
            "retrieval_top5": accuracy[5],
            "retrieval_chance_top1": 1 / len(distinct),
        }
    if reference is not None:
        from .fid import FeatureExtractor, fid

        extractor = FeatureExtractor(net, net.num_features, 64)
        report["fid_emoji_features"] = fid(reference.float() / 255, images.float() / 255, extractor)
        report["fid_reference_images"] = len(reference)
    if edges_from is not None or layout_from is not None:
        from ..controls import ControlTransform
        from .control import colour_layout_error, edge_f1

        n, size = len(images), images.shape[-2:]
        if edges_from is not None:
            edges = ControlTransform("canny")(resize_pixels(edges_from, size))
            report["edge_f1"] = float(edge_f1(images, edges.expand(n, -1, -1, -1)).mean())
        if layout_from is not None:
            layout = ControlTransform("colour")(resize_pixels(layout_from, size))
            error = colour_layout_error(images, layout.expand(n, -1, -1, -1))
            report["colour_layout_error"] = float(error.mean())
    return report


def retrieval(net, images: torch.Tensor, captions: torch.Tensor, truth: torch.Tensor) -> dict:
    from .features import retrieval_accuracy

    return retrieval_accuracy(net, images.float() / 255, captions, truth)


def format_report(report: dict) -> str:
    names = {
        "images": "images",
        "retrieval_top1": "caption retrieval top-1",
        "retrieval_top5": "caption retrieval top-5",
        "retrieval_candidates": "  among distinct prompts",
        "retrieval_chance_top1": "  chance top-1",
        "fid_emoji_features": FID_NOTE,
        "fid_reference_images": "  reference images",
        "edge_f1": "edge F1 (Canny, 1 px tolerance)",
        "colour_layout_error": "colour-layout error (8x8 cells, 0-1)",
    }
    lines = []
    for key, value in report.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{names.get(key, key):<48} {shown}")
    return "\n".join(lines)
