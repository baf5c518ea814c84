"""PanGu-Draw v3: MindSpore checkpoints converted without MindSpore, loaded and sampled as
the release samples (on a scaled-down release with the real layout: tests/pangu_fixture.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures.pangu_release import BUCKETS, mindspore_name, write_ckpt, write_release
from pangudraw.convert.mindspore import read_checkpoint
from pangudraw.convert.pangu import convert_pangu_v3
from pangudraw.errors import UserError


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pangu")
    truth = write_release(folder / "ckpt")
    report = convert_pangu_v3(
        folder / "ckpt" / "high.ckpt", folder / "ckpt" / "low.ckpt", folder / "out", buckets=BUCKETS
    )
    return {"folder": folder, "truth": truth, "report": report}


@pytest.fixture(scope="module")
def experts(release):
    from pangudraw.loading.models import load_expert

    out = release["folder"] / "out"
    return load_expert(out / "structure"), load_expert(out / "texture")


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def test_reader_joins_split_tensors_and_reads_float16_and_the_crc_trailer(release):
    ckpt = release["folder"] / "ckpt"
    low = {t.name: t for t in read_checkpoint(ckpt / "low.ckpt")}
    split = low["first_stage_model.decoder.conv_in.weight"]  # written over 3 values
    truth = release["truth"]["vae"].decoder.conv_in.weight
    assert split.shape == tuple(truth.shape)
    assert torch.equal(split.to_torch(), truth.detach())
    assert low["global_step"].to_torch().tolist() == [1000]
    high = {t.name: t for t in read_checkpoint(ckpt / "high.ckpt")}  # ends in crc_num
    half = high["model.diffusion_model.out.2.weight"]
    assert half.dtype == "Float16" and half.to_torch().dtype == torch.float16
    assert "model.diffusion_model.out.0.gamma" in high  # MindSpore's norm names


def test_converted_models_equal_the_ground_truth(release, experts):
    structure, texture = experts
    truth = release["truth"]
    assert _max_diff(texture.network, truth["texture"]) == 0.0
    assert _max_diff(structure.network, truth["structure"]) == 0.0
    assert _max_diff(texture.space.vae, truth["vae"]) == 0.0
    assert _max_diff(texture.text.encoders[0], truth["zh"]) == 0.0
    assert _max_diff(texture.text.encoders[1], truth["bigg"]) == 0.0
    # and they compute what the originals compute
    x = torch.randn(1, 4, 16, 16)
    cond = torch.randn(1, 77, 128)
    added = {"text_embeds": torch.randn(1, 64), "time_ids": torch.tensor([[1.0]])}
    with torch.no_grad():
        ours = texture.network(x, 500, cond, added_cond_kwargs=added).sample
        theirs = truth["texture"](x, 500, cond, added_cond_kwargs=added).sample
    torch.testing.assert_close(ours, theirs)
    assert sorted(release["report"].ignored) == [
        "conditioner.embedders.1.model.logit_scale",
        "global_step",
    ]
    assert release["report"].unmapped == []


def test_size_condition_is_the_bucket_index(experts):
    _, texture = experts
    cond = texture.encode_prompt(["猫"], None, 6.0, (32, 64))  # 64 wide, 32 high: bucket 0
    assert cond.added["time_ids"].tolist() == [[0.0], [0.0]]
    cond = texture.encode_prompt(["猫"], None, 6.0, (64, 32))
    assert cond.added["time_ids"].tolist() == [[2.0], [2.0]]
    with pytest.raises(UserError, match="only the sizes it was trained on"):
        texture.encode_prompt(["猫"], None, 6.0, (48, 48))


# Ids by the release's rules (FrozenCnCLIPEmbedder.tokenize on BERT-Chinese WordPiece):
# [CLS] 101, the pieces (lower-cased, accents stripped, CJK characters one by one), [SEP]
# 102, zero padding to 77; a long prompt keeps 75 pieces. Checked by hand against the
# vocabulary's line numbers (id = line - 1).
TOKENS = {
    "一只戴着帽子的猫": [101, 671, 1372, 2785, 4708, 2384, 2094, 4638, 4344, 102],
    "坐在海边看海浪的少年，黄昏": [
        101,
        1777,
        1762,
        3862,
        6804,
        4692,
        3862,
        3857,
        4638,
        2208,
        2399,
        8024,
        7942,
        3210,
        102,
    ],
    "Astronaut in a jungle, cold color palette": [
        101,
        8975,
        11343,
        8374,
        9194,
        8217,
        143,
        8392,
        10098,
        117,
        8792,
        8635,
        9916,
        9519,
        10780,
        8299,
        102,
    ],
    "红色 heart": [101, 5273, 5682, 10240, 102],
    "Café 8K!": [101, 8377, 12689, 106, 102],
}


def test_chinese_tokenizer_gives_the_release_ids(experts):
    tokenizer = experts[1].text.tokenizers[0]
    for text, ids in TOKENS.items():
        got = tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids
        assert got == ids + [0] * (77 - len(ids)), text
    long = tokenizer("猫" * 100, padding="max_length", max_length=77, truncation=True).input_ids
    assert long == [101] + [4344] * 75 + [102]
    # OpenCLIP's tokenizer for bigG: OpenAI CLIP's ids, padding 0
    clip = experts[1].text.tokenizers[1]
    ids = clip("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids[:8] == [49406, 320, 1125, 539, 320, 2368, 49407, 0]


def test_handoff_follows_the_release_rule(experts, monkeypatch):
    """The high model runs step 0 and every step whose previous timestep was >= 500."""
    from pangudraw.pipelines import generate

    structure, texture = experts
    calls = []
    for name, expert in (("high", structure), ("low", texture)):
        original = expert.predict

        def record(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(expert, "predict", record)
    generate(
        structure,
        texture,
        "猫",
        num_inference_steps=40,
        guidance_scale=6.0,
        width=64,
        height=64,
        handoff="release",
        styles=(("aesthetic", 4.0),),
    )
    # sgm's LegacyDDPMDiscretization: 40 roughly equally spaced steps from 999
    timesteps = np.linspace(999, 0, 40, endpoint=False).astype(int)
    expected = ["high" if i == 0 or timesteps[i - 1] >= 500 else "low" for i in range(40)]
    assert calls == expected
    assert calls.count("high") == 21  # 999 ... 524, and 499 (the one-step lag)


def test_style_branches_combine_as_the_release_guider():
    from pangudraw.families import Conditioning
    from pangudraw.families.base import guide as _guide

    uc, c, aes, cartoon = (torch.full((1, 1), v) for v in (1.0, 2.0, 5.0, -1.0))
    cond = Conditioning(torch.zeros(4, 1, 1), True, None, (4.0, 0.5))
    out = _guide(torch.cat([uc, c, aes, cartoon]), cond, 6.0)
    assert out.item() == 1.0 + 6.0 * (2.0 - 1.0) + 4.0 * (5.0 - 2.0) + 0.5 * (-1.0 - 2.0)


def cli(argv, capsys):
    from pangudraw.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


def test_generate_uses_the_release_settings_and_records_them(release, tmp_path, capsys):
    from pangudraw.cli.main import main

    out = release["folder"] / "out"
    png = tmp_path / "cat.png"
    argv = [
        "generate",
        "一只戴着帽子的猫",
        "--structure",
        str(out / "structure"),
        "--texture",
        str(out / "texture"),
        "--size",
        "64",
        "--steps",
        "6",
        "--seed",
        "3",
        "-o",
        str(png),
    ]
    main(argv)
    again = tmp_path / "again.png"
    main(argv[:-1] + [str(again)])
    with Image.open(png) as a, Image.open(again) as b:
        assert a.tobytes() == b.tobytes()
        record = json.loads(a.text["pangu-draw"])
        pixels = np.asarray(a, dtype=np.float32)
    assert record["prompt"] == "一只戴着帽子的猫"
    assert record["guidance_scale"] == 6.0 and record["styles"] == [["aesthetic", 4.0]]
    assert record["handoff"] == "release" and record["split"] == 500.0
    assert pixels.std() > 1.0
    code, err = cli(argv[:-2] + ["--size", "48", "-o", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "48x48 is not one of" in err and err.count("\n") == 1
    code, err = cli(argv + ["--style", "bogus"], capsys)
    assert code == 2 and "unknown style 'bogus'" in err
    code, err = cli(["generate", "a", "--style", "cartoon", "-o", str(tmp_path / "y.png")], capsys)
    assert code == 2 and "PanGu-Draw v3" in err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()


def _convert_cli(high, low, out, capsys):
    return cli(
        ["convert", "pangu-v3", "--high", str(high), "--low", str(low), "-o", str(out)], capsys
    )


def test_bad_checkpoints_are_one_line_errors_and_write_nothing(release, tmp_path, capsys):
    ckpt = release["folder"] / "ckpt"
    out = tmp_path / "out"
    # a missing file
    code, err = _convert_cli(ckpt / "nope.ckpt", ckpt / "low.ckpt", out, capsys)
    assert code == 2 and "does not exist" in err
    # a truncated file
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes((ckpt / "low.ckpt").read_bytes()[:5_000_000])
    code, err = _convert_cli(ckpt / "high.ckpt", cut, out, capsys)
    assert code == 2 and "truncated" in err
    # not a checkpoint at all
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x80\x04\x95 this is a pickle, not a protobuf" * 10)
    code, err = _convert_cli(ckpt / "high.ckpt", junk, out, capsys)
    assert code == 2 and "junk.ckpt" in err
    # a checkpoint of another model (an SD 1.x text encoder name, no PanGu parts)
    other = tmp_path / "other.ckpt"
    name = mindspore_name("cond_stage_model.transformer.text_model.final_layer_norm.weight")
    write_ckpt(other, {name: torch.ones(4)})
    code, err = _convert_cli(ckpt / "high.ckpt", other, out, capsys)
    assert code == 2 and "not PanGu-Draw v3's low-timestep checkpoint" in err
    # the two files swapped
    code, err = _convert_cli(ckpt / "low.ckpt", ckpt / "high.ckpt", out, capsys)
    assert code == 2 and "low-timestep" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_unmapped_tensors_are_refused_unless_allowed(release, tmp_path, capsys):
    ckpt = release["folder"] / "ckpt"
    tensors = {t.name: t.to_torch().clone() for t in read_checkpoint(ckpt / "low.ckpt")}
    tensors["model_ema.decay"] = torch.tensor([0.999])
    extra = tmp_path / "extra.ckpt"
    write_ckpt(extra, tensors)
    code, err = _convert_cli(ckpt / "high.ckpt", extra, tmp_path / "out", capsys)
    assert code == 2 and "model_ema.decay" in err and "--allow-unmapped" in err
    assert not (tmp_path / "out").exists()
    report = convert_pangu_v3(
        ckpt / "high.ckpt", extra, tmp_path / "out", allow_unmapped=True, buckets=BUCKETS
    )
    assert [u.split(": ")[1] for u in report.unmapped] == ["model_ema.decay"]
    assert (tmp_path / "out" / "structure" / "model_index.json").is_file()
    code, err = _convert_cli(ckpt / "high.ckpt", ckpt / "low.ckpt", tmp_path / "out", capsys)
    assert code == 2 and "exists" in err


def test_converted_experts_join_a_coop_recipe_with_a_bundled_model(release, tmp_path):
    """A PanGu expert lays out the image at one of its bucket sizes in its own latent space;
    the bundled texture model (another latent space) finishes it on the canvas."""
    from pangudraw.pipelines import coop_generate
    from pangudraw.recipes import load_recipe

    recipe = tmp_path / "mix.toml"
    recipe.write_text(
        f"""prompt = "red heart"
seed = 0
steps = 4
guidance = 5.0

[canvas]
width = 64
height = 64
expert = "texture"

[[experts]]
name = "pangu"
model = "{(release["folder"] / "out" / "structure").as_posix()}"
prompt = "红心"
size = [64, 64]
window = {{ t = [500, 1000] }}

[[experts]]
name = "texture"
model = "zoo:texture"
window = {{ t = [0, 500] }}
""",
        encoding="utf-8",
    )
    result = coop_generate(load_recipe(recipe))
    assert result.images.shape == (1, 3, 64, 64)
    assert torch.isfinite(result.images).all() and result.images.std() > 0.01


def test_the_pair_loads_its_shared_vae_and_text_encoders_once(release):
    from pangudraw.loading.models import ModelCache as Experts

    out = release["folder"] / "out"
    experts = Experts()
    structure, texture = experts.get(out / "structure"), experts.get(out / "texture")
    assert structure.space.vae is texture.space.vae  # hard-linked files: one module
    assert all(a is b for a, b in zip(structure.text.encoders, texture.text.encoders))
    assert structure.network is not texture.network
    assert torch.equal(texture.network.conv_out.weight, release["truth"]["texture"].conv_out.weight)


def test_a_converted_release_is_recognised_as_pangu_draw_v3(experts, release):
    from pangudraw.families import BY_NAME, family_of_folder

    structure, texture = experts
    assert structure.family is BY_NAME["pangu-v3"] and texture.family is BY_NAME["pangu-v3"]
    assert family_of_folder(release["folder"] / "out" / "structure") is BY_NAME["pangu-v3"]
