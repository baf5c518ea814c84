"""The CLI through its entry point: outputs, metadata, and one-line errors with exit code 2."""

import json

import pytest
from PIL import Image

from fixtures.tiny_models import tiny_vae
from pangudraw.cli.main import main
from pangudraw.coop import SAMPLERS
from pangudraw.imageio import read_record
from pangudraw.options import SAMPLER_NAMES


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_sampler_names_are_the_library_samplers():
    assert set(SAMPLER_NAMES) == set(SAMPLERS)


def test_generate_writes_pngs_with_reproducible_parameters(models, tmp_path, capsys):
    out = tmp_path / "img.png"
    argv = [
        "generate",
        "a red apple",
        "--structure",
        str(models["sd"]),
        "--texture",
        str(models["sd_other"]),
        "--steps",
        "4",
        "--seed",
        "5",
        "--num-images",
        "2",
        "-o",
        str(out),
        "-g",
        "2",
    ]
    main(argv)
    paths = [tmp_path / "img-0.png", tmp_path / "img-1.png"]
    assert capsys.readouterr().out.split() == [str(p) for p in paths]
    with Image.open(paths[1]) as image:
        assert image.size == (16, 16)
        parameters = image.text["parameters"]
    assert parameters.startswith("a red apple\nSteps: 4, Sampler: euler, CFG scale: 2.0, Seed: 6")
    assert "Split: 500" in parameters
    record = read_record(paths[1])
    assert record["seed"] == 6 and record["texture"] == str(models["sd_other"])

    # The record alone reproduces the second image.
    again = tmp_path / "again.png"
    main(
        [
            "generate",
            record["prompt"],
            "--structure",
            record["structure"],
            "--texture",
            record["texture"],
            "--steps",
            str(record["steps"]),
            "--seed",
            str(record["seed"]),
            "-g",
            str(record["guidance_scale"]),
            "-o",
            str(again),
        ]
    )
    with Image.open(paths[1]) as a, Image.open(again) as b:
        assert a.tobytes() == b.tobytes()


def test_random_seed_is_recorded(models, tmp_path):
    out = tmp_path / "r.png"
    main(["generate", "x", "--structure", str(models["sd"]), "--steps", "2", "-o", str(out)])
    assert isinstance(read_record(out)["seed"], int)


def test_help_lists_every_option(capsys):
    code, out, _ = run(["generate", "--help"], capsys)
    assert code == 0
    for option in (
        "--structure",
        "--texture",
        "--split",
        "--steps",
        "--guidance-scale",
        "--sampler",
        "--seed",
        "--width",
        "--height",
        "--num-images",
        "--output",
    ):
        assert option in out


def test_env_reports_versions(capsys):
    main(["env"])
    out = capsys.readouterr().out
    assert "torch" in out and "diffusers" in out and "pangu-draw" in out


@pytest.fixture
def other_space_model(models, tmp_path):
    """A copy of the tiny SD model with another VAE: another latent space."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(models["sd"])
    pipe.vae = tiny_vae(seed=9)
    pipe.save_pretrained(tmp_path / "other_space")
    return tmp_path / "other_space"


@pytest.fixture
def pickle_model(models, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(models["sd"])
    pipe.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    return tmp_path / "pickled"


BAD_INPUT = {
    "missing model": (["--structure", "{tmp}/nowhere"], "does not exist"),
    "not a diffusers folder": (["--structure", "{tmp}"], "not a diffusers model folder"),
    "width not divisible": (["--structure", "{sd}", "--width", "15"], "not divisible by the VAE"),
    "steps below one": (
        ["--structure", "{sd}", "--steps", "0"],
        r"steps must be an integer in \[1, 1000\], got 0",
    ),
    "split at T": (
        ["--structure", "{sd}", "--texture", "{sd}", "--split", "1000"],
        r"split 1000 is outside \(0, 1000\)",
    ),
    "split at zero": (
        ["--structure", "{sd}", "--texture", "{sd}", "--split", "0"],
        r"outside \(0, 1000\)",
    ),
    "unknown sampler": (
        ["--structure", "{sd}", "--sampler", "plms"],
        "Invalid value for '--sampler'",
    ),
    "pickle weights": (["--structure", "{pickled}"], "pickle checkpoints are refused"),
    "batch size zero": (["--batch-size", "0"], r"batch size must be an integer in \[1, 256\]"),
    "missing prompts file": (["--prompts-file", "{tmp}/none.txt"], "prompts file .* not exist"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_exit_2_and_no_file(case, models, tmp_path, capsys, pickle_model):
    args, message = BAD_INPUT[case]
    fill = {"tmp": tmp_path, "sd": models["sd"], "pickled": pickle_model}
    out = tmp_path / "out.png"
    argv = ["generate", "x", *[a.format(**fill) for a in args], "-o", str(out)]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ")
    assert __import__("re").search(message, err)
    assert not out.exists()
    assert list(tmp_path.glob("*.png")) == []


def test_structure_and_texture_in_different_latent_spaces(models, other_space_model, tmp_path):
    out = tmp_path / "coop.png"
    main(
        [
            "generate",
            "x",
            "--structure",
            str(models["sd"]),
            "--texture",
            str(other_space_model),
            "--steps",
            "4",
            "--seed",
            "1",
            "-o",
            str(out),
        ]
    )
    from pangudraw.loading.models import load_expert
    from pangudraw.pipelines import generate

    structure, texture = load_expert(models["sd"]), load_expert(other_space_model)
    expected = generate(structure, texture, "x", num_inference_steps=4, seed=1).to_pil()[0]
    alone = generate(texture, None, "x", num_inference_steps=4, seed=1).to_pil()[0]
    with Image.open(out) as image:
        assert image.size == (16, 16)
        assert image.tobytes() == expected.tobytes()  # the CLI is the library's pair
        assert image.tobytes() != alone.tobytes()  # and the structure model took part


def test_pickle_weights_load_when_allowed(pickle_model, tmp_path, capsys):
    out = tmp_path / "p.png"
    main(
        [
            "generate",
            "x",
            "--structure",
            str(pickle_model),
            "--steps",
            "2",
            "--seed",
            "1",
            "--allow-pickle",
            "-o",
            str(out),
        ]
    )
    assert out.exists()
    assert json.loads(Image.open(out).text["pangu-draw"])["steps"] == 2


def test_models_lists_the_zoo(tmp_path, monkeypatch, capsys):
    import pangudraw.zoo as zoo

    monkeypatch.setattr(zoo, "MODELS", tmp_path)
    main(["models"])
    assert "no bundled models yet" in capsys.readouterr().out
    (tmp_path / "vae_a").mkdir()
    (tmp_path / "vae_a" / "README.md").write_text("# pangu-draw vae VAE\n")
    (tmp_path / "vae_a" / "w.safetensors").write_bytes(b"x" * 2**20)
    main(["models"])
    out = capsys.readouterr().out
    assert "vae_a" in out and "1.0 MB" in out and "pangu-draw vae VAE" in out


@pytest.mark.slow
def test_generate_split_across_two_processes_makes_the_same_files(tmp_path):
    """`accelerate launch` with two CPU processes (torchrun; gloo) writes the files one
    process writes, bit for bit: same names, seeds and batches. On the CPU an image also
    depends on the number of threads, and torchrun gives each process one thread
    (OMP_NUM_THREADS=1), so the single process here runs with one thread too."""
    import subprocess
    import sys
    from pathlib import Path

    import torch

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("red apple\n\ngrinning face\nred heart\n")
    args = ["generate", "fire", "--prompts-file", str(prompts), "--steps", "3"]
    args += ["--num-images", "2", "--batch-size", "3", "--seed", "7", "--grid"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main([*args, "-o", str(tmp_path / "one" / "x.png")])
    finally:
        torch.set_num_threads(threads)
    accelerate = Path(sys.executable).with_name("accelerate")
    launch = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = subprocess.run(
        [*launch, "-m", "pangudraw.cli.main", *args, "-o", str(tmp_path / "two" / "x.png")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert one == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert len(one) == 9  # 4 prompts x 2 images, and the grid
    for name in one:
        a, b = Image.open(tmp_path / "one" / name), Image.open(tmp_path / "two" / name)
        assert a.tobytes() == b.tobytes(), name
        assert a.text == b.text, name  # the same parameters and record
    assert len(result.stdout.splitlines()) == 9  # the main process lists each file once


def test_the_old_default_settings_given_explicitly_make_the_old_images(tmp_path):
    """The default went from 25 to 15 Euler steps (benchmarks/bench_steps.py); asking for
    --sampler euler --steps 25 gives what the library's 25-step Euler sampling gives."""
    from pangudraw.loading.models import load_expert
    from pangudraw.pipelines import generate
    from pangudraw.zoo import MODELS

    png = tmp_path / "old.png"
    main(["generate", "red apple", "--sampler", "euler", "--steps", "25", "--seed", "3",
          "-o", str(png)])  # fmt: skip
    structure, texture = load_expert(MODELS / "structure"), load_expert(MODELS / "texture")
    expected = generate(structure, texture, "red apple", num_inference_steps=25, seed=3)
    assert Image.open(png).tobytes() == expected.to_pil()[0].tobytes()
    record = read_record(png)
    assert (record["sampler"], record["steps"]) == ("euler", 25)
    default = tmp_path / "default.png"
    main(["generate", "red apple", "--seed", "3", "-o", str(default)])
    assert (read_record(default)["sampler"], read_record(default)["steps"]) == ("euler", 15)


def test_models_go_to_the_gpu_when_there_is_one(monkeypatch):
    """generate, coop and the UI share Experts: on a machine with a GPU they all use it
    (coop and the UI used the CPU there before), unless told a device."""
    import torch

    from pangudraw.cli.shared import Processes
    from pangudraw.loading.models import ModelCache as Experts

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert Experts().device == "cuda" and Processes().device == "cuda"
    assert Experts(device="cpu").device == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Experts().device is None and Processes().device is None


def test_bfloat16_halves_the_models_and_draws_nearly_the_same_image(models, tmp_path):
    """--dtype bfloat16: the denoisers and text encoders in bfloat16, the VAE in float32;
    the image close to float32's (not equal: bfloat16 keeps 8 bits), the record says so."""
    import numpy as np
    import torch

    from pangudraw.loading.models import ModelCache as Experts

    expert = Experts(dtype="bfloat16").get(models["sdxl"])
    assert expert.network.dtype == expert.dtype == torch.bfloat16
    assert {p.dtype for e in expert.text.encoders for p in e.parameters()} == {torch.bfloat16}
    assert expert.space.vae.dtype == torch.float32

    def image(*extra):
        out = tmp_path / "x.png"
        argv = ["generate", "a red apple", "--structure", str(models["sd"]), "--seed", "3"]
        main([*argv, "--steps", "4", "--size", "32", "-o", str(out), *extra])
        with Image.open(out) as png:
            return np.asarray(png.convert("RGB"), dtype=float), read_record(out)

    full, record = image()
    half, half_record = image("--dtype", "bfloat16")
    assert "dtype" not in record and half_record["dtype"] == "bfloat16"
    assert 0 < np.abs(full - half).mean() < 8  # of 255


def test_coop_in_bfloat16_reproduces_from_its_png_and_a_bad_dtype_is_refused(
    models, tmp_path, capsys
):
    import numpy as np

    from pangudraw.imageio import save_png

    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'prompt = "a red apple"\nseed = 2\nsteps = 3\n[canvas]\nwidth = 32\nheight = 32\n'
        f'[[experts]]\nmodel = "{models["sd"]}"\n'
    )
    first, again = tmp_path / "a.png", tmp_path / "b.png"
    main(["coop", str(recipe), "--dtype", "bfloat16", "-o", str(first)])
    main(["coop", "--from-png", str(first), "--allow-outside-paths", "-o", str(again)])
    assert read_record(first)["dtype"] == read_record(again)["dtype"] == "bfloat16"
    with Image.open(first) as a, Image.open(again) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    record = read_record(first) | {"dtype": "float64"}
    with Image.open(first) as image:
        save_png(image, tmp_path / "bad.png", "", record)
    argv = ["coop", "--from-png", str(tmp_path / "bad.png"), "--allow-outside-paths"]
    code, _, err = run([*argv, "-o", str(tmp_path / "c.png")], capsys)
    assert code == 2 and "unknown dtype 'float64'" in err and err.count("\n") == 1
    assert not (tmp_path / "c.png").exists()
