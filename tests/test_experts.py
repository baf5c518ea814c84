import json

import pytest
import torch

from pangudraw.errors import UserError
from pangudraw.families.sd import SDText
from pangudraw.families.sdxl import SDXLText
from pangudraw.loading.models import load_expert
from pangudraw.noise import from_x0


def test_sd_and_sdxl_families_load_with_their_schedules(models):
    sd, sd_v, sdxl = (load_expert(models[k]) for k in ("sd", "sd_v", "sdxl"))
    assert isinstance(sd.text, SDText) and isinstance(sdxl.text, SDXLText)
    assert (sd.prediction_type, sd_v.prediction_type) == ("epsilon", "v_prediction")
    assert sd.sample_size == (16, 16)
    assert sd.schedule.num_train_timesteps == 1000
    assert sd.space.same_as(sd_v.space)


def test_sdxl_conditioning_layout(models):
    expert = load_expert(models["sdxl"])
    cond = expert.encode_prompt(["apple", "pear"], None, guidance_scale=3.0, size=(24, 16))
    assert cond.embeds.shape == (4, 16, 64)
    assert cond.added["text_embeds"].shape == (4, 32)
    assert cond.added["time_ids"].tolist()[0] == [24, 16, 0, 0, 24, 16]
    # Empty negative prompt: zeros, as diffusers' force_zeros_for_empty_prompt.
    assert torch.count_nonzero(cond.embeds[:2]) == 0
    unguided = expert.encode_prompt(["apple"], None, guidance_scale=1.0)
    assert not unguided.guided and unguided.embeds.shape[0] == 1


def test_denoise_matches_the_network_through_the_noise_axis(models):
    """x0 from denoise, turned back into the network's own output type, is that output."""
    expert = load_expert(models["sd_v"])
    cond = expert.encode_prompt(["apple"])
    sigma = 3.0
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    alpha, s = expert.schedule.coefficients(sigma)
    t = expert.schedule.sigma_to_t(sigma)
    out = expert.network(alpha * x, torch.tensor(t), encoder_hidden_states=cond.embeds).sample
    x0 = expert.denoise(x, sigma, cond)
    torch.testing.assert_close(from_x0(x0, alpha * x, alpha, s, "v_prediction"), out)


def test_guidance_one_and_unguided_agree(models):
    expert = load_expert(models["sd"])
    x = torch.randn(1, 4, 8, 8)
    guided = expert.encode_prompt(["apple"], ["pear"], guidance_scale=2.0)
    plain = expert.encode_prompt(["apple"])
    torch.testing.assert_close(expert.denoise(x, 1.0, guided, 1.0), expert.denoise(x, 1.0, plain))
    assert not torch.allclose(expert.denoise(x, 1.0, guided, 2.0), expert.denoise(x, 1.0, plain))


def test_broken_model_index_is_a_user_error(tmp_path):
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_expert(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "X", "vae": []}))
    with pytest.raises(UserError, match="has no unet"):
        load_expert(tmp_path)


def test_hub_ids_download_only_when_named(models, monkeypatch):
    import huggingface_hub

    asked = []

    def fake_snapshot(repo_id, allow_patterns):
        asked.append((repo_id, allow_patterns))
        return str(models["sd"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    expert = load_expert("hf:someone/tiny-sd")
    assert asked == [("someone/tiny-sd", ["*.json", "*.txt", "*.model", "*.safetensors"])]
    assert expert.sample_size == (16, 16)
    with pytest.raises(UserError, match="does not exist .*hf:owner/name"):
        load_expert("someone/tiny-sd")  # without the prefix: a local path, never a download
    assert len(asked) == 1


def test_text_encoder_is_refused_when_its_hash_differs(tmp_path):
    from pangudraw.textenc import MINILM_SHA256, load_minilm, minilm_folder, sha256

    assert sha256(minilm_folder() / "model.safetensors") == MINILM_SHA256
    (tmp_path / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(UserError, match="has sha256 .* expected 53aa51172d142c89"):
        load_minilm(tmp_path)


def test_text_encoder_replaced_after_its_check_is_checked_again(tmp_path):
    """The hash is computed once per process, but a file changed since is hashed again."""
    import shutil

    from pangudraw.textenc import load_minilm, minilm_folder

    folder = tmp_path / "minilm"
    shutil.copytree(minilm_folder(), folder)
    load_minilm(folder, chinese=False)
    with open(folder / "model.safetensors", "r+b") as f:  # same size, one byte changed
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(UserError, match="has sha256"):
        load_minilm(folder, chinese=False)


def test_the_bundled_pair_encodes_a_prompt_once_and_a_lora_unshares(models, monkeypatch, tmp_path):
    """Every bundled model copies the same MiniLM: one generation encodes the prompt and
    the empty negative once for both experts (same images as encoding twice). A LoRA may
    change an encoder, so it ends the sharing."""
    from fixtures.tiny_models import tiny_lora
    from pangudraw.lora import LoraSpec, apply_loras
    from pangudraw.pipelines import generate

    structure, texture = load_expert("zoo:structure"), load_expert("zoo:texture")
    calls = []
    states = SDText._states

    def counted(self, encoder, prompts):
        calls.append(list(prompts))
        return states(self, encoder, prompts)

    monkeypatch.setattr(SDText, "_states", counted)
    once = generate(structure, texture, "red apple", num_inference_steps=2, seed=0).images
    assert calls == [["red apple"], [""]]
    structure.text.shared = texture.text.shared = None
    twice = generate(structure, texture, "red apple", num_inference_steps=2, seed=0).images
    assert len(calls) == 6 and torch.equal(once, twice)
    expert = load_expert(models["sd"])
    expert.text.shared = "alike"
    lora = tiny_lora(models["sd"], tmp_path / "lora")
    assert apply_loras(expert, [LoraSpec(str(lora))]).text.shared is None
