"""Model folders as they are published: their model_index.json and scheduler configs load
(with the keys diffusers ignores), each family is recognised rightly, and every published
network config builds at its real size (on the meta device, no weights) and passes our
checks. The configs are package data (src/pangudraw/published/, README there)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fixtures.tiny_models import tiny_flux, tiny_sd, tiny_sd3, tiny_sdxl, tiny_sdxl_refiner
from pangudraw.cli.main import main
from pangudraw.errors import UserError
from pangudraw.families.flux import FluxText
from pangudraw.families.sd import SDText
from pangudraw.families.sd3 import SD3Text
from pangudraw.families.sdxl import SDXLText
from pangudraw.imageio import read_record
from pangudraw.loading.models import check_controlnet, load_expert
from pangudraw.loading.schedulers import PUBLISHED, check_scheduler_config
from pangudraw.render import request_defaults as model_defaults

SETS = ("sd15", "sd21", "sdxl-base", "sdxl-refiner", "sd3-medium", "sd35-large")
SETS += ("flux1-dev", "flux1-schnell")
# What each set must be recognised as: text stack, prediction type, the defaults a request
# gets (steps, guidance) when the user gives none.
EXPECTED = {
    "sd15": (SDText, "epsilon", 15, 7.0),
    "sd21": (SDText, "v_prediction", 15, 7.0),
    "sdxl-base": (SDXLText, "epsilon", 15, 7.0),
    "sdxl-refiner": (SDXLText, "epsilon", 15, 7.0),
    "sd3-medium": (SD3Text, "flow", 15, 7.0),
    "sd35-large": (SD3Text, "flow", 15, 7.0),
    "flux1-dev": (FluxText, "flow", 28, 3.5),
    "flux1-schnell": (FluxText, "flow", 4, 3.5),
}


def published(name: str, part: str) -> dict:
    return json.loads((PUBLISHED / name / part).read_text())


def tiny_twin(name: str, folder: Path) -> Path:
    """Tiny random weights of ``name``'s family, with the published model_index.json and
    scheduler config copied in as they are (every extra key and component included)."""
    build = {
        "sd15": lambda f: tiny_sd(f),
        "sd21": lambda f: tiny_sd(f, prediction_type="v_prediction"),
        "sdxl-base": lambda f: tiny_sdxl(f),
        "sdxl-refiner": lambda f: tiny_sdxl_refiner(f),
        "sd3-medium": lambda f: tiny_sd3(f),
        "sd35-large": lambda f: tiny_sd3(f),
        "flux1-dev": lambda f: tiny_flux(f),
        "flux1-schnell": lambda f: tiny_flux(f, guidance_embeds=False),
    }[name]
    build(folder)
    for part in ("model_index.json", "scheduler/scheduler_config.json"):
        shutil.copyfile(PUBLISHED / name / part, folder / part)
    return folder


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("published")
    return {name: tiny_twin(name, root / name) for name in SETS}


def test_every_published_folder_has_its_files():
    for name in SETS:
        index = published(name, "model_index.json")
        assert (PUBLISHED / name / "scheduler" / "scheduler_config.json").is_file()
        for component, spec in index.items():
            if not isinstance(spec, list):
                continue
            weightless = ("Tokenizer", "TokenizerFast", "Scheduler", "FeatureExtractor")
            if spec[0] in ("diffusers", "transformers") and not spec[1].endswith(weightless):
                assert (PUBLISHED / name / component / "config.json").is_file(), component


@pytest.mark.parametrize("name", SETS)
def test_published_scheduler_configs_are_accepted(name):
    config = published(name, "scheduler/scheduler_config.json")
    checked, schedule = check_scheduler_config(config, name)
    assert checked == config  # nothing dropped or "fixed": diffusers ignores the extra keys
    assert schedule.kind == ("flow" if "Flow" in config["_class_name"] else "vp")


def test_what_the_loop_relies_on_is_still_checked():
    config = published("sd15", "scheduler/scheduler_config.json")
    for change, message in [
        ({"_class_name": "os"}, "is not a diffusers scheduler"),
        ({"prediction_type": "noise"}, "prediction_type 'noise'"),
        ({"beta_end": 2.0}, "beta_end must be between 0 and 1"),
        ({"beta_start": "0.1"}, "beta_start must be a number"),
        ({"trained_betas": [0.01] * 999 + [1.0]}, "increasing, finite noise levels"),
        ({"num_train_timesteps": 1.5}, "num_train_timesteps must be an integer"),
        ({"timestep_spacing": "sideways"}, "timestep_spacing 'sideways'"),
        ({"steps_offset": -1}, "steps_offset must be an integer"),
    ]:
        with pytest.raises(UserError, match=message):
            check_scheduler_config(config | change, "x.json")
    flow = published("flux1-dev", "scheduler/scheduler_config.json")
    for change, message in [
        ({"shift": float("inf")}, "shift must be a finite positive number"),
        ({"shift": 0}, "shift must be a finite positive number"),
        ({"max_image_seq_len": 0}, "max_image_seq_len must be a positive integer"),
        ({"use_dynamic_shifting": "yes"}, "use_dynamic_shifting must be true or false"),
    ]:
        with pytest.raises(UserError, match=message):
            check_scheduler_config(flow | change, "x.json")


@pytest.mark.parametrize("name", SETS)
def test_a_published_folder_loads_is_recognised_and_generates(twins, name, tmp_path, capsys):
    text, prediction, steps, guidance = EXPECTED[name]
    expert = load_expert(twins[name])
    assert type(expert.text) is text and expert.prediction_type == prediction
    defaults = model_defaults(str(twins[name]))
    assert (defaults["steps"], defaults["guidance_scale"]) == (steps, guidance)
    if name == "sdxl-refiner":
        assert expert.text.aesthetic_score == 6.0 and len(expert.text.encoders) == 1
    if name == "sdxl-base":
        assert expert.text.force_zeros_for_empty_prompt
    out = tmp_path / "out.png"
    main(["generate", "a red apple", "--structure", str(twins[name])]
         + ["--steps", "2", "--seed", "0", "--size", "32", "-o", str(out)])  # fmt: skip
    err = capsys.readouterr().err.lower()  # progress bars only: no warning, no error
    assert not any(word in err for word in ("error", "warn", "ignored", "not expected"))
    record = read_record(out)
    assert (record["steps"], record["width"]) == (2, 32)


def _meta(cls, config: dict):
    """A diffusers model or transformers text model of ``config``'s real size, no weights."""
    from diffusers import ModelMixin

    with torch.device("meta"):
        if issubclass(cls, ModelMixin):
            return cls.from_config(config)
        return cls(cls.config_class.from_dict(config))


@pytest.mark.parametrize("name", SETS)
def test_published_networks_build_at_their_real_size_and_pass_our_checks(name):
    import diffusers
    import transformers

    from pangudraw.families import family_of_folder
    from pangudraw.limits import network_estimate
    from pangudraw.loading.components import component_class
    from pangudraw.loading.folder import assemble

    index = published(name, "model_index.json")
    modules = {}
    for component, spec in index.items():
        if not isinstance(spec, list) or spec[0] is None or "Tokenizer" in spec[1]:
            continue
        if component in ("safety_checker", "feature_extractor", "scheduler"):
            continue
        cls = component_class(PUBLISHED / name / "model_index.json", component, spec)
        assert cls in (getattr(diffusers, spec[1], None), getattr(transformers, spec[1], None))
        modules[component] = _meta(cls, published(name, f"{component}/config.json"))
    denoiser = modules.pop("unet", None) or modules.pop("transformer")
    scheduler = check_scheduler_config(published(name, "scheduler/scheduler_config.json"), name)
    family = family_of_folder(PUBLISHED / name)
    expert = assemble(name, family, index, modules.get, denoiser, modules["vae"], scheduler)
    assert expert.space.channels == (4 if name.startswith(("sd1", "sd2", "sdxl")) else 16)
    size = {"sd15": 512, "sd21": 768}.get(name, 1024)
    assert expert.sample_size == (size, size)
    tokens = (size // expert.space.factor) ** 2
    estimate = network_estimate(1, tokens, expert.feature_width, True, size * size, 512)
    assert 1e9 < estimate < 1e12  # real sizes: gigabytes, not bytes or petabytes


def test_published_controlnets_fit_their_base_and_no_other():
    from diffusers import ControlNetModel, UNet2DConditionModel

    from pangudraw.families import BY_NAME

    def expert(name):
        unet = _meta(UNet2DConditionModel, published(name, "unet/config.json"))
        return type("E", (), {"network": unet, "family": BY_NAME["sd"], "name": name})()

    sd15, sdxl = expert("sd15"), expert("sdxl-base")
    canny15 = _meta(ControlNetModel, published("controlnet-sd15-canny", "config.json"))
    cannyxl = _meta(ControlNetModel, published("controlnet-sdxl-canny", "config.json"))
    check_controlnet(canny15, "sd15-canny", sd15)
    check_controlnet(cannyxl, "sdxl-canny", sdxl)
    for net, base in ((canny15, sdxl), (cannyxl, sd15)):
        with pytest.raises(UserError, match="was built for another base"):
            check_controlnet(net, "cn", base)


def test_the_single_file_schedulers_are_the_published_files():
    from pangudraw.loading.schedulers import published_scheduler

    for name in ("sd15", "sdxl-base", "sd3-medium", "flux1-dev", "flux1-schnell"):
        assert published_scheduler(name) == published(name, "scheduler/scheduler_config.json")
