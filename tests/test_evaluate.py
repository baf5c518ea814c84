import json
from pathlib import Path

import pytest
import torch

from pangudraw.controls import ControlTransform
from pangudraw.evaluate.control import colour_layout_error, edge_f1


def squares(offsets, size=32) -> torch.Tensor:
    images = torch.full((len(offsets), 3, size, size), 255, dtype=torch.uint8)
    for i, d in enumerate(offsets):
        images[i, :, 8 + d : 24 + d, 8 + d : 24 + d] = 30
    return images


def test_edge_f1_of_an_image_with_its_own_edges_is_one():
    images = squares([0, 2])
    edges = ControlTransform("canny")(images)
    assert torch.equal(edge_f1(images, edges), torch.ones(2))


def test_edge_f1_tolerates_shifts_up_to_the_tolerance_only():
    edges = ControlTransform("canny")(squares([0]))
    shifted = squares([1])
    assert edge_f1(shifted, edges, tolerance=1).item() == 1.0
    assert edge_f1(shifted, edges, tolerance=0).item() < 0.5
    blank = torch.full_like(shifted, 255)
    assert edge_f1(blank, edges).item() == 0.0
    assert edge_f1(blank, torch.zeros_like(edges)).item() == 1.0  # nothing on either side


def test_colour_layout_error_is_zero_for_the_image_itself_and_grows_with_change():
    images = squares([0, 0])
    layouts = ControlTransform("colour", cells=8)(images)
    assert colour_layout_error(images, layouts).max() < 1e-6
    inverted = 255 - images
    error = colour_layout_error(inverted, layouts)
    assert (error > 0.3).all() and (error <= 1).all()


def test_fid_with_a_custom_extractor_separates_real_from_corrupted():
    """Wrapper mechanics with a fixed random conv net (the trained emoji net is issue 6)."""
    from torch import nn

    from pangudraw.evaluate.fid import FeatureExtractor, fid

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
    )
    extractor = FeatureExtractor(net, 16, 32)
    g = torch.Generator().manual_seed(1)

    # "Real": smooth colour blobs; two independent draws of the same distribution.
    def blobs(n):
        base = torch.rand(n, 3, 4, 4, generator=g)
        return nn.functional.interpolate(base, size=(32, 32), mode="bilinear")

    real, other = blobs(200), blobs(200)
    # A random net's pooled features barely see pixel shuffling (mean colours survive),
    # which is why issue 6 trains the extractor; a colour shift it does see.
    darker = other * 0.3
    same, corrupted = fid(real, other, extractor), fid(real, darker, extractor)
    assert same >= 0 and corrupted > 10 * max(same, 1e-9)


# ---------------------------------------------------------------- the trained evaluator

HELD_OUT = Path(__file__).parent / "data" / "emoji_heldout"  # emoji it never trained on


def held_out_emoji() -> tuple[torch.Tensor, list[str]]:
    from pangudraw.evaluate.report import read_folder

    paths, images = read_folder(HELD_OUT)
    captions = json.loads((HELD_OUT / "captions.json").read_text())
    return images, [captions[p.name]["text"] for p in paths]


def shuffle_pixels(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    n, c, h, w = images.shape
    order = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))
    return images.flatten(2)[:, :, order].view(n, c, h, w)


def test_evaluator_features_separate_real_emoji_from_shuffled_pixels():
    from pangudraw.evaluate.features import load_evaluator
    from pangudraw.evaluate.fid import FeatureExtractor, fid

    images, _ = held_out_emoji()
    net = load_evaluator()
    extractor = FeatureExtractor(net, net.num_features, 64)
    first, second = images[:32].float() / 255, images[32:].float() / 255
    real_vs_real = fid(first, second, extractor)
    real_vs_shuffled = fid(first, shuffle_pixels(images[32:]).float() / 255, extractor)
    # Same colours, destroyed structure: only a feature net that learned shapes sees it.
    assert real_vs_shuffled > 5 * real_vs_real, (real_vs_real, real_vs_shuffled)


def test_caption_retrieval_on_unseen_emoji_is_far_above_chance():
    from pangudraw.evaluate.report import evaluate

    images, captions = held_out_emoji()
    report = evaluate(images, captions)
    assert report["retrieval_candidates"] == 64
    # chance: top-1 1/64, top-5 5/64
    assert report["retrieval_top5"] > 4 * 5 / 64, report
    assert report["retrieval_top1"] > 4 / 64, report
    shuffled = evaluate(shuffle_pixels(images), captions)
    assert shuffled["retrieval_top5"] < report["retrieval_top5"] / 2, shuffled


def test_eval_command_reports_every_metric(tmp_path, capsys):
    from click.testing import CliRunner
    from PIL import Image

    from pangudraw.cli.main import cli, main

    folder = tmp_path / "images"
    folder.mkdir()
    names = sorted(p.name for p in HELD_OUT.glob("*.png"))[:8]
    for name in names:
        Image.open(HELD_OUT / name).save(folder / name)
    prompts = tmp_path / "prompts.txt"
    captions = json.loads((HELD_OUT / "captions.json").read_text())
    prompts.write_text("\n".join(captions[n]["text"] for n in names) + "\n")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        cli,
        ["eval", str(folder), "--prompts", str(prompts), "--reference", str(HELD_OUT),
         "--edges-from", str(folder / names[0]), "--layout-from", str(folder / names[0]),
         "--json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "not Inception" in result.output
    report = json.loads(out.read_text())
    assert report["images"] == 8 and report["retrieval_candidates"] == 8
    assert report["fid_emoji_features"] >= 0
    assert 0 < report["edge_f1"] <= 1 and 0 <= report["colour_layout_error"] < 1
    prompts.write_text("one\ntwo\nthree\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        main(["eval", str(folder), "--prompts", str(prompts)])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "3 prompts for 8 images" in err and len(err.splitlines()) == 1


def test_the_bootstrap_interval_of_a_known_small_example():
    """[0, 0, 3] resampled: the mean is 3k/3 = k with k ~ Binomial(3, 1/3), so P(0) = 8/27,
    P(1) = 12/27, P(2) = 6/27, P(3) = 1/27: the central 95% runs from 0 to 3 (P(k <= 2) =
    26/27 < 0.975), the central 90% from 0 to 2 (26/27 >= 0.95)."""
    from pangudraw.evaluate.stats import bootstrap_mean

    wide = bootstrap_mean([0.0, 0.0, 3.0])
    assert (wide.mean, wide.lo, wide.hi, wide.n) == (1.0, 0.0, 3.0, 3)
    narrow = bootstrap_mean([0.0, 0.0, 3.0], level=0.9)
    assert (narrow.lo, narrow.hi) == (0.0, 2.0)
    same = bootstrap_mean([1.3] * 5)
    assert (same.mean, same.lo, same.hi) == (1.3, 1.3, 1.3)
    assert bootstrap_mean([0.85, 1.29, 1.05]) == bootstrap_mean([0.85, 1.29, 1.05])  # seeded


def test_curves_are_read_at_a_cost_and_where_they_reach_a_value():
    from pangudraw.evaluate.stats import first_reach, value_at

    costs, fid = [1.0, 2.0, 4.0], [100.0, 60.0, 40.0]
    assert value_at(costs, fid, 3.0) == 50.0 and value_at(costs, fid, 5.0) is None
    assert first_reach(costs, fid, 50.0) == 3.0 and first_reach(costs, fid, 30.0) is None
    assert first_reach(costs, fid, 120.0) == 1.0
