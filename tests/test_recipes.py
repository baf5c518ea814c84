"""Recipe files: schema errors that name the field, overrides, and the `coop` command."""

import math
from pathlib import Path

import pytest
from PIL import Image

from pangudraw.cli.main import main
from pangudraw.errors import UserError
from pangudraw.imageio import read_record
from pangudraw.recipes import load_recipe, parse_recipe
from pangudraw.tomlconf import apply_overrides

RECIPE = """
prompt = "a red apple"
seed = 5
steps = 4
guidance = 2.0

[canvas]
width = 24
height = 16
expert = "detail"

[[experts]]
name = "layout"
model = "{sd_b}"
window = {{ t = [500, 1000] }}

[[experts]]
name = "detail"
model = "{sd}"
window = {{ t = [0, 500] }}
weight = 1.5
"""


@pytest.fixture
def recipe_file(models, tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE.format(sd=models["sd"], sd_b=models["sd_b"]))
    return path


def test_recipe_parses_with_defaults_and_relative_paths(tmp_path):
    (tmp_path / "r.toml").write_text(
        'prompt = "cat"\n[[experts]]\nmodel = "models/a"\nwindow = { sigma = [0, 3.5] }\n'
    )
    recipe = load_recipe(tmp_path / "r.toml")
    expert = recipe.experts[0]
    assert expert.model == str(tmp_path / "models" / "a")
    assert (expert.name, expert.prompt, expert.weight, expert.guidance) == (
        "expert0",
        "cat",
        1.0,
        7.0,
    )
    assert (expert.window.unit, expert.window.lo, expert.window.hi) == ("sigma", 0.0, 3.5)
    assert (recipe.steps, recipe.sampler, recipe.noise) == (15, "euler", "carry")  # GENERATION


def test_round_trip_through_the_stored_form(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file)
    again = parse_recipe(recipe.to_table(), "stored", tmp_path)
    assert again == recipe
    assert again.experts[0].window.hi == 1000
    # Stored relative to a folder, read back relative to it.
    stored = recipe.to_table(tmp_path / "out")
    assert not any(e["model"].startswith("/") for e in stored["experts"])
    assert parse_recipe(stored, "stored", tmp_path / "out") == recipe
    sigma_recipe = load_recipe(recipe_file, ["experts.0.window={ sigma = [1.0, inf] }"])
    stored = parse_recipe(sigma_recipe.to_table(), "stored", tmp_path)
    assert stored.experts[0].window.hi == math.inf


def test_overrides_reach_nested_fields(recipe_file):
    recipe = load_recipe(
        recipe_file,
        [
            "seed=9",
            "experts.1.weight=0.25",
            "canvas.width=32",
            'experts.0.prompt="a pear"',
            "sampler=ddim",
        ],
    )
    assert (recipe.seed, recipe.width, recipe.sampler) == (9, 32, "ddim")
    assert recipe.experts[1].weight == 0.25 and recipe.experts[0].prompt == "a pear"
    with pytest.raises(UserError, match="index 7 is out of range"):
        apply_overrides({"experts": [{}]}, ["experts.7=1"], "r")
    with pytest.raises(UserError, match="expected key=value"):
        apply_overrides({}, ["seed"], "r")


BAD = {
    "unknown top key": ({"colour": 1}, r"r.toml: colour: unknown key"),
    "unknown expert key": (
        {"experts": [{"model": "m", "strength": 1}]},
        r"r.toml: experts\[0\].strength: unknown key",
    ),
    "no experts": ({"experts": []}, r"experts: expected at least one"),
    "missing model": (
        {"experts": [{"name": "a"}]},
        r"experts\[0\].model: missing; expected a string",
    ),
    "bad window": (
        {"experts": [{"model": "m", "window": {"t": [5]}}]},
        r"experts\[0\].window: expected a table \{t = \[lo, hi\]\}",
    ),
    "inverted window": (
        {"experts": [{"model": "m", "window": {"sigma": [3, 1]}}]},
        r"got \[3, 1\]",
    ),
    "wrong type": (
        {"steps": "many", "experts": [{"model": "m"}]},
        r"steps: expected an integer, got 'many'",
    ),
    "zero weights": ({"experts": [{"model": "m", "weight": 0}]}, r"all weights are zero"),
    "negative weight": ({"experts": [{"model": "m", "weight": -1}]}, r"expected a number >= 0"),
    "unknown canvas expert": (
        {"canvas": {"expert": "x"}, "experts": [{"model": "m"}]},
        r"canvas.expert: expected one of the expert names",
    ),
    "duplicate names": (
        {"experts": [{"model": "m", "name": "a"}, {"model": "n", "name": "a"}]},
        r"expert names must be unique",
    ),
    "bad sampler": (
        {"sampler": "plms", "experts": [{"model": "m"}]},
        r"sampler: expected one of ddim",
    ),
    "bad noise": (
        {"noise": "fresh", "experts": [{"model": "m"}]},
        r"noise: expected one of carry, resample",
    ),
    "bad size": ({"experts": [{"model": "m", "size": [32]}]}, r"size: expected \[height, width\]"),
    "control without image": (
        {"experts": [{"model": "m", "controls": [{"model": "c"}]}]},
        r"experts\[0\].controls\[0\].image: give exactly one of image",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_schema_errors_name_file_field_and_form(case, tmp_path):
    table, message = BAD[case]
    table = {"prompt": "x", **table}
    with pytest.raises(UserError, match=message):
        parse_recipe(table, "r.toml", tmp_path)


def test_coop_command_stores_its_recipe_and_reproduces_from_png(recipe_file, tmp_path):
    out = tmp_path / "coop.png"
    main(["coop", str(recipe_file), "-o", str(out)])
    with Image.open(out) as image:
        assert image.size == (24, 16)
        parameters = image.text["parameters"]
    assert parameters.startswith("a red apple\nSteps: 4, Sampler: euler, Seed: 5, Size: 24x16")
    assert "layout (sd_b, w=1, CFG 2) + detail (sd, w=1.5, CFG 2)" in parameters
    assert read_record(out)["recipe"]["experts"][1]["weight"] == 1.5

    # The models lie outside the PNG's folder: reading them needs the user's say-so.
    again = tmp_path / "again.png"
    with pytest.raises(SystemExit):
        main(["coop", "--from-png", str(out), "-o", str(again)])
    assert not again.exists()
    main(["coop", "--from-png", str(out), "--allow-outside-paths", "-o", str(again)])
    with Image.open(out) as a, Image.open(again) as b:
        assert a.tobytes() == b.tobytes()

    other = tmp_path / "other.png"
    main(
        [
            "coop",
            "--from-png",
            str(out),
            "--allow-outside-paths",
            "--set",
            "seed=6",
            "-o",
            str(other),
        ]
    )
    with Image.open(out) as a, Image.open(other) as b:
        assert a.tobytes() != b.tobytes()


def run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "experts.1.window={ t = [0, 100] }"], r"no expert is active for sigma in"),
        (["--set", "experts.0.weight=0", "--set", "experts.1.weight=0"], "all weights are zero"),
        (
            ["--set", "experts.0.controls=[{ model = '{cn}', image = 'nope.png' }]"],
            "control image .*nope.png does not exist",
        ),
        (
            ["--set", "experts.0.controls=[{ model = '{cn}', image = '{toml}' }]"],
            "is not an image file that can be read",
        ),
        (
            ["--set", "experts.1.controls=[{ model = '{cn}', image = '{toml}' }]"],
            "was built for another base",
        ),
        (["--set", "experts.0.mask='{toml}'"], "mask .* is not an image file"),
        (["--set", "canvas.width=25"], "width 25 is not divisible by the VAE factor 2"),
    ],
)
def test_coop_bad_input_is_one_line_exit_2_and_no_file(
    extra, message, recipe_file, models, tmp_path, capsys
):
    out = tmp_path / "bad.png"
    fill = {"cn": str(models["cn_sd_b"]), "toml": str(recipe_file)}
    extra = [e.replace("{cn}", fill["cn"]).replace("{toml}", fill["toml"]) for e in extra]
    code, err = run(["coop", str(recipe_file), *extra, "-o", str(out)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert __import__("re").search(message, err), err
    assert not out.exists()


def test_coop_needs_exactly_one_source(recipe_file, tmp_path, capsys):
    assert run(["coop"], capsys) == (
        2,
        "error: give either a RECIPE file or --from-png IMAGE, not both or neither\n",
    )
    code, err = run(["coop", "--from-png", str(recipe_file)], capsys)
    assert code == 2 and "is not a PNG file that can be read" in err
    code, err = run(["coop", str(tmp_path / "missing.toml")], capsys)
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("example", sorted((Path(__file__).parents[1] / "examples").glob("*.toml")))
def test_recipes_written_as_toml_read_back_the_same(example):
    from pangudraw.tomlconf import dumps, parse_toml, read_toml

    table = read_toml(example, "recipe")
    assert parse_toml(dumps(table), "recipe", "dumped") == table


def test_toml_strings_and_open_windows_survive_writing():
    import math

    from pangudraw.tomlconf import dumps, parse_toml

    table = {
        "prompt": '红心 "quoted" \\ back\nline\ttab\x7f\x01',
        "experts": [{"name": "a b", "window": {"sigma": [0.5, math.inf]}, "size": [64, 32]}],
    }
    assert parse_toml(dumps(table), "recipe", "dumped") == table
