"""Single-file checkpoints (SD 1.x, SDXL, SDXL refiner, SD3 without and with T5, Flux.1 dev
and schnell, in their original key layouts) and model specs load
offline through the project's loader and equal their diffusers-folder twins."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from equality import run_cli as cli
from fixtures.single_file import write

FAMILIES = ("sd1", "sdxl", "sdxl-refiner", "sd3", "sd3-t5", "flux", "flux-schnell")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The folder with each family's single file and its diffusers twin."""
    folder = tmp_path_factory.mktemp("single")
    for i, family in enumerate(FAMILIES):
        write(folder, family, seed=i)
    return folder


def _modules(expert) -> dict[str, torch.nn.Module]:
    text = vars(expert.text)
    found = {"network": expert.network, "vae": expert.space.vae}
    for key, value in text.items():
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(item, torch.nn.Module):
                found[f"{key}{i}"] = item
    return found


@pytest.mark.parametrize("family", FAMILIES)
def test_a_single_file_equals_its_diffusers_folder_twin(files, family):
    from pangudraw.loading.models import load_expert
    from pangudraw.pipelines import generate

    folder = files
    single = load_expert(folder / f"{family}.safetensors")
    twin = load_expert(folder / family)
    a, b = _modules(single), _modules(twin)
    assert a.keys() == b.keys() and len(a) >= 3
    for name in a:
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert sa.keys() == sb.keys(), name
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{name}: {key}"
    assert type(single.text) is type(twin.text)
    published = {k: v for k, v in single.scheduler_config.items() if not k.startswith("_")}
    assert published.items() <= twin.scheduler_config.items()
    kwargs = {"num_inference_steps": 4, "seed": 3, "width": 32, "height": 24}
    image = generate(single, None, "a red apple", **kwargs).images
    assert image.shape == (1, 3, 24, 32) and image.std() > 0.01
    # Bit-equal weights; the output within float rounding (BLAS may take another path for
    # differently aligned buffers: 6e-7 seen on one CPU).
    twin_image = generate(twin, None, "a red apple", **kwargs).images
    assert (image - twin_image).abs().max() <= 1e-5


def test_single_files_load_with_the_network_switched_off(files, monkeypatch):
    from pangudraw.loading.models import load_expert

    def refuse(*args, **kwargs):
        raise OSError("the network is switched off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = files
    for family in FAMILIES:
        expert = load_expert(folder / f"{family}.safetensors")
        assert expert.encode_prompt(["a cat"], None, 4.0, (64, 64)).embeds.isfinite().all()


def test_the_bundled_clip_tokenizer_gives_openai_clip_ids():
    from pangudraw.original import clip_tokenizer

    # OpenAI CLIP's ids: a 320, photo 1125, of 539, cat 2368; start 49406, end 49407
    ids = clip_tokenizer("<|endoftext|>")("a photo of a cat", padding="max_length").input_ids
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407] and len(ids) == 77
    assert set(ids[7:]) == {49407}
    assert set(clip_tokenizer("!")("a cat", padding="max_length").input_ids[4:]) == {0}


def test_the_bundled_t5_tokenizer_gives_t5_ids():
    from pangudraw.original import t5_tokenizer

    # T5 v1.1's SentencePiece ids: Hello 8774, world 296, </s> 1; pad 0; 100 sentinels
    tokenizer = t5_tokenizer()
    assert tokenizer("Hello world").input_ids == [8774, 296, 1]
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=10).input_ids
    assert ids == [3, 9, 1202, 13, 3, 9, 1712, 1, 0, 0]
    assert len(tokenizer) == 32100 and tokenizer.convert_ids_to_tokens(32099) == "<extra_id_0>"


def test_generate_and_coop_take_single_files_and_coop_reproduces_from_the_png(files, tmp_path):
    from pangudraw.cli.main import main

    folder = files
    png = tmp_path / "apple.png"
    model = str(folder / "sdxl.safetensors")
    main(["generate", "a red apple", "--structure", model, "--size", "32", "--steps", "3",
          "-o", str(png)])  # fmt: skip
    with Image.open(png) as a:
        assert model in json.dumps(json.loads(a.text["pangu-draw"]))
        assert np.asarray(a, dtype=np.float32).std() > 1.0
    recipe = folder / "mix.toml"
    recipe.write_text(
        """prompt = "a red apple"
seed = 0
steps = 3

[canvas]
width = 32
height = 32
expert = "xl"

[[experts]]
name = "xl"
model = "sdxl.safetensors"
window = { t = [500, 1000] }

[[experts]]
name = "one"
model = "sd1.safetensors"
window = { t = [0, 500] }
""",
        encoding="utf-8",
    )
    out, again = tmp_path / "mix.png", tmp_path / "again.png"
    main(["coop", str(recipe), "-o", str(out)])
    main(["coop", "--from-png", str(out), "--allow-outside-paths", "-o", str(again)])
    with Image.open(out) as a, Image.open(again) as b:
        assert a.size == (32, 32) and np.asarray(a, dtype=np.float32).std() > 1.0
        assert a.tobytes() == b.tobytes()


def _variant(source, folder, name: str, change) -> str:
    """``source``'s tensors, changed, saved as ``folder/name``."""
    tensors = load_file(source)
    change(tensors)
    save_file(tensors, folder / name)
    return str(folder / name)


def test_bad_single_files_are_one_line_errors(files, tmp_path, capsys):
    folder = files
    out = tmp_path / "x.png"
    sd1 = folder / "sd1.safetensors"
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(sd1.read_bytes()[:5000])
    pickle = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(sd1)}, pickle)
    cases = {
        str(tmp_path / "none.safetensors"): "does not exist",
        str(truncated): "cannot read",
        str(pickle): "pickle checkpoint",
        _variant(sd1, tmp_path, "sd3.safetensors", lambda t: t.update(
            {"model.diffusion_model.joint_blocks.0.x.weight": torch.zeros(1)})): "no CLIP text",
        _variant(folder / "sd3-t5.safetensors", tmp_path, "sd3_t5.safetensors", lambda t: t.pop(
            "text_encoders.t5xxl.transformer.shared.weight")): "T5 has no shared.weight",
        _variant(sd1, tmp_path, "flux.safetensors", lambda t: t.update(
            {"double_blocks.0.img_attn.qkv.weight": torch.zeros(1)})): "Flux transformer alone",
        _variant(folder / "flux.safetensors", tmp_path, "flux_no_t5.safetensors", lambda t: [
            t.pop(k) for k in list(t) if k.startswith("text_encoders.t5xxl.")]): "lacks its T5-XXL",
        _variant(folder / "flux.safetensors", tmp_path, "flux_cut.safetensors", lambda t: t.pop(
            "model.diffusion_model.single_blocks.0.linear1.bias")): "Flux.1 checkpoint's layout",
        _variant(folder / "flux.safetensors", tmp_path, "flux_odd.safetensors", lambda t: t.update(
            {"model.diffusion_model.single_blocks.0.linear1.bias": torch.zeros(5)})): "not mapped",
        _variant(sd1, tmp_path, "sd2.safetensors", lambda t: t.update(
            {"cond_stage_model.model.token_embedding.weight": torch.zeros(1)})): "SD 2.x",
        _variant(sd1, tmp_path, "extra.safetensors", lambda t: t.update(
            {"something.else": torch.zeros(1)})): "does not have: something.else",
        _variant(sd1, tmp_path, "novae.safetensors", lambda t: [
            t.pop(k) for k in list(t) if k.startswith("first_stage_model.")]): "has no VAE",
        _variant(sd1, tmp_path, "lora.safetensors", lambda t: [
            t.pop(k) for k in list(t) if k.startswith("model.")]): "a LoRA goes to --lora",
        _variant(sd1, tmp_path, "cut_unet.safetensors", lambda t: t.pop(
            "model.diffusion_model.out.2.weight")): "has no out.2.weight",
    }  # fmt: skip
    for model, message in cases.items():
        code, err = cli(["generate", "a", "--structure", model, "-o", str(out)], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, (model, err)
        assert not out.exists()


def test_a_trusted_pickle_single_file_loads_with_allow_pickle(files, tmp_path):
    from pangudraw.loading.models import load_expert

    folder = files
    pickle = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(folder / "sd1.safetensors")}, pickle)
    a = load_expert(pickle, allow_pickle=True).network.state_dict()
    b = load_expert(folder / "sd1.safetensors").network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_the_ui_lists_single_file_checkpoints_but_not_other_safetensors(files, tmp_path):
    from pangudraw.ui.served import Served

    folder = files
    _variant(folder / "sd1.safetensors", folder, "vae_only.safetensors", lambda t: [
        t.pop(k) for k in list(t) if not k.startswith("first_stage_model.")])  # fmt: skip
    (folder / "junk.safetensors").write_bytes(b"not a safetensors file")
    (folder / "recipe.toml").write_text('prompt = "a cat"\n')  # TOML, but no model spec
    served = Served.find(tmp_path, [folder])
    labels = {label for label in served.generators if label.endswith(".safetensors")}
    assert labels == {f"{folder.name}/{f}.safetensors" for f in FAMILIES}
    specs = {label for label in served.generators if label.endswith(".toml")}
    assert specs == {f"{folder.name}/flux-spec.toml", f"{folder.name}/sd3-spec.toml"}


def test_a_lora_applies_to_a_single_file_model_as_to_its_twin(files, tmp_path):
    from fixtures.tiny_models import tiny_lora, to_kohya
    from pangudraw.loading.models import load_expert
    from pangudraw.lora import LoraSpec, apply_loras
    from pangudraw.pipelines import generate

    folder = files
    lora = tiny_lora(folder / "sd1", tmp_path / "lora")
    kohya = to_kohya(lora, tmp_path / "kohya.safetensors")

    def image(model, file=None, scale=1.0):
        expert = load_expert(model)
        if file is not None:
            expert = apply_loras(expert, [LoraSpec(str(file), scale)])
        kwargs = {"num_inference_steps": 3, "seed": 1, "width": 32, "height": 32}
        return generate(expert, None, "a red apple", **kwargs).images

    single = folder / "sd1.safetensors"
    with_lora = image(single, lora)
    assert torch.equal(with_lora, image(folder / "sd1", lora))
    assert torch.equal(with_lora, image(single, kohya))
    assert (with_lora - image(single)).abs().max() > 0.01
    assert torch.equal(image(single, lora, 0.0), image(single))


def test_an_inpainting_single_file_loads_and_asks_for_its_picture_and_mask(files, tmp_path, capsys):
    """Nine input channels (latents, mask, masked image): an inpainting model, which runs
    from a picture and a mask and is refused without them in one line (not a shape error
    in the middle of sampling)."""
    folder = files

    def widen(t):
        key = "model.diffusion_model.input_blocks.0.0.weight"
        t[key] = torch.cat([t[key], torch.zeros_like(t[key])[:, :1].repeat(1, 5, 1, 1)], dim=1)

    model = _variant(folder / "sd1.safetensors", tmp_path, "inpaint.safetensors", widen)
    out = tmp_path / "x.png"
    code, err = cli(["generate", "a", "--structure", model, "-o", str(out)], capsys)
    assert code == 2 and "is an inpainting model" in err and err.count("\n") == 1
    assert not out.exists()
    picture, where = tmp_path / "in.png", tmp_path / "mask.png"
    Image.new("RGB", (16, 16), (200, 40, 40)).save(picture)
    Image.new("L", (16, 16), 255).save(where)
    edit = ["--init-image", str(picture), "--mask", str(where), "--steps", "2"]
    code, err = cli(["generate", "a", "--structure", model, "-o", str(out), *edit], capsys)
    assert code == 0 and out.exists(), err


def test_what_training_leaves_in_a_file_is_dropped(files, tmp_path):
    """The DDPM buffers, an EMA copy and the VAE's training loss are not the model."""
    from pangudraw.loading.models import load_expert

    folder = files

    def leftovers(t):
        t["model_ema.decay"] = torch.tensor(0.9999)
        t["model_ema.diffusion_modelout2weight"] = torch.zeros(4, 32, 3, 3)
        t["first_stage_model.loss.discriminator.main.0.weight"] = torch.zeros(8, 3, 4, 4)
        t["betas"] = torch.zeros(1000)

    model = _variant(folder / "sd1.safetensors", tmp_path, "trained.safetensors", leftovers)
    a = load_expert(model).network.state_dict()
    b = load_expert(folder / "sd1.safetensors").network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def _flux1_tensors() -> dict:
    """Every tensor of FLUX.1-dev in Black Forest Labs' layout at its real output sizes
    (width 3,072, MLP 12,288, 19 double and 38 single blocks), one column each: the rows
    are what a mapping splits and reorders; every row holds a value of its own."""
    hidden, mlp = 3072, 12288
    rows = {
        "img_in": hidden,
        "txt_in": hidden,
        "time_in.in_layer": hidden,
        "time_in.out_layer": hidden,
        "vector_in.in_layer": hidden,
        "vector_in.out_layer": hidden,
        "guidance_in.in_layer": hidden,
        "guidance_in.out_layer": hidden,
        "final_layer.linear": 64,
        "final_layer.adaLN_modulation.1": 2 * hidden,
    }
    for i in range(19):
        for s in ("img", "txt"):
            rows |= {
                f"double_blocks.{i}.{s}_mod.lin": 6 * hidden,
                f"double_blocks.{i}.{s}_attn.qkv": 3 * hidden,
                f"double_blocks.{i}.{s}_attn.proj": hidden,
                f"double_blocks.{i}.{s}_mlp.0": mlp,
                f"double_blocks.{i}.{s}_mlp.2": hidden,
            }
    for i in range(38):
        rows |= {
            f"single_blocks.{i}.modulation.lin": 3 * hidden,
            f"single_blocks.{i}.linear1": 3 * hidden + mlp,
            f"single_blocks.{i}.linear2": hidden,
        }
    keys = [(f"{m}.{t}", n) for m, n in rows.items() for t in ("weight", "bias")]
    norms = [f"double_blocks.{i}.{s}_attn.norm" for i in range(19) for s in ("img", "txt")]
    norms += [f"single_blocks.{i}.norm" for i in range(38)]
    keys += [(f"{m}.{q}_norm.scale", 128) for m in norms for q in ("query", "key")]
    return {
        key: (torch.arange(n, dtype=torch.float64) + i * 1e5)[:, None]
        for i, (key, n) in enumerate(keys)
    }


def test_the_flux_mapping_equals_diffusers_at_flux1_size():
    """diffusers' own conversion fixes FLUX.1's width (3,072); ours reads it from the
    shapes. At FLUX.1's size both give the same tensors, and exactly the model's keys."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import (
        convert_flux_transformer_checkpoint_to_diffusers,
    )

    from pangudraw.original import flux_transformer_keys

    tensors = _flux1_tensors()
    ours = flux_transformer_keys(tensors, 3072)
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(tensors))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    with torch.device("meta"):
        model = FluxTransformer2DModel(num_layers=19, num_single_layers=38, guidance_embeds=True)
    assert set(model.state_dict()) == set(ours)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_model_spec_of_component_files_equals_the_whole_file(files, tmp_path, family):
    """Flux as published (the transformer, VAE, CLIP-L and T5 in four files, none with
    a prefix) and SD3.5 as published (MMDiT and VAE in one file with their prefixes, the
    three text encoders apart), named by a model spec, loaded directly and from the CLI."""
    from pangudraw.cli.main import main
    from pangudraw.loading.models import load_expert

    folder = files
    whole_file = folder / ("flux.safetensors" if family == "flux" else "sd3-t5.safetensors")
    spec, whole = load_expert(folder / f"{family}-spec.toml"), load_expert(whole_file)
    a, b = _modules(spec), _modules(whole)
    assert a.keys() == b.keys()
    for name in a:
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    out = tmp_path / "spec.png"
    argv = ["generate", "a red apple", "--structure", str(folder / f"{family}-spec.toml")]
    argv += ["--steps", "2", "--size", "32", "-o", str(out)]
    main(argv)
    record = json.loads(Image.open(out).text["pangu-draw"])
    assert record["structure"].endswith(f"{family}-spec.toml")


def test_bad_model_specs_are_one_line_errors(files, tmp_path, capsys):
    folder = files
    parts = folder / "flux-parts"

    def spec(name: str, text: str) -> str:
        (tmp_path / name).write_text(text)
        return str(tmp_path / name)

    def roles(**names) -> str:
        return "[model]\n" + "".join(f'{k} = "{parts / v}"\n' for k, v in names.items())

    full = {r: f"{r}.safetensors" for r in ("denoiser", "vae", "clip_l", "t5xxl")}
    without_t5 = {k: v for k, v in full.items() if k != "t5xxl"}
    cases = {
        spec("empty.toml", ""): "is not a model spec",
        spec("broken.toml", "[model\n"): "not valid TOML",
        spec("nodenoiser.toml", roles(vae="vae.safetensors")): "model.denoiser: missing",
        spec("unknown.toml", roles(**full, unet="x.safetensors")): "model.unet: unknown key",
        spec("missing.toml", roles(**full | {"vae": "none.safetensors"})): "does not exist",
        spec("not_st.toml", roles(**full | {"vae": "vae.bin"})): "expected a .safetensors",
        spec("no_t5.toml", roles(**without_t5)): "lacks its T5-XXL",
        spec("clip_g.toml", roles(**full | {"clip_g": "clip_l.safetensors"})): "does not have",
        spec("twice.toml", roles(**full | {"denoiser": "../flux.safetensors"})): "is in both",
        spec("swapped.toml", roles(**full | {"clip_l": "t5xxl.safetensors",
                                             "t5xxl": "clip_l.safetensors"})): "CLIP-L has no",
    }  # fmt: skip
    out = tmp_path / "x.png"
    for model, message in cases.items():
        code, err = cli(["generate", "a", "--structure", model, "-o", str(out)], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, (model, err)
        assert not out.exists()


def test_the_example_model_spec_reads_and_names_flux_files(tmp_path, capsys):
    """examples/flux-dev.toml parses; without the files beside it, the first missing one
    is named (paths are relative to the spec)."""
    from pathlib import Path

    spec = Path(__file__).parents[1] / "examples" / "flux-dev.toml"
    code, err = cli(
        ["generate", "a", "--structure", str(spec), "-o", str(tmp_path / "x.png")], capsys
    )
    assert (
        code == 2 and str(spec.parent / "flux1-dev.safetensors") in err and "does not exist" in err
    )


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_single_files_with_every_sampler_equal_diffusers_from_single_file(files, family):
    """A single file carries no scheduler: ours is the family's published config (with
    the keys that change DDIM: clip_sample, set_alpha_to_one), as diffusers'
    from_single_file gives, and each sampler is built from it as a diffusers user swaps
    schedulers (SAMPLER.from_config(pipe.scheduler.config))."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from pangudraw.coop import SAMPLERS
    from pangudraw.loading.models import load_expert
    from pangudraw.pipelines import generate

    file, twin = files / f"{family}.safetensors", files / family
    cls = StableDiffusionPipeline if family == "sd1" else StableDiffusionXLPipeline
    extra = {"safety_checker": None} if family == "sd1" else {}
    pipe = cls.from_single_file(str(file), config=str(twin), local_files_only=True, **extra)
    if family == "sdxl":
        # diffusers' own single-file conversion leaves this tiny bigG's last layer unset (on
        # the meta device); the twin holds the same weights (the twin test checks ours).
        from transformers import CLIPTextModelWithProjection

        pipe.text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(twin / "text_encoder_2")
    pipe.set_progress_bar_config(disable=True)
    published = pipe.scheduler.config
    expert = load_expert(file)
    for sampler, scheduler_class in SAMPLERS.items():
        pipe.scheduler = scheduler_class.from_config(published)
        theirs = pipe(
            "a red apple",
            num_inference_steps=4,
            guidance_scale=3.0,
            height=32,
            width=32,
            generator=torch.Generator().manual_seed(5),
            output_type="pt",
        ).images
        ours = generate(
            expert, None, "a red apple", num_inference_steps=4, guidance_scale=3.0,
            seed=5, width=32, height=32, sampler=sampler,
        ).images  # fmt: skip
        difference = ((ours * 255).round() - (theirs * 255).round()).abs().max()
        assert difference <= 1, f"{family} {sampler}: {difference}"


def _scaled_fp8(tensors: dict, per_row: bool) -> tuple[dict, dict]:
    """``tensors`` as ComfyUI's scaled fp8 files hold them (each matrix in float8 with
    its scale, the marker), and the values those files stand for."""
    fp8, stands_for = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for key, value in tensors.items():
        if value.dim() != 2 or not key.endswith(".weight"):
            fp8[key] = stands_for[key] = value
            continue
        top = value.float().abs().amax(dim=1 if per_row else None).clamp(min=1e-8)
        scale = top / 448  # float8_e4m3fn's largest value
        shaped = scale.reshape(-1, 1) if per_row else scale
        quantised = (value.float() / shaped).to(torch.float8_e4m3fn)
        fp8[key], fp8[key[: -len("weight")] + "scale_weight"] = quantised, scale
        fp8[key[: -len("weight")] + "scale_input"] = torch.ones(())
        stands_for[key] = quantised.float() * shaped
    return fp8, stands_for


@pytest.mark.parametrize("per_row", [False, True])
def test_a_scaled_fp8_text_encoder_loads_as_the_values_it_stands_for(files, tmp_path, per_row):
    """ComfyUI's ``t5xxl_fp8_e4m3fn_scaled.safetensors`` kind of file in a Flux spec: its
    weights are the float8 values times their scales, not the raw float8 values."""
    import shutil

    from safetensors.torch import load_file, save_file

    from pangudraw.loading.models import load_expert

    parts = tmp_path / "flux-parts"
    shutil.copytree(files / "flux-parts", parts)
    shutil.copy(files / "flux-spec.toml", tmp_path / "flux-spec.toml")
    t5 = load_file(parts / "t5xxl.safetensors")
    fp8, stands_for = _scaled_fp8(t5, per_row)
    save_file(fp8, parts / "t5xxl.safetensors")
    scaled = load_expert(tmp_path / "flux-spec.toml")
    save_file(stands_for, parts / "t5xxl.safetensors")
    plain = load_expert(tmp_path / "flux-spec.toml")
    a, b = _modules(scaled), _modules(plain)
    for name in a:
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    # and the scales matter: the raw float8 values are far from the weights
    t5_key = next(k for k in fp8 if k.endswith("q.weight"))
    assert (fp8[t5_key].float() - stands_for[t5_key]).abs().max() > 1e-3


def test_a_bad_scale_is_one_line(files, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    parts = tmp_path / "flux-parts"
    shutil.copytree(files / "flux-parts", parts)
    shutil.copy(files / "flux-spec.toml", tmp_path / "flux-spec.toml")
    t5 = load_file(parts / "t5xxl.safetensors")
    key = next(k for k in t5 if k.endswith("q.weight"))
    t5[key[: -len("weight")] + "scale_weight"] = torch.ones(3)
    save_file(t5, parts / "t5xxl.safetensors")
    code, err = cli(["generate", "x", "--structure", tmp_path / "flux-spec.toml"], capsys)
    assert code == 2 and "a scale is one number or one per row" in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def z_split(tmp_path_factory):
    from fixtures.single_file import write_z_image_split

    folder = tmp_path_factory.mktemp("z-split")
    return write_z_image_split(folder)


def test_z_image_from_comfyui_split_files_equals_its_folder(z_split, tmp_path, capsys):
    """ComfyUI's three files and a tokenizer folder, named by a model spec: the same
    networks as the diffusers folder, the same image."""
    from pangudraw.loading.models import load_expert
    from pangudraw.pipelines import generate

    spec, folder = load_expert(z_split), load_expert(z_split.parent / "z-image")
    assert spec.family.name == "z-image"
    a, b = _modules(spec), _modules(folder)
    assert a.keys() == b.keys()
    for name in a:
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    kwargs = {"seed": 3, "num_inference_steps": 3, "guidance_scale": 2.0, "height": 32, "width": 32}
    ours = generate(spec, None, "a red apple", **kwargs).images
    theirs = generate(folder, None, "a red apple", **kwargs).images
    assert (ours - theirs).abs().max() <= 1e-6 and ours.std() > 0.01
    out = tmp_path / "z.png"
    code, err = cli(["generate", "x", "--structure", z_split, "--steps", "2", "--size", "32",
                     "-o", out], capsys)  # fmt: skip
    assert code == 0, err


def _spec_with(spec, tmp_path, **changes):
    import tomllib

    table = tomllib.loads(spec.read_text())["model"] | changes
    table = {k: v for k, v in table.items() if v is not None}
    path = spec.parent / f"{tmp_path.name}.toml"
    path.write_text("[model]\n" + "".join(f'{k} = "{v}"\n' for k, v in table.items()))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"tokenizer": "nowhere"}, "is not a folder"),
        ({"tokenizer": None}, "tokenizer"),
        ({"text_encoder": "split/ae.safetensors"}, "Qwen3"),
        ({"vae": "split/qwen_3_4b.safetensors"}, "VAE"),
    ],
)
def test_bad_split_file_specs_are_one_line(z_split, tmp_path, capsys, changes, message):
    path = _spec_with(z_split, tmp_path, **changes)
    code, err = cli(["generate", "x", "--structure", path, "-o", tmp_path / "x.png"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_an_older_spec_naming_a_text_encoder_is_one_line(files, tmp_path, capsys):
    spec = tmp_path / "flux.toml"
    text = (files / "flux-spec.toml").read_text().replace("flux-parts/", f"{files}/flux-parts/")
    spec.write_text(text + 'text_encoder = "x.safetensors"\n')
    code, err = cli(["generate", "x", "--structure", spec, "-o", tmp_path / "x.png"], capsys)
    assert code == 2 and "text_encoder" in err and err.count("\n") == 1, err


@pytest.fixture(scope="module")
def wan_split(tmp_path_factory):
    from fixtures.single_file import write_wan_split

    return write_wan_split(tmp_path_factory.mktemp("wan-split"))


def test_wan22_from_comfyui_split_files_equals_its_folder(wan_split, tmp_path, capsys):
    """Wan2.2's high- and low-noise models, UMT5 and Wan 2.1's VAE as ComfyUI publishes
    them, with the boundary, tokenizer folder and scheduler named by the spec: the same
    pair as the diffusers folder, the same image, the folder's defaults."""
    from pangudraw.families import model_defaults
    from pangudraw.imageio import read_record
    from pangudraw.loading.models import load_expert
    from pangudraw.pipelines import generate

    spec, folder = load_expert(wan_split), load_expert(wan_split.parent / "wan")
    assert spec.family.name == "wan" and spec.boundary == folder.boundary == 875.0
    pairs = [(spec, folder), (spec.low_noise, folder.low_noise)]
    for ours, theirs in pairs:
        a, b = _modules(ours), _modules(theirs)
        assert a.keys() == b.keys()
        for name in a:
            sa, sb = a[name].state_dict(), b[name].state_dict()
            assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    kwargs = {"seed": 3, "num_inference_steps": 4, "guidance_scale": 3.0, "height": 32, "width": 32}
    ours = generate(spec, None, "a red apple", **kwargs).images
    assert torch.equal(ours, generate(folder, None, "a red apple", **kwargs).images)
    assert model_defaults(wan_split) == model_defaults(wan_split.parent / "wan")
    out = tmp_path / "wan.png"
    code, err = cli(["generate", "x", "--structure", wan_split, "--steps", "4", "--size", "32",
                     "-o", out], capsys)  # fmt: skip
    assert code == 0, err
    record = read_record(out)
    assert record["split"] == 875.0 and record["sampler"] == "unipc"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"boundary_ratio": None}, "boundary_ratio"),
        ({"denoiser_2": None}, "denoiser_2 takes over"),
        ({"scheduler": None}, "scheduler"),
        ({"vae": "split/umt5_xxl.safetensors"}, "Wan 2.1's VAE"),
        ({"denoiser_2": "split/umt5_xxl.safetensors"}, "Wan"),
    ],
)
def test_bad_wan_split_specs_are_one_line(wan_split, tmp_path, capsys, changes, message):
    import tomllib

    table = tomllib.loads(wan_split.read_text())["model"] | changes
    lines = [
        f"{k} = {v}\n" if isinstance(v, float) else f'{k} = "{v}"\n'
        for k, v in table.items()
        if v is not None
    ]
    path = wan_split.parent / f"{tmp_path.name}.toml"
    path.write_text("[model]\n" + "".join(lines))
    code, err = cli(["generate", "x", "--structure", path, "-o", tmp_path / "x.png"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.fixture(scope="module")
def qwen_split(tmp_path_factory):
    from fixtures.single_file import write_qwen_image_split

    return write_qwen_image_split(tmp_path_factory.mktemp("qwen-split"))


def test_qwen_image_from_comfyui_split_files_equals_its_folder(qwen_split, tmp_path, capsys):
    """The MMDiT, Qwen2.5-VL in its release's names and the VAE in Wan's, named by a spec
    with the tokenizer folder and scheduler: the folder's networks and image."""
    from pangudraw.loading.models import load_expert
    from pangudraw.pipelines import generate

    spec, folder = load_expert(qwen_split), load_expert(qwen_split.parent / "qwen-image")
    assert spec.family.name == "qwen-image" and spec.space.video
    a, b = _modules(spec), _modules(folder)
    assert a.keys() == b.keys()
    for name in a:
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    kwargs = {"seed": 3, "num_inference_steps": 3, "guidance_scale": 3.0, "height": 32, "width": 32}
    ours = generate(spec, None, "a red apple", **kwargs).images
    assert torch.equal(ours, generate(folder, None, "a red apple", **kwargs).images)
    assert ours.std() > 0.01
    code, err = cli(["generate", "x", "--structure", qwen_split, "--steps", "2", "--size", "32",
                     "-o", tmp_path / "q.png"], capsys)  # fmt: skip
    assert code == 0, err


def test_a_qwen_image_spec_with_another_text_encoder_is_one_line(qwen_split, tmp_path, capsys):
    text = qwen_split.read_text().replace("qwen_2.5_vl_7b", "qwen_image_vae")
    path = qwen_split.parent / f"{tmp_path.name}.toml"
    path.write_text(text)
    code, err = cli(["generate", "x", "--structure", path, "-o", tmp_path / "x.png"], capsys)
    assert code == 2 and "Qwen2.5-VL" in err and err.count("\n") == 1, err
