import pytest
import torch

from pangudraw.controls import ControlTransform
from pangudraw.errors import UserError


def square(size=32, lo=8, hi=24) -> torch.Tensor:
    image = torch.full((1, 3, size, size), 255, dtype=torch.uint8)
    image[:, :, lo:hi, lo:hi] = torch.tensor([200, 20, 20], dtype=torch.uint8).view(1, 3, 1, 1)
    return image


def test_canny_finds_the_square_outline_and_nothing_else():
    edges = ControlTransform("canny", 100, 200)(square())[0, 0]
    assert edges.max() == 1 and edges.min() == 0
    inside, outside = edges[10:22, 10:22], torch.cat([edges[:5].flatten(), edges[-5:].flatten()])
    assert inside.sum() == 0 and outside.sum() == 0
    assert edges[6:26, 6:26].sum() >= 4 * 14  # the outline


def test_colour_layout_is_the_cell_mean():
    layout = ControlTransform("colour", cells=2)(square(32, 0, 16))
    assert layout.shape == (1, 3, 32, 32)
    torch.testing.assert_close(layout[0, :, 0, 0], torch.tensor([200, 20, 20]) / 255)
    torch.testing.assert_close(layout[0, :, 31, 31], torch.ones(3))


def test_save_load_and_unknown_kind(tmp_path):
    transform = ControlTransform("colour", cells=4)
    transform.save(tmp_path)
    assert ControlTransform.load(tmp_path) == transform
    assert ControlTransform.load(tmp_path / "nothing") is None
    with pytest.raises(UserError, match="unknown control kind 'depth'"):
        ControlTransform("depth")


def test_experts_load_a_controlnet_once_and_check_it_for_each_expert(monkeypatch):
    """Coop runs in one process (the UI) share loaded ControlNets like the experts."""
    from pangudraw.loading import models as module
    from pangudraw.loading.models import ModelCache as Experts

    calls = []
    real = module.load_controlnet
    monkeypatch.setattr(
        module, "load_controlnet", lambda *a, **k: calls.append(a[0]) or real(*a, **k)
    )
    pool = Experts()
    full = pool.get("full")
    first = pool.controlnet("zoo:controlnet_canny", full)
    assert pool.controlnet("zoo:controlnet_canny", full) is first and len(calls) == 1
    with pytest.raises(UserError, match="another base"):
        pool.controlnet("zoo:controlnet_canny", pool.get("generator_b"))
