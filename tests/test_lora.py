"""LoRA through diffusers' loaders: equal to diffusers' own pipelines, kohya keys, scale 0,
strictness, and the CLI and recipe plumbing."""

import json

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusionPipeline

from fixtures.tiny_models import tiny_lora, to_kohya
from pangudraw.cli.main import main
from pangudraw.errors import UserError
from pangudraw.imageio import read_record
from pangudraw.loading.models import load_expert
from pangudraw.lora import LoraSpec, apply_loras
from pangudraw.pipelines import generate

PROMPT = "a red apple"


@pytest.fixture(scope="module")
def loras(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    sd = tiny_lora(models["sd"], root / "sd")
    return {
        "sd": sd,
        "sd_kohya": to_kohya(sd, root / "sd_kohya.safetensors"),
        "flux": tiny_lora(models["flux_dev"], root / "flux", flux=True),
    }


def image(expert, **kwargs):
    return generate(expert, None, PROMPT, seed=1, num_inference_steps=4, **kwargs).images


def reference(pipe, lora_file, scale=1.0, **kwargs):
    """diffusers' own image with the LoRA loaded by ``load_lora_weights``."""
    pipe.load_lora_weights(lora_file.parent, adapter_name="x")
    pipe.set_adapters(["x"], adapter_weights=[scale])
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(1)
    return pipe(
        PROMPT, generator=generator, num_inference_steps=4, output_type="pt", **kwargs
    ).images


def with_lora(folder, file, scale=1.0):
    return apply_loras(load_expert(folder), [LoraSpec(str(file), scale)])


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_sd_lora_equals_diffusers_load_lora_weights(models, loras, scale):
    ours = image(with_lora(models["sd"], loras["sd"], scale), guidance_scale=2.0)
    pipe = StableDiffusionPipeline.from_pretrained(models["sd"])
    theirs = reference(pipe, loras["sd"], scale, guidance_scale=2.0)
    assert (ours - theirs).abs().max() <= 1e-4


def test_flux_lora_equals_diffusers_load_lora_weights(models, loras):
    ours = image(
        with_lora(models["flux_dev"], loras["flux"]), height=32, width=32, guidance_scale=3.5
    )
    pipe = FluxPipeline.from_pretrained(models["flux_dev"])
    theirs = reference(pipe, loras["flux"], height=32, width=32, guidance_scale=3.5)
    assert (ours - theirs).abs().max() <= 1e-4


def test_lora_changes_the_output_and_scale_zero_is_exactly_none(models, loras):
    plain = image(load_expert(models["sd"]))
    assert (image(with_lora(models["sd"], loras["sd"])) - plain).abs().max() > 0.01
    zero = with_lora(models["sd"], loras["sd"], 0.0)
    assert any("lora_A" in name for name, _ in zero.network.named_modules())  # it is loaded
    assert torch.equal(image(zero), plain)


def test_kohya_keys_load_to_the_same_model(models, loras):
    kohya = image(with_lora(models["sd"], loras["sd_kohya"]))
    assert torch.equal(kohya, image(with_lora(models["sd"], loras["sd"])))


def test_lora_for_another_architecture_is_refused(models, loras):
    with pytest.raises(UserError, match="does not fit|has no layers"):
        with_lora(models["sdxl"], loras["sd"])
    with pytest.raises(UserError, match="does not fit|has no layers"):
        with_lora(models["flux_dev"], loras["sd"])


def test_lora_spec_parses_scale_and_paths_with_colons():
    assert LoraSpec.parse("a/b.safetensors") == LoraSpec("a/b.safetensors", 1.0)
    assert LoraSpec.parse("a/b.safetensors:0.5") == LoraSpec("a/b.safetensors", 0.5)
    assert LoraSpec.parse("C:/x.safetensors") == LoraSpec("C:/x.safetensors", 1.0)
    with pytest.raises(UserError, match="finite"):
        LoraSpec.parse("a.safetensors:nan")


def test_generate_lora_option_is_recorded_and_reproduces(models, loras, tmp_path, capsys):
    out, again = tmp_path / "a.png", tmp_path / "b.png"
    base = ["generate", PROMPT, "--structure", str(models["sd"]), "--steps", "3", "--seed", "2"]
    main([*base, "--lora", f"{loras['sd']}:0.7", "-o", str(out)])
    record = read_record(out)
    assert record["loras"] == [{"file": str(loras["sd"]), "scale": 0.7}]
    lora_args = [x for d in record["loras"] for x in ("--lora", f"{d['file']}:{d['scale']}")]
    main([*base, *lora_args, "-o", str(again)])
    assert out.read_bytes() == again.read_bytes()
    capsys.readouterr()

    bad = tmp_path / "bad.png"
    for lora, message in [
        (str(tmp_path / "missing.safetensors"), "does not exist"),
        (str(loras["sd"].with_suffix(".bin")), "does not exist"),
    ]:
        with pytest.raises(SystemExit) as info:
            main([*base, "--lora", lora, "-o", str(bad)])
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and message in err and len(err.splitlines()) == 1
        assert not bad.exists()
    pickle = tmp_path / "x.bin"
    pickle.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(SystemExit):
        main([*base, "--lora", str(pickle), "-o", str(bad)])
    assert "pickle files are refused" in capsys.readouterr().err and not bad.exists()
    with pytest.raises(SystemExit):
        main(
            [
                "generate",
                PROMPT,
                "--structure",
                str(models["sdxl"]),
                "--steps",
                "2",
                "--lora",
                str(loras["sd"]),
                "-o",
                str(bad),
            ]
        )
    assert "does not fit" in capsys.readouterr().err and not bad.exists()


def test_recipe_loras_per_expert_are_stored_and_reproduce(models, loras, tmp_path):
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(loras["sd"].read_bytes())
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'prompt = "{PROMPT}"\nsteps = 3\n[[experts]]\nmodel = "{models["sd"]}"\n'
        'loras = [{ file = "style.safetensors", scale = 0.6 }]\n'
    )
    out, again, plain = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    main(["coop", str(recipe), "-o", str(out)])
    stored = read_record(out)["recipe"]["experts"][0]["loras"]
    assert stored == [{"file": "style.safetensors", "scale": 0.6}]
    main(["coop", "--from-png", str(out), "--allow-outside-paths", "-o", str(again)])
    assert out.read_bytes() == again.read_bytes()
    main(["coop", str(recipe), "--set", "experts.0.loras=[]", "-o", str(plain)])
    assert out.read_bytes() != plain.read_bytes()


def test_broken_and_poisoned_lora_files_are_refused(models, loras, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(UserError, match="cannot read LoRA"):
        with_lora(models["sd"], broken)
    poisoned = tmp_path / "nan.safetensors"
    state = load_file(loras["sd"])
    next(iter(state.values()))[0, 0] = float("nan")
    save_file(state, poisoned)
    with pytest.raises(UserError, match="not a finite tensor"):
        with_lora(models["sd"], poisoned)
    empty = tmp_path / "empty.safetensors"
    save_file({"foo": torch.zeros(1)}, empty)
    with pytest.raises(UserError, match="has no layers|not a LoRA"):
        with_lora(models["sd"], empty)


# ------------------------------------------------------------- LoRA files as they are published


@pytest.fixture(scope="module")
def published_loras(models, tmp_path_factory):
    """LoRA files laid out as kohya's sd-scripts and diffusers' training scripts write them."""
    from fixtures.tiny_models import to_kohya_sgm

    root = tmp_path_factory.mktemp("published_loras")
    sdxl = tiny_lora(models["sdxl"], root / "sdxl", seed=3)
    layers = json.loads((models["sdxl"] / "unet" / "config.json").read_text())["layers_per_block"]
    return {
        "sdxl_kohya": to_kohya_sgm(sdxl, root / "sdxl_kohya.safetensors", layers),
        "alpha2": tiny_lora(models["sd"], root / "alpha2", seed=4, alpha=2, metadata=True),
        "alpha8": tiny_lora(models["sd"], root / "alpha8", seed=5, alpha=8, metadata=True),
        "flux_clip": tiny_lora(
            models["flux_dev"], root / "flux_clip", seed=6, flux=True, text_encoder=True
        ),
    }


def _max_pixel_difference(a, b) -> int:
    return int(((a * 255).round() - (b * 255).round()).abs().max())


def test_kohya_sdxl_lora_with_original_block_names_equals_diffusers(models, published_loras):
    from diffusers import StableDiffusionXLPipeline
    from safetensors import safe_open

    file = published_loras["sdxl_kohya"]
    with safe_open(file, "pt") as handle:
        names = list(handle.keys())
    assert any("lora_unet_input_blocks_" in k for k in names)
    assert any("lora_unet_output_blocks_" in k for k in names)
    ours = image(with_lora(models["sdxl"], file), guidance_scale=2.0)
    theirs = reference(StableDiffusionXLPipeline.from_pretrained(models["sdxl"]), file,
                       guidance_scale=2.0)  # fmt: skip
    assert _max_pixel_difference(ours, theirs) <= 1
    assert (ours - image(load_expert(models["sdxl"]), guidance_scale=2.0)).abs().max() > 0.01


@pytest.mark.parametrize("name", ["alpha2", "alpha8"])
def test_a_diffusers_lora_keeps_the_alpha_in_its_header(models, published_loras, name):
    file = published_loras[name]
    from safetensors import safe_open

    with safe_open(file, "pt") as handle:
        assert "lora_adapter_metadata" in handle.metadata()
    ours = image(with_lora(models["sd"], file), guidance_scale=2.0)
    theirs = reference(StableDiffusionPipeline.from_pretrained(models["sd"]), file,
                       guidance_scale=2.0)  # fmt: skip
    assert _max_pixel_difference(ours, theirs) <= 1
    # The same tensors at alpha = rank (the header dropped) give another image.
    from safetensors.torch import load_file, save_file

    bare = file.with_name("bare.safetensors")
    save_file(load_file(file), bare)
    assert (image(with_lora(models["sd"], bare), guidance_scale=2.0) - ours).abs().max() > 0.01


def test_a_flux_lora_that_trains_clip_loads_both_parts(models, published_loras):
    file = published_loras["flux_clip"]
    expert = with_lora(models["flux_dev"], file)
    assert any("lora_A" in n for n, _ in expert.text.clip.named_modules())
    ours = image(expert, height=32, width=32, guidance_scale=3.5)
    theirs = reference(FluxPipeline.from_pretrained(models["flux_dev"]), file,
                       height=32, width=32, guidance_scale=3.5)  # fmt: skip
    assert _max_pixel_difference(ours, theirs) <= 1


def test_lora_settings_naming_a_rank_the_tensors_lack_are_refused(
    models, published_loras, tmp_path
):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    file = published_loras["alpha2"]
    with safe_open(file, "pt") as handle:
        settings = json.loads(handle.metadata()["lora_adapter_metadata"])
    for change, message in [
        ({"unet.r": 10**9}, "not a rank its tensors have"),
        ({"unet.lora_alpha": "big"}, "not a finite number"),
        ({"unet.rank_pattern": {"to_q": 10**9}}, "names ranks its tensors do not have"),
    ]:
        hostile = tmp_path / "hostile.safetensors"
        metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(settings | change)}
        save_file(load_file(file), hostile, metadata=metadata)
        with pytest.raises(UserError, match=message):
            with_lora(models["sd"], hostile)
