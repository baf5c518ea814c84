"""Experts in memory one window at a time (``offload.py``): the same image with and without
offloading, which experts are resident at each step, the weights' round trip."""

from __future__ import annotations

import pytest
import torch

from equality import run_cli
from pangudraw.expert import Expert
from pangudraw.loading.models import ModelCache, load_expert
from pangudraw.offload import Residence
from pangudraw.pipelines import generate


def pair_run(offload: str, **kwargs):
    models = ModelCache(offload=offload)
    structure, texture = models.get("structure"), models.get("texture")
    steps = []
    out = generate(
        structure,
        texture,
        "red heart",
        num_inference_steps=8,
        seed=4,
        num_images=2,
        callback=steps.append,
        **kwargs,
    )
    return out.images, steps, (structure, texture)


@pytest.mark.parametrize("offload", ["window", "sequential"])
def test_a_pair_gives_the_same_image_with_offloading(offload):
    plain, _, _ = pair_run("none")
    images, _, _ = pair_run(offload)
    assert torch.equal(plain, images)


def test_each_expert_is_resident_only_while_its_window_is_open():
    _, steps, (structure, texture) = pair_run("window")
    assert steps and not structure.resident and not texture.resident  # released after
    for step in steps:
        assert step.resident == step.active, (step.index, step.sigma)
    assert {tuple(s.active) for s in steps} == {(0,), (1,)}  # both windows were met
    _, steps, _ = pair_run("none")
    assert all(step.resident == [0, 1] for step in steps)


def test_a_flux_expert_from_a_picture_is_the_same_with_offloading(models, tmp_path):
    from PIL import Image

    from pangudraw.editing import EditSpec

    Image.new("RGB", (32, 32), (30, 120, 200)).save(tmp_path / "in.png")
    edit = EditSpec(str(tmp_path / "in.png"), 0.7)
    kwargs = {"num_inference_steps": 4, "seed": 1, "edit": edit}
    plain = generate(load_expert(models["flux_dev"]), None, "a", **kwargs).images
    windowed = ModelCache(offload="window").get(models["flux_dev"])
    assert not windowed.resident
    assert torch.equal(plain, generate(windowed, None, "a", **kwargs).images)


class Tied(torch.nn.Module):
    """Tied weights, a channels-last convolution and a non-persistent buffer."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 3)
        self.b = torch.nn.Linear(3, 3)
        self.b.weight = self.a.weight
        self.conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
        self.register_buffer("scale", torch.tensor([2.0]), persistent=False)


def test_released_weights_come_back_as_they_were():
    torch.manual_seed(0)
    net = Tied()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    home = Residence(torch.device("cpu"))
    home.release(net)
    assert net.a.weight.is_meta and net.scale.is_meta and not home.attached
    home.attach(net)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    assert net.b.weight is net.a.weight and torch.equal(net.scale, torch.tensor([2.0]))
    assert net.conv.weight.is_contiguous(memory_format=torch.channels_last)
    home.release(net)
    home.attach(net)  # the file is written once and mapped again
    assert torch.equal(net.conv.weight, before["conv.weight"])


def test_an_unknown_offload_mode_is_refused():
    from pangudraw.errors import UserError

    with pytest.raises(UserError, match="offload"):
        ModelCache(offload="disk")


def test_an_expert_without_offloading_is_always_resident():
    assert Expert.resident.fget(type("E", (), {"residence": None})())


def test_the_cli_and_a_recipe_offload_and_write_the_same_png(tmp_path, capsys):
    from pangudraw.imageio import read_record

    common = ["generate", "red heart", "--steps", "4", "--seed", "2"]
    assert run_cli([*common, "-o", tmp_path / "a.png"], capsys)[0] == 0
    assert run_cli([*common, "--offload", "window", "-o", tmp_path / "b.png"], capsys)[0] == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'prompt = "red heart"\nsteps = 4\noffload = "window"\n'
        '[[experts]]\nmodel = "zoo:structure"\nwindow = { t = [500, 1000] }\n'
        '[[experts]]\nmodel = "zoo:texture"\nwindow = { t = [0, 500] }\n'
    )
    assert run_cli(["coop", recipe, "-o", tmp_path / "c.png"], capsys)[0] == 0
    assert (
        run_cli(["coop", "--from-png", tmp_path / "c.png", "-o", tmp_path / "d.png"], capsys)[0]
        == 0
    )
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "d.png").read_bytes()
    assert "offload" not in read_record(tmp_path / "c.png")["recipe"]  # not the image's
    recipe.write_text(recipe.read_text().replace('"window"', '"disk"'))
    code, err = run_cli(["coop", recipe, "-o", tmp_path / "e.png"], capsys)
    assert code == 2 and "offload" in err and err.count("\n") == 1


def test_the_ui_offloads_one_request_at_a_time(capsys):
    code, err = run_cli(["ui", "--offload", "window", "--concurrency", "2"], capsys)
    assert code == 2 and "--concurrency 1" in err and err.count("\n") == 1
