"""Hostile and careless input, one case per class at least (issue 17).

Every refusal is checked the same way: exit code 2, one ``error:`` line on stderr and no
traceback, and the working folder, with a pre-existing output file in it, byte-identical
afterwards. The security cases also check that their payload had no effect: no marker
file, no import, no request to a stand-in hub.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import save_file

from fixtures.tiny_models import mini_dataset
from pangudraw.cli.main import main
from pangudraw.errors import UserError
from pangudraw.files import write_outputs
from pangudraw.imageio import JSON_KEY, read_record

EXAMPLES = Path(__file__).parents[1] / "examples"
PREVIOUS = b"a file the user had before"


def snapshot(folder: Path) -> dict:
    """Every path under ``folder`` with its bytes (files) or target (links), and mode."""

    def content(p: Path):
        if p.is_symlink():
            return os.readlink(p)
        return p.read_bytes() if p.is_file() else None

    return {
        p.relative_to(folder): (content(p), p.lstat().st_mode) for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def work(tmp_path):
    """A working folder holding an output file that must survive every refusal."""
    (tmp_path / "out.png").write_bytes(PREVIOUS)
    return tmp_path


def refuse(argv: list[str], folder: Path, capsys, pattern: str) -> str:
    """Run the CLI and check it refused as promised; returns the error line."""
    before = snapshot(folder)
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert info.value.code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert snapshot(folder) == before
    return lines[0]


def png_with_record(path: Path, record_text: str) -> None:
    info = PngInfo()
    info.add_text(JSON_KEY, record_text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)


# ---------------------------------------------------------------------------- 1. checkpoints


TRAIN_CONFIG = """stage = "full"
data = "data"
output = "runs/full"
resolution = 16
batch_size = 4
max_steps = 2
checkpoint_every = 1
text_encoder = "{text}"
[unet]
block_out_channels = [8, 16]
attention_head_dim = 2
norm_num_groups = 4
"""


class Payload:
    """Unpickling this creates ``marker``: the side effect a hostile checkpoint would have."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture
def train_work(work, models):
    mini_dataset(work / "data", n=8, size=16, small=0, broken=0)
    (work / "full.toml").write_text(TRAIN_CONFIG.format(text=models["sd"]))
    return work


def test_a_checkpoint_with_pickles_is_refused_and_never_unpickled(train_work, capsys):
    marker = train_work / "pwned"
    folder = train_work / "runs" / "full" / "checkpoints" / "checkpoint-0000001"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text('{"step": 1, "images_seen": 4, "wall_time_s": 0.1}')
    save_file({"w": torch.zeros(1)}, folder / "model.safetensors")
    torch.save({"x": Payload(str(marker))}, folder / "custom_checkpoint_0.pkl")
    for resume in ("latest", str(folder)):
        refuse(
            ["train", train_work / "full.toml", "--resume", resume],
            train_work,
            capsys,
            r"holds files pangu-draw does not write \(custom_checkpoint_0.pkl\).*--allow-pickle",
        )
    assert not marker.exists()


def test_our_checkpoints_hold_no_pickles_and_resume(train_work):
    main(["train", str(train_work / "full.toml")])
    checkpoints = sorted((train_work / "runs/full/checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["checkpoint-0000001", "checkpoint-0000002"]
    names = {p.name for p in checkpoints[-1].iterdir()}
    assert names == {
        "model.safetensors",
        "optimizer.safetensors",
        "optimizer.json",
        "ema.safetensors",
        "rng-0.safetensors",
        "state.json",
    }
    config = train_work / "full.toml"
    config.write_text(config.read_text().replace("max_steps = 2", "max_steps = 3"))
    main(["train", str(config), "--resume", "latest"])
    state = json.loads(
        (train_work / "runs/full/checkpoints/checkpoint-0000003/state.json").read_text()
    )
    assert state["step"] == 3 and state["ema_step"] == 3


# ---------------------------------------------------------------------------- 2. model folders


@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """An importable module whose import leaves a marker file."""
    site = tmp_path / "site"
    site.mkdir()
    marker = tmp_path / "imported"
    (site / "evil_payload.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "class Net:\n    @classmethod\n    def from_pretrained(cls, *a, **k):\n"
        f"        Path({str(marker)!r}).write_text('called')\n"
    )
    monkeypatch.syspath_prepend(str(site))
    sys.modules.pop("evil_payload", None)
    return marker


@pytest.mark.parametrize(
    "component, spec, pattern",
    [
        ("unet", ["evil_payload", "Net"], r"unet is evil_payload.Net; pangu-draw loads only"),
        ("vae", ["evil_payload", "Net"], r"vae is evil_payload.Net"),
        ("tokenizer", ["evil_payload", "Net"], r"tokenizer is evil_payload.Net"),
        ("unet", ["transformers", "CLIPTextModel"], r"unet is transformers.CLIPTextModel"),
        ("unet", "diffusers", r"unet is 'diffusers'"),
    ],
)
def test_a_model_index_cannot_import_what_it_likes(
    component, spec, pattern, models, work, evil_module, capsys
):
    folder = work / "model"
    shutil.copytree(models["sd"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index[component] = spec
    (folder / "model_index.json").write_text(json.dumps(index))
    refuse(["generate", "x", "--structure", folder, "-o", work / "out.png"], work, capsys, pattern)
    assert not evil_module.exists()
    assert "evil_payload" not in sys.modules


# ---------------------------------------------------------------------------- 3. PNG metadata


def coop_record(**expert) -> str:
    table = {
        "seed": 0,
        "steps": 2,
        "sampler": "euler",
        "noise": "carry",
        "bridge_every": 1,
        "canvas": {},
        "experts": [{"name": "a", "prompt": "x", "model": "zoo:texture", **expert}],
    }
    return json.dumps({"recipe": table})


@pytest.mark.parametrize(
    "expert, option",
    [
        ({"model": "/etc"}, "--allow-outside-paths"),
        ({"model": "../model"}, "--allow-outside-paths"),
        ({"mask": "sub/../../secret.png"}, "--allow-outside-paths"),
        ({"controls": [{"model": "zoo:controlnet_canny", "image": "/etc/passwd"}]}, "outside"),
        ({"controls": [{"model": "/tmp/cn", "image": "a.png"}]}, "--allow-outside-paths"),
        ({"model": "hf:someone/model"}, "--allow-hub"),
    ],
)
def test_a_png_may_name_only_bundled_models_and_its_own_folder(expert, option, work, capsys):
    png = work / "shared.png"
    png_with_record(png, coop_record(**expert))
    line = refuse(["coop", "--from-png", png, "-o", work / "out.png"], work, capsys, option)
    assert "experts[0]" in line  # which entry


@pytest.mark.parametrize("name", ["zoo:../../train", "zoo:vae_a/../../..", "zoo:", "zoo:.."])
def test_a_zoo_name_cannot_leave_the_zoo(name):
    from pangudraw.loading.paths import resolve_model

    with pytest.raises(UserError, match="no bundled model"):
        resolve_model(name)


def test_refusing_an_outside_path_says_nothing_of_whether_it_exists(work, tmp_path, capsys):
    lines = []
    for target in ("/etc/passwd", "/etc/no-such-file-here"):
        png = work / "shared.png"
        png_with_record(png, coop_record(mask=target))
        line = refuse(["coop", "--from-png", png, "-o", work / "out.png"], work, capsys, "mask")
        lines.append(line.replace(target, "PATH"))
    assert lines[0] == lines[1]


class _Hub(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (the http.server API)
        _Hub.requests.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_a_png_naming_a_hub_model_sends_no_request(work):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        png = work / "shared.png"
        png_with_record(png, coop_record(model="hf:someone/model"))
        env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}")
        before = snapshot(work)
        result = subprocess.run(
            [sys.executable, "-m", "pangudraw.cli.main", "coop", "--from-png", str(png)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.shutdown()
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "--allow-hub" in result.stderr
    assert _Hub.requests == []
    assert snapshot(work) == before


# ---------------------------------------------------------------------------- 4. reproduce


@pytest.fixture(scope="module")
def zoo_png(tmp_path_factory):
    """The multi-control example (ControlNets fed from source images), made in a folder
    beside its recipe and sources, at few steps."""
    folder = tmp_path_factory.mktemp("zoo_png")
    for name in ("zoo_multicontrol.toml", "grinning.png", "heart.png"):
        shutil.copy(EXAMPLES / name, folder / name)
    main(
        [
            "coop",
            str(folder / "zoo_multicontrol.toml"),
            "--set",
            "steps=3",
            "-o",
            str(folder / "a.png"),
        ]
    )
    return folder


def test_a_recipe_with_computed_controls_reproduces_from_its_png(zoo_png):
    record = read_record(zoo_png / "a.png")
    controls = [c for e in record["recipe"]["experts"] for c in e["controls"]]
    # relative, and kept beside the PNG by content (the same bytes as the recipe's)
    for control, name in zip(controls, ["grinning.png", "heart.png"]):
        assert control["source"].startswith("inputs/")
        assert (zoo_png / control["source"]).read_bytes() == (zoo_png / name).read_bytes()
    main(["coop", "--from-png", str(zoo_png / "a.png"), "-o", str(zoo_png / "b.png")])
    with Image.open(zoo_png / "a.png") as a, Image.open(zoo_png / "b.png") as b:
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize(
    "tamper, pattern",
    [
        (lambda r: r["recipe"].pop("experts"), r"experts: missing"),
        (lambda r: r["recipe"].update(steps="many"), r"steps: expected an integer"),
        (lambda r: r["recipe"]["experts"][0].update(weight="NAN"), r"not valid JSON: NaN"),
        (lambda r: r["recipe"]["experts"][0].update(guidance=True), r"guidance: expected a num"),
        (lambda r: r.update(recipe=[1, 2]), r"holds no pangu-draw coop recipe"),
        (lambda r: r["recipe"]["experts"][0]["controls"][0].pop("source"), r"give exactly one"),
    ],
)
def test_a_tampered_record_is_a_one_line_error(tamper, pattern, zoo_png, work, capsys):
    record = read_record(zoo_png / "a.png")
    tamper(record)
    text = json.dumps(record).replace('"NAN"', "NaN")
    png = work / "a.png"
    png_with_record(png, text)
    shutil.copytree(zoo_png / "inputs", work / "inputs")
    refuse(["coop", "--from-png", png, "-o", work / "out.png"], work, capsys, pattern)


# ---------------------------------------------------------------------------- 5. numbers


GENERATE_NUMBERS = {
    "zero steps": (["--steps", "0"], r"steps must be an integer in \[1, 1000\]"),
    "a million steps": (["--steps", "1000000"], r"steps must be an integer in \[1, 1000\]"),
    "zero size": (["--size", "0"], r"width must be an integer in \[1, 4096\], got 0"),
    "negative width": (["--width", "-8"], r"width must be an integer"),
    "huge size": (["--size", "100000"], r"PANGU_DRAW_MAX_SIDE"),
    "zero images": (["--num-images", "0"], r"number of images must be an integer"),
    "too many images": (["--num-images", "100000"], r"PANGU_DRAW_MAX_IMAGES"),
    "negative seed": (["--seed", "-1"], r"seed must be an integer in \[0, 4294967295\]"),
    "huge seed": (["--seed", str(2**40)], r"seed must be an integer"),
    "NaN guidance": (["-g", "nan"], r"'nan' is not a finite number"),
    "infinite split": (["--split", "inf"], r"'inf' is not a finite number"),
    "terabytes": (["--size", "4096", "--num-images", "256"], r"needs about .* GiB of memory"),
}


@pytest.mark.parametrize("case", list(GENERATE_NUMBERS))
def test_generate_numbers_are_checked_before_any_work(case, work, capsys):
    args, pattern = GENERATE_NUMBERS[case]
    refuse(["generate", "red apple", *args, "-o", work / "out.png"], work, capsys, pattern)


# --set overrides of a recipe (coop) or a training config (train), each refused.
OVERRIDES = {
    "recipe NaN guidance": ("coop", "guidance=nan", r"guidance: expected a finite number"),
    "recipe infinite weight": ("coop", "experts.0.weight=inf", r"weight: expected a finite"),
    "recipe NaN window": ("coop", "experts.0.window={ t = [nan, 500] }", r"window: expected"),
    "recipe zero width": ("coop", "canvas.width=0", r"width: expected an integer in \[1, 4096\]"),
    "recipe huge steps": ("coop", "steps=99999", r"steps: expected an integer in \[1, 1000\]"),
    "recipe negative seed": ("coop", "seed=-3", r"seed: expected an integer in"),
    "recipe NaN control scale": ("coop", "experts.0.controls.0.scale=nan", r"scale: expected a"),
    "config NaN learning rate": ("train", "lr=nan", r"lr: expected a finite number"),
    "config zero learning rate": ("train", "lr=0", r"lr: expected a value in \(0, 1\]"),
    "EMA decay 1": ("train", "ema_decay=1.0", r"ema_decay: expected a value in \[0, 1\)"),
    "config dropout above one": ("train", "cfg_dropout=1.5", r"cfg_dropout: expected a value in"),
    "UNet key": ("train", "unet.block_out_channel=[8]", r"unet.block_out_channel: unk"),
    "UNet derived": ("train", "unet.in_channels=3", r"unet.in_channels: is set by the"),
    "VAE key": ("train", "vae_model.latent_channel=4", r"vae_model.latent_channel: u"),
    "config negative batch": ("train", "batch_size=-4", r"batch_size: expected a value in \[1, "),
}


@pytest.mark.parametrize("case", list(OVERRIDES))
def test_numbers_and_keys_of_recipes_and_training_configs_are_checked(case, request, capsys):
    command, override, pattern = OVERRIDES[case]
    if command == "coop":
        folder = request.getfixturevalue("work")
        for name in ("zoo_multicontrol.toml", "grinning.png", "heart.png"):
            shutil.copy(EXAMPLES / name, folder / name)
        argv = ["coop", folder / "zoo_multicontrol.toml", "-o", folder / "out.png"]
    else:
        folder = request.getfixturevalue("train_work")
        argv = ["train", folder / "full.toml"]
    refuse([*argv, "--set", override], folder, capsys, pattern)


def test_max_minutes_must_be_finite(train_work, capsys):
    argv = ["train", train_work / "full.toml", "--max-minutes", "nan"]
    refuse(argv, train_work, capsys, r"'nan' is not a finite number")


# ---------------------------------------------------------------------------- 6. outputs


def test_outputs_are_checked_before_the_work(work, capsys):
    (work / "afile").write_text("x")
    (work / "out-1.png").mkdir()
    (work / "sheet-grid.png").mkdir()
    cases = [
        (["-o", work / "afile" / "img.png"], r"afile is not a folder"),
        (["-o", ""], r"output path is empty"),
        (["-o", work], r"is a (folder|directory)"),
        (["--num-images", "2", "-o", work / "out.png"], r"out-1.png is a folder"),
        (["--grid", "-o", work / "sheet.png"], r"sheet-grid.png is a folder"),
    ]
    for args, pattern in cases:
        refuse(["generate", "red apple", *args], work, capsys, pattern)
    refuse(["eval", work, "--json", work / "afile" / "r.json"], work, capsys, r"is not a folder")
    refuse(
        ["coop", EXAMPLES / "zoo_multicontrol.toml", "-o", work / "afile" / "x.png"],
        work,
        capsys,
        r"afile is not a folder",
    )
    refuse(
        ["data", "emoji", "--style", "google", "--out", work / "afile"], work, capsys, "is a file"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(work, capsys):
    locked = work / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        refuse(["generate", "x", "-o", locked / "a.png"], work, capsys, "is not writable")
    finally:
        locked.chmod(0o755)


def test_a_failed_write_changes_no_file_and_leaves_no_temporary(tmp_path):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    first.write_bytes(PREVIOUS)
    before = snapshot(tmp_path)

    def fail(f):
        raise RuntimeError("disk full")

    writers = {first: lambda f: f.write(b"new"), tmp_path / "new" / "c.png": fail, second: fail}
    with pytest.raises(RuntimeError):
        write_outputs(writers)
    assert snapshot(tmp_path) == before  # no temporary file, no created folder


def test_written_pngs_get_the_usual_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        write_outputs({tmp_path / "sub" / "a.png": lambda f: f.write(b"x")})
    finally:
        os.umask(previous)
    assert (tmp_path / "sub" / "a.png").stat().st_mode & 0o777 == 0o644


def test_missing_parent_folders_are_created(tmp_path):
    out = tmp_path / "new" / "deeper" / "img.png"
    main(["generate", "red apple", "--steps", "2", "--seed", "0", "-o", str(out)])
    assert out.is_file()


# ---------------------------------------------------------------------------- 7. files we read


def test_broken_model_files_are_one_line_errors(models, work, capsys):
    folder = work / "model"
    shutil.copytree(models["sd"], folder)
    scheduler = folder / "scheduler" / "scheduler_config.json"
    good = scheduler.read_text()
    argv = ["generate", "x", "--structure", folder, "-o", work / "out.png"]
    scheduler.write_text("{ not json")
    refuse(argv, work, capsys, r"scheduler config .*scheduler_config.json: not valid JSON")
    scheduler.write_text(json.dumps(json.loads(good) | {"prediction_type": "noise"}))
    refuse(argv, work, capsys, r"prediction_type 'noise' is not one of")
    scheduler.write_text(json.dumps(json.loads(good) | {"_class_name": "os"}))
    refuse(argv, work, capsys, r"_class_name 'os' is not a diffusers scheduler")
    scheduler.write_text(json.dumps(json.loads(good) | {"beta_end": 2.0}))
    refuse(argv, work, capsys, r"beta_end must be between 0 and 1, got 2.0")


def test_broken_control_json_is_a_one_line_error(zoo_png, work, capsys):
    cn = work / "cn"
    from pangudraw.zoo import MODELS

    shutil.copytree(MODELS / "controlnet_canny", cn)
    for name in ("grinning.png", "heart.png"):
        shutil.copy(EXAMPLES / name, work / name)
    recipe = work / "r.toml"
    recipe.write_text(
        'prompt = "x"\nsteps = 2\n[[experts]]\nmodel = "zoo:full"\n'
        'controls = [{ model = "cn", source = "grinning.png" }]\n'
    )
    argv = ["coop", recipe, "-o", work / "out.png"]
    (cn / "control.json").write_text("[1, 2")
    refuse(argv, work, capsys, r"control transform .*control.json: not valid JSON")
    (cn / "control.json").write_text('{"kind": "canny", "sigma": 3}')
    refuse(argv, work, capsys, r"control.json: unknown key 'sigma'")
    (cn / "control.json").write_text('{"kind": "canny", "low": "high"}')
    refuse(argv, work, capsys, r"control.json: control low must be an integer")


def test_hostile_recipe_files(work, capsys):
    loop = work / "loop.toml"
    loop.symlink_to(work / "loop.toml")
    refuse(["coop", loop], work, capsys, r"recipe .*loop.toml cannot be read")
    deep = work / "deep.toml"
    deep.write_text("prompt = " + "[" * 5000 + "]" * 5000 + "\n")
    refuse(["coop", deep], work, capsys, r"nested too deeply|nested deeper")
    binary = work / "binary.toml"
    binary.write_bytes(b"prompt = '\xff\xfe'\n")
    refuse(["coop", binary], work, capsys, r"is not UTF-8 text")
    png = work / "deep.png"
    png_with_record(png, '{"recipe": ' + "[" * 100 + "]" * 100 + "}")
    refuse(["coop", "--from-png", png, "-o", work / "out.png"], work, capsys, "nested deeper")


def test_a_prompts_file_that_is_not_utf8(work, capsys):
    images = work / "images"
    images.mkdir()
    Image.new("RGB", (64, 64)).save(images / "a.png")
    prompts = work / "prompts.txt"
    prompts.write_bytes(b"caf\xe9\n")
    refuse(["eval", images, "--prompts", prompts], work, capsys, r"prompts file .* is not UTF-8")


@pytest.mark.parametrize(
    "row, pattern",
    [
        ({"file_name": "images/0000.png", "text": 7}, r"string file_name and text"),
        ({"file_name": "../outside.png", "text": "x"}, r"leaves the dataset folder"),
        ({"file_name": "/etc/passwd", "text": "x"}, r"leaves the dataset folder"),
        ({"file_name": ["a"], "text": "x"}, r"string file_name and text"),
    ],
)
def test_dataset_metadata_is_checked(row, pattern, train_work, capsys):
    metadata = train_work / "data" / "metadata.jsonl"
    metadata.write_text(metadata.read_text() + json.dumps(row) + "\n")
    refuse(["train", train_work / "full.toml"], train_work, capsys, pattern)


# ---------------------------------------------------------------------------- 8. warnings


def test_library_warnings_do_not_add_lines_to_an_error(monkeypatch, work, capsys):
    import pangudraw.recipes

    def noisy(*args, **kwargs):
        warnings.warn("a library's advisory notice", UserWarning, stacklevel=1)
        raise UserError("the real problem")

    monkeypatch.setattr(pangudraw.recipes, "load_recipe", noisy)
    refuse(["coop", work / "r.toml", "-o", work / "out.png"], work, capsys, "the real problem$")


def test_library_warnings_still_show_after_success(monkeypatch, capsys):
    import pangudraw.cli.env

    original = pangudraw.cli.env.command.callback

    def noisy(*args, **kwargs):
        warnings.warn("an advisory notice", UserWarning, stacklevel=1)
        return original(*args, **kwargs)

    monkeypatch.setattr(pangudraw.cli.env.command, "callback", noisy)
    main(["env"])
    assert "an advisory notice" in capsys.readouterr().err


# ------------------------------------------------------ 9. the breaks found later (issue 29)


def test_set_below_a_single_value_is_one_line(work, capsys):
    shutil.copy(EXAMPLES / "zoo_multicontrol.toml", work / "r.toml")
    argv = ["coop", work / "r.toml", "--set", "seed.x=1", "-o", work / "x.png"]
    refuse(argv, work, capsys, r"--set seed.x: seed is a single value .* not a table")


def test_a_dataset_folder_that_cannot_be_created_is_one_line(work, capsys, monkeypatch):
    import pangudraw.train.emoji as emoji

    def fetch(*args):
        raise AssertionError("nothing is fetched for a folder that cannot be made")

    monkeypatch.setattr(emoji, "fetch", fetch)
    locked = Path("/sys/pangu-draw-test") if os.geteuid() == 0 else work / "ro" / "data"
    if os.geteuid() != 0:
        (work / "ro").mkdir(mode=0o555)
    argv = ["data", "emoji", "--style", "google", "--out", locked]
    refuse(argv, work, capsys, r"dataset folder .* cannot be (created|written)")


def test_a_folder_with_pickle_weights_only_is_one_line(work, capsys):
    from fixtures.tiny_models import tiny_sd

    folder = work / "pickled"
    tiny_sd(folder).save_pretrained(folder, safe_serialization=False)
    for file in folder.rglob("*.safetensors"):
        file.unlink()
    capsys.readouterr()
    argv = ["generate", "x", "--structure", folder, "-o", work / "x.png"]
    refuse(argv, work, capsys, r"has no safetensors weights; pickle checkpoints are refused")


def test_a_pangu_release_with_text_towers_narrower_than_a_head_is_one_line(
    work, capsys, monkeypatch
):
    from fixtures import pangu_release as pangu_fixture

    monkeypatch.setattr(pangu_fixture, "ZH_WIDTH", 32)
    pangu_fixture.write_release(work / "ckpt")
    capsys.readouterr()
    argv = ["convert", "pangu-v3", "--high", work / "ckpt" / "high.ckpt"]
    argv += ["--low", work / "ckpt" / "low.ckpt", "-o", work / "converted"]
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err  # a progress bar that clears itself, then one line
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(
        r"\nerror: .* is 32 wide, which 64-wide attention heads do not divide",
        "\n" + err.split("\r")[-1],
    )
    assert not (work / "converted").exists()


def test_a_coop_png_reproduces_without_options_and_outside_files_stay_refused(work, capsys):
    """The pictures a recipe reads are kept beside the PNG by content hash, so the user's
    own PNG makes its image again with no option; a PNG naming a file outside its folder
    is still refused."""
    shutil.copy(EXAMPLES / "zoo_multicontrol.toml", work / "r.toml")
    for name in ("grinning.png", "heart.png"):
        shutil.copy(EXAMPLES / name, work / name)
    out = work / "results" / "x.png"
    main([str(a) for a in ["coop", work / "r.toml", "--set", "steps=3", "-o", out]])
    record = read_record(out)
    sources = [c["source"] for e in record["recipe"]["experts"] for c in e["controls"]]
    assert all(s.startswith("inputs/") for s in sources)
    kept = {p.name for p in (out.parent / "inputs").iterdir()}
    assert kept == {Path(s).name for s in sources}
    again = work / "results" / "y.png"
    main([str(a) for a in ["coop", "--from-png", out, "-o", again]])
    assert again.read_bytes() == out.read_bytes()
    capsys.readouterr()
    recipe = record["recipe"]
    recipe["experts"][0]["controls"][0]["source"] = "../grinning.png"
    png_with_record(work / "results" / "outside.png", json.dumps({"recipe": recipe}))
    argv = ["coop", "--from-png", work / "results" / "outside.png", "-o", work / "z.png"]
    refuse(argv, work, capsys, r"outside the folder of .*--allow-outside-paths")
