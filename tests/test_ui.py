"""The web UI through gradio_client: concurrency, equality with the CLI, limits, refusals,
live previews, Stop, PNG info; and the port check of ``pangu-draw ui``."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from pangudraw.cli.main import cli  # noqa: E402
from pangudraw.imageio import read_record  # noqa: E402

STEPS = 6  # short runs: what is tested is the plumbing, not the pictures

TWO_SPACES = """
prompt = "grinning face"
seed = 4
steps = 6
guidance = 5.0
[canvas]
width = 64
height = 64
expert = "a"
[[experts]]
name = "a"
model = "zoo:full"
weight = 0.5
[[experts]]
name = "b"
model = "zoo:generator_b"
weight = 0.5
"""


@pytest.fixture
def server(ui_server):
    return ui_server


@pytest.fixture
def client(server):
    return Client(server[0], verbose=False)


def generate_args(seed: int, steps: int = STEPS, prompt: str = "red apple", **changes):
    args = {
        "prompts": prompt,
        "negative": "",
        "structure": "structure",
        "texture": "texture",
        "split": 500,
        "steps": steps,
        "guidance": 7.0,
        "true_cfg": 1.0,
        "sampler": "euler",
        "seed_mode": "fixed",
        "seed": seed,
        "width": 64,
        "height": 64,
        "num_images": 1,
        "preview": True,
    }
    args.update(changes)
    return list(args.values())


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def is_image(value) -> bool:
    """An image output: a file path (gr.skip() arrives as an update dict)."""
    return isinstance(value, str) and Path(value).is_file()


def saved(outputs: Path) -> set[str]:
    return {p.name for p in outputs.glob("*.png")}


def test_concurrent_requests_equal_the_cli(server, tmp_path):
    url, outputs, _ = server
    clients = [Client(url, verbose=False) for _ in range(8)]
    seeds = list(range(200, 208))
    jobs = [c.submit(*generate_args(s), api_name="/generate") for c, s in zip(clients, seeds)]
    results = [job.result(timeout=600) for job in jobs]
    for seed, (gallery, _, status) in zip(seeds, results):
        assert f"seeds {seed}..{seed}" in status
        [item] = gallery
        ui_image = item["image"]
        png = tmp_path / f"cli-{seed}.png"
        cli.main(
            ["generate", "red apple", "--seed", str(seed), "--steps", str(STEPS), "-o", str(png)],
            standalone_mode=False,
        )
        np.testing.assert_array_equal(pixels(ui_image), pixels(png))
        ui_record, cli_record = read_record(Path(ui_image)), read_record(png)
        assert ui_record == cli_record
    assert len(saved(outputs)) >= 8  # every result kept, with its parameters


def test_previews_arrive_before_the_final_image(client):
    job = client.submit(*generate_args(11, steps=8), api_name="/generate")
    job.result(timeout=600)
    outputs = job.outputs()
    final = next(i for i, out in enumerate(outputs) if isinstance(out[0], list))
    previews = [i for i, out in enumerate(outputs) if is_image(out[1])]
    assert previews and max(previews) < final, outputs
    assert final == len(outputs) - 1


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": 51}, "Value 51 is greater than maximum value 50"),  # the slider's bound
        ({"num_images": 5}, "Value 5 is greater than maximum value 4"),
        ({"true_cfg": 3.0}, "true CFG is for Flux models"),
        ({"prompts": "a\nb\nc", "num_images": 2}, "number of images 6 is over"),
    ],
)
def test_a_request_over_a_limit_is_refused_and_nothing_saved(server, client, changes, message):
    outputs = server[1]
    before = saved(outputs)
    args = generate_args(1, **{k: v for k, v in changes.items() if k != "steps"})
    if "steps" in changes:
        args[5] = changes["steps"]
    with pytest.raises(AppError) as caught:
        client.predict(*args, api_name="/generate")
    assert message in str(caught.value)
    assert saved(outputs) == before


def test_a_size_over_the_limit_is_refused(server, client):
    """The dropdown offers nothing over --max-side; a request naming more is refused."""
    with pytest.raises(AppError):
        client.predict(*generate_args(1, width=4096), api_name="/generate")


@pytest.mark.parametrize("model", ["/etc", "../texture", "zoo:texture", "vae_a"])
def test_a_model_outside_the_served_folders_is_refused(server, client, model):
    with pytest.raises(AppError):
        client.predict(*generate_args(1, structure=model), api_name="/generate")


@pytest.mark.parametrize(
    "model, message",
    [
        ("/etc", "is outside the folder of the outputs folder"),
        ("../../texture", "is outside the folder of the outputs folder"),
        ("zoo:vae_a", "is not served here"),
    ],
)
def test_a_recipe_naming_other_models_is_refused(server, client, model, message):
    outputs = server[1]
    before = saved(outputs)
    text = TWO_SPACES.replace('"zoo:full"', f'"{model}"')
    with pytest.raises(AppError) as caught:
        client.predict(text, False, api_name="/coop")
    assert message in str(caught.value)
    assert saved(outputs) == before


def test_coop_two_latent_spaces_equals_the_cli(server, client, tmp_path):
    image, _, status = client.predict(TWO_SPACES, True, api_name="/coop")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(TWO_SPACES)
    png = tmp_path / "coop.png"
    cli.main(["coop", str(recipe), "-o", str(png)], standalone_mode=False)
    np.testing.assert_array_equal(pixels(image), pixels(png))
    assert "seed 4" in status


def test_the_form_builds_a_recipe_the_coop_tab_runs(server, client):
    url, outputs, _ = server
    slot = ["full", "", 0.5, 0, 1000, 5.0, None, "(none)", None, True, 1.0, "native"]
    slot_b = ["generator_b", "", 0.5, 0, 1000, 5.0, None, "(none)", None, True, 1.0, "48x32"]
    common = ["grinning face", "", 4, STEPS, "euler", "carry", 64, 64, 1]
    text = client.predict(*common, *slot, *slot_b, *slot, *slot, api_name="/build_recipe")
    assert 'model = "zoo:generator_b"' in text and "size = [32, 48]" in text
    image, *_ = client.predict(text, False, api_name="/coop")
    assert pixels(image).shape == (64, 64, 3)


def test_png_info_reads_a_generated_png(server, client):
    outputs = server[1]
    gallery, *_ = client.predict(*generate_args(5), api_name="/generate")
    parameters, record = client.predict(handle_file(gallery[0]["image"]), api_name="/png_info")
    assert parameters.startswith("red apple\n")
    assert record["seed"] == 5 and record["structure"] == "zoo:structure"
    not_ours = outputs / "inputs" / "plain.png"
    Image.new("RGB", (8, 8)).save(not_ours)
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(not_ours)), api_name="/png_info")
    assert "holds no pangu-draw record" in str(caught.value)


def test_stop_ends_a_run_cleanly(server, client):
    outputs = server[1]
    before = saved(outputs)
    job = client.submit(*generate_args(9, steps=50), api_name="/generate")
    deadline = time.monotonic() + 120
    while not any(is_image(o[1]) for o in job.outputs()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    client.predict(api_name="/stop")
    with pytest.raises(AppError) as caught:
        job.result(timeout=120)
    assert "stopped" in str(caught.value)
    assert saved(outputs) == before
    # the server goes on serving
    gallery, *_ = client.predict(*generate_args(9), api_name="/generate")
    assert gallery


@pytest.mark.slow
def test_the_ui_refuses_a_port_in_use(server):
    port = server[2]
    result = subprocess.run(
        [sys.executable, "-m", "pangudraw.cli.main", "ui", "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr


EXAMPLES = Path(__file__).parents[1] / "examples"


def test_the_form_keeps_uploaded_masks_and_controls_beside_the_results(server, client, tmp_path):
    outputs = server[1]
    mask = tmp_path / "left.png"
    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255
    Image.fromarray(left).save(mask)
    drawn = {"background": None, "layers": [], "composite": handle_file(str(mask))}
    control = handle_file(str(EXAMPLES / "grinning.png"))
    slot = ["full", "", 0.5, 0, 1000, 5.0, drawn, "controlnet_canny", control, True, 1.0, "native"]
    slot_b = ["generator_b", "", 0.5, 0, 1000, 5.0, None, "(none)", None, True, 1.0, "native"]
    common = ["grinning face", "", 4, STEPS, "euler", "carry", 64, 64, 1]
    text = client.predict(*common, *slot, *slot_b, *slot, *slot, api_name="/build_recipe")
    assert "window" not in text  # the whole trajectory is the default
    late = slot_b[:4] + [500] + slot_b[5:]
    windowed = client.predict(*common, *slot, *late, *slot, *slot, api_name="/build_recipe")
    assert "window = { t = [0.0, 500.0] }" in windowed
    names = re.findall(r'"(inputs/[0-9a-f]{16}\.png)"', text)
    assert len(names) == 2 and re.search(r'^mask = "inputs/', text, re.M)
    assert 'source = "inputs/' in text
    for name in names:
        assert (outputs / name).is_file()
    image, _, status = client.predict(text, False, api_name="/coop")
    png = outputs / status.split(": ")[1]
    # the PNG's recipe names its inputs relative to itself: --from-png makes it again
    again = tmp_path / "again.png"
    cli.main(["coop", "--from-png", str(png), "-o", str(again)], standalone_mode=False)
    np.testing.assert_array_equal(pixels(png), pixels(again))


def test_a_coop_png_sent_to_the_coop_tab_gives_its_recipe(server, tmp_path):
    from pangudraw.recipes import parse_recipe
    from pangudraw.tomlconf import parse_toml
    from pangudraw.ui.app import App
    from pangudraw.ui.served import Served

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(TWO_SPACES)
    png = tmp_path / "coop.png"
    cli.main(["coop", str(recipe), "-o", str(png)], standalone_mode=False)
    record = read_record(png)
    text, _ = App(Served.find(tmp_path)).to_coop(record)
    table = parse_toml(text, "recipe", "sent")
    assert parse_recipe(table, "sent", tmp_path) == parse_recipe(record["recipe"], "r", tmp_path)


def test_a_chosen_model_brings_its_own_steps_and_guidance(models, tmp_path):
    """Picking a Flux.1 model in the Generate tab sets FluxPipeline's steps and guidance
    (dev 28 / 3.5, schnell 4); the bundled models bring pangu-draw's (15 / 7)."""
    from pangudraw.ui.app import NONE, App
    from pangudraw.ui.served import Served

    root = models["flux_dev"].parent
    app = App(Served.find(tmp_path, [root]))
    assert app.model_defaults(f"{root.name}/flux_dev", NONE) == (28, 3.5)
    assert app.model_defaults("structure", f"{root.name}/flux_schnell") == (4, 3.5)
    assert app.model_defaults("structure", "texture") == (15, 7.0)
    skipped = app.model_defaults("not served", NONE)
    assert all(isinstance(v, dict) and v.get("__type__") == "update" for v in skipped)


def test_the_model_defaults_event_is_wired(client):
    assert list(client.predict("structure", "texture", api_name="/model_defaults")) == [15, 7.0]


def edit_args(editor, prompt="grinning face", strength=1.0, margins=(0, 0, 0, 0), **changes):
    args = {
        "editor": editor,
        "prompts": prompt,
        "negative": "",
        "structure": "structure",
        "texture": "texture",
        "strength": strength,
        "blur": 0,
        "left": margins[0],
        "top": margins[1],
        "right": margins[2],
        "bottom": margins[3],
        "steps": STEPS,
        "guidance": 7.0,
        "sampler": "euler",
        "seed_mode": "fixed",
        "seed": 9,
        "preview": False,
    }
    args.update(changes)
    return list(args.values())


def test_the_edit_tab_inpaints_a_drawn_mask_as_the_cli_does(server, client, tmp_path):
    """The picture is the editor's background, the mask what was drawn on its layer; both
    are kept by content in the outputs folder and the PNG names them, so the CLI with the
    PNG's settings makes the same image."""
    outputs = server[1]
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[16:48, 8:40] = (255, 255, 255, 255)  # the stroke
    Image.fromarray(layer).save(tmp_path / "layer.png")
    heart = handle_file(str(EXAMPLES / "heart.png"))
    editor = {"background": heart, "layers": [handle_file(str(tmp_path / "layer.png"))]}
    editor["composite"] = heart
    gallery, _, status = client.predict(*edit_args(editor), api_name="/edit")
    [item] = gallery
    png = Path(item["image"])
    edit = read_record(png)["edit"]
    assert edit["strength"] == 1.0 and edit["mask"].startswith("inputs/")
    for name in (edit["init_image"], edit["mask"]):
        assert (outputs / name).is_file()
    with Image.open(outputs / edit["mask"]) as kept:
        assert np.array_equal(np.asarray(kept) > 0, layer[..., 3] > 0)
    again = tmp_path / "cli.png"
    args = ["generate", "grinning face", "--seed", "9", "--steps", str(STEPS), "-o", str(again)]
    args += [
        "--init-image",
        str(outputs / edit["init_image"]),
        "--mask",
        str(outputs / edit["mask"]),
    ]
    cli.main(args, standalone_mode=False)
    np.testing.assert_array_equal(pixels(png), pixels(again))


def test_the_edit_tab_runs_image_to_image_and_outpaints_by_margins(client, tmp_path):
    small = tmp_path / "small.png"
    Image.open(EXAMPLES / "heart.png").convert("RGB").resize((48, 40)).save(small)
    editor = {"background": handle_file(str(small)), "layers": [], "composite": None}
    gallery, _, _ = client.predict(*edit_args(editor, "red heart", 0.5), api_name="/edit")
    png = Path(gallery[0]["image"])
    assert Image.open(png).size == (48, 40) and read_record(png)["edit"]["mask"] is None
    margins = (8, 12, 8, 12)
    gallery, _, _ = client.predict(*edit_args(editor, margins=margins), api_name="/edit")
    png = Path(gallery[0]["image"])
    assert Image.open(png).size == (64, 64) and read_record(png)["edit"]["place"] == [8, 12]


@pytest.mark.parametrize(
    "editor, changes, message",
    [
        (None, {}, "upload a picture"),
        ("heart", {"left": -4}, "less than minimum"),
        ("heart", {"strength": 0}, "less than minimum"),
        ("heart", {"blur": 2.5}, "whole number"),
        ("heart+mask", {"left": 8}, "not both"),
    ],
)
def test_the_edit_tab_refuses_bad_input_in_one_line(
    server, client, tmp_path, editor, changes, message
):
    before = saved(server[1])
    heart = handle_file(str(EXAMPLES / "heart.png"))
    value = None
    if editor:
        layers = []
        if editor.endswith("mask"):
            Image.new("RGBA", (64, 64), (255, 255, 255, 255)).save(tmp_path / "l.png")
            layers = [handle_file(str(tmp_path / "l.png"))]
        value = {"background": heart, "layers": layers, "composite": heart}
    with pytest.raises(AppError, match=re.escape(message)):
        client.predict(*edit_args(value, **changes), api_name="/edit")
    assert saved(server[1]) == before


def test_any_result_can_be_sent_to_the_edit_tab():
    from pangudraw.ui.layout import _chosen, _to_editor

    class Event:
        value = {"image": {"path": "/x/result.png"}, "caption": None}

    path = _chosen(Event())
    editor, tabs = _to_editor(path)
    assert editor["background"] == "/x/result.png" and editor["layers"] == []
    import gradio as gr

    with pytest.raises(gr.Error):
        _to_editor(None)
