"""Tiny SD 1.x, SDXL, SDXL-refiner, SD3 (without and with T5) and Flux.1 (dev, schnell)
models written as original-layout single files, and Flux as component files with a model
spec.

Random diffusers / transformers models (the ground truth) are mapped back to Stable
Diffusion's own key names by hand (:mod:`pangu_fixture`'s inverse mappings), and each is
also saved as the diffusers folder it would be (its twin), with the tokenizers and
schedulers those families publish.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pangu_fixture import _perturb, bigg_to_openclip, tiny_vae, unet_to_sgm, vae_to_sgm

CLIP_WIDTH, BIGG_WIDTH = 64, 64  # 64-wide heads, as the real text towers


def clip_l(seed: int, projection: bool = False, act: str | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=CLIP_WIDTH if not projection else BIGG_WIDTH,
        intermediate_size=128,
        num_hidden_layers=2 if not projection else 3,
        num_attention_heads=1,
        max_position_embeddings=77,
        projection_dim=BIGG_WIDTH,
        hidden_act=act or ("quick_gelu" if not projection else "gelu"),
        eos_token_id=2,
    )
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    _perturb(model)
    return model.eval()


def unet(seed: int, family: str):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    common = {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2 if family != "sdxl-refiner" else 1,
    }
    if family == "sd1":  # convolution projections, 8 heads, attention on all but the last level
        model = UNet2DConditionModel(
            **common,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64, 64),
            cross_attention_dim=CLIP_WIDTH,
            attention_head_dim=8,
        )
    else:  # linear projections, 64-wide heads, pooled text + size numbers
        numbers = 6 if family == "sdxl" else 5
        refiner = family == "sdxl-refiner"
        model = UNet2DConditionModel(
            **common,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
            if not refiner
            else ("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
            if not refiner
            else ("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(64, 64, 128),
            cross_attention_dim=BIGG_WIDTH + (0 if refiner else CLIP_WIDTH),
            attention_head_dim=(1, 1, 2),
            transformer_layers_per_block=(2, 2, 2) if refiner else (1, 1, 2),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=BIGG_WIDTH + numbers * 256,
        )
    _perturb(model)
    return model.eval()


def mmdit(seed: int):
    """SD3.5-medium-shaped in small: 64-wide heads, a second attention in the first block,
    RMS norms on queries and keys; the last block only reads the text (context_pre_only)."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    model = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        num_layers=2,
        attention_head_dim=64,
        num_attention_heads=1,
        joint_attention_dim=32,
        caption_projection_dim=64,
        pooled_projection_dim=2 * BIGG_WIDTH,
        out_channels=16,
        pos_embed_max_size=16,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    _perturb(model)
    return model.eval()


def t5(seed: int, width: int):
    """A T5 v1.1-shaped encoder (gated GELU) with T5's whole vocabulary, ``width`` wide."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=32128,
        d_model=width,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
    )
    return T5EncoderModel(config).eval()


def flux(seed: int, guidance: bool):
    """FLUX.1-shaped in small: one 128-wide head (Flux's width, split 16 + 56 + 56 by its
    rotary axes), one double and one single block."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=128,
        num_attention_heads=1,
        joint_attention_dim=32,
        pooled_projection_dim=CLIP_WIDTH,
        guidance_embeds=guidance,
        axes_dims_rope=(16, 56, 56),
    )
    _perturb(model)
    return model.eval()


def flux_to_original(model) -> dict:
    """diffusers' Flux names back to Black Forest Labs' (fused q/k/v and q/k/v/MLP, the
    final modulation's halves swapped, RMS norms as ``scale``)."""
    sd = model.state_dict()
    out = {}

    def put(dst: str, src: str) -> None:
        for t in ("weight", "bias"):
            if f"{src}.{t}" in sd:
                out[f"{dst}.{t}"] = sd[f"{src}.{t}"]

    embed = "time_text_embed."
    for dst, src in {
        "img_in": "x_embedder",
        "txt_in": "context_embedder",
        "time_in.in_layer": embed + "timestep_embedder.linear_1",
        "time_in.out_layer": embed + "timestep_embedder.linear_2",
        "vector_in.in_layer": embed + "text_embedder.linear_1",
        "vector_in.out_layer": embed + "text_embedder.linear_2",
        "guidance_in.in_layer": embed + "guidance_embedder.linear_1",
        "guidance_in.out_layer": embed + "guidance_embedder.linear_2",
        "final_layer.linear": "proj_out",
    }.items():
        put(dst, src)
    for t in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{t}"] = _swap_halves(sd[f"norm_out.linear.{t}"])
    for i in range(model.config.num_layers):
        d, a = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for dst, src in {
            "img_mod.lin": "norm1.linear",
            "txt_mod.lin": "norm1_context.linear",
            "img_attn.proj": "attn.to_out.0",
            "txt_attn.proj": "attn.to_add_out",
            "img_mlp.0": "ff.net.0.proj",
            "img_mlp.2": "ff.net.2",
            "txt_mlp.0": "ff_context.net.0.proj",
            "txt_mlp.2": "ff_context.net.2",
        }.items():
            put(d + dst, a + src)
        for t in ("weight", "bias"):
            out[f"{d}img_attn.qkv.{t}"] = torch.cat([sd[f"{a}attn.to_{n}.{t}"] for n in "qkv"])
            out[f"{d}txt_attn.qkv.{t}"] = torch.cat(
                [sd[f"{a}attn.add_{n}_proj.{t}"] for n in "qkv"]
            )
        for dst, src in {
            "img_attn.norm.query_norm": "attn.norm_q",
            "img_attn.norm.key_norm": "attn.norm_k",
            "txt_attn.norm.query_norm": "attn.norm_added_q",
            "txt_attn.norm.key_norm": "attn.norm_added_k",
        }.items():
            out[f"{d}{dst}.scale"] = sd[f"{a}{src}.weight"]
    for i in range(model.config.num_single_layers):
        d, a = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        put(d + "modulation.lin", a + "norm.linear")
        put(d + "linear2", a + "proj_out")
        for t in ("weight", "bias"):
            fused = [sd[f"{a}attn.to_{n}.{t}"] for n in "qkv"] + [sd[f"{a}proj_mlp.{t}"]]
            out[f"{d}linear1.{t}"] = torch.cat(fused)
        out[f"{d}norm.query_norm.scale"] = sd[f"{a}attn.norm_q.weight"]
        out[f"{d}norm.key_norm.scale"] = sd[f"{a}attn.norm_k.weight"]
    assert sum(v.numel() for v in out.values()) == sum(v.numel() for v in sd.values())
    return out


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """(shift, scale) <-> (scale, shift): the original MMDiT's and diffusers' orders."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first])


def mmdit_to_original(model) -> dict:
    """diffusers' SD3 names back to the original MMDiT's (fused q/k/v, adaLN halves)."""
    sd = model.state_dict()
    last = model.config.num_layers - 1
    out = {
        "pos_embed": sd["pos_embed.pos_embed"],
        "final_layer.linear.weight": sd["proj_out.weight"],
        "final_layer.linear.bias": sd["proj_out.bias"],
        "final_layer.adaLN_modulation.1.weight": _swap_halves(sd["norm_out.linear.weight"]),
        "final_layer.adaLN_modulation.1.bias": _swap_halves(sd["norm_out.linear.bias"]),
    }
    simple = {
        "pos_embed.proj": "x_embedder.proj",
        "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
        "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
        "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
        "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
        "context_embedder": "context_embedder",
    }
    for i in range(model.config.num_layers):
        a, x, c = (
            f"transformer_blocks.{i}.",
            f"joint_blocks.{i}.x_block.",
            f"joint_blocks.{i}.context_block.",
        )
        simple |= {
            a + "attn.to_out.0": x + "attn.proj",
            a + "norm1.linear": x + "adaLN_modulation.1",
            a + "ff.net.0.proj": x + "mlp.fc1",
            a + "ff.net.2": x + "mlp.fc2",
            a + "attn2.to_out.0": x + "attn2.proj",
        }
        if i != last:
            simple |= {
                a + "attn.to_add_out": c + "attn.proj",
                a + "norm1_context.linear": c + "adaLN_modulation.1",
                a + "ff_context.net.0.proj": c + "mlp.fc1",
                a + "ff_context.net.2": c + "mlp.fc2",
            }
        else:
            for t in ("weight", "bias"):
                out[f"{c}adaLN_modulation.1.{t}"] = _swap_halves(sd[f"{a}norm1_context.linear.{t}"])
        for t in ("weight", "bias"):
            for names, dst in (
                (("to_q", "to_k", "to_v"), x + "attn.qkv"),
                (("add_q_proj", "add_k_proj", "add_v_proj"), c + "attn.qkv"),
                (("attn2.to_q", "attn2.to_k", "attn2.to_v"), x + "attn2.qkv"),
            ):
                keys = [a + (n if n.startswith("attn2") else "attn." + n) + f".{t}" for n in names]
                if keys[0] in sd:
                    out[f"{dst}.{t}"] = torch.cat([sd[k] for k in keys])
        norms = {
            "attn.norm_q": x + "attn.ln_q",
            "attn.norm_k": x + "attn.ln_k",
            "attn.norm_added_q": c + "attn.ln_q",
            "attn.norm_added_k": c + "attn.ln_k",
            "attn2.norm_q": x + "attn2.ln_q",
            "attn2.norm_k": x + "attn2.ln_k",
        }
        for src, dst in norms.items():
            if f"{a}{src}.weight" in sd:
                out[f"{dst}.weight"] = sd[f"{a}{src}.weight"]
    for src, dst in simple.items():
        for t in ("weight", "bias"):
            if f"{src}.{t}" in sd:
                out[f"{dst}.{t}"] = sd[f"{src}.{t}"]
    assert sum(v.numel() for v in out.values()) == sum(v.numel() for v in sd.values())
    return out


def _clip_keys(model, prefix: str) -> dict:
    sd = model.state_dict()
    if not any(k.startswith("text_model.") for k in sd):  # transformers 5's layout
        sd = {"text_model." + k: v for k, v in sd.items()}
    return {prefix + k: v for k, v in sd.items()}


def write(folder: Path, family: str, seed: int = 0, dtype=torch.float16) -> None:
    """``folder/FAMILY.safetensors`` (the original layout, stored as ``dtype``) and
    ``folder/FAMILY`` (the diffusers twin, float32 values rounded the same way)."""
    from diffusers import (
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )
    from safetensors.torch import save_file

    from pangudraw import original as sgm

    if family.startswith("flux"):
        return write_flux(folder, family, seed, dtype)
    if family.startswith("sd3"):
        parts = {"transformer": mmdit(seed)}
        parts["vae"] = tiny_vae(seed + 1, 1.5305, layers=1, flow=True)
        original = mmdit_to_original(parts["transformer"])
    else:
        parts = {"unet": unet(seed, family)}
        parts["vae"] = tiny_vae(seed + 1, 0.18215 if family == "sd1" else 0.13025, layers=1)
        original = unet_to_sgm(parts["unet"])
    tensors = {"model.diffusion_model." + k: v for k, v in original.items()}
    tensors |= {"first_stage_model." + k: v for k, v in vae_to_sgm(parts["vae"]).items()}
    if family.startswith("sd3"):  # both CLIPs projected, in Hugging Face's layout
        parts["text_encoder"] = clip_l(seed + 2, projection=True, act="quick_gelu")
        parts["text_encoder_2"] = clip_l(seed + 3, projection=True)
        tensors |= _clip_keys(parts["text_encoder"], "text_encoders.clip_l.transformer.")
        tensors |= _clip_keys(parts["text_encoder_2"], "text_encoders.clip_g.transformer.")
        parts["text_encoder_3"] = None
        if family == "sd3-t5":  # the token embedding once, as Stability's files hold it
            parts["text_encoder_3"] = t5(seed + 4, parts["transformer"].config.joint_attention_dim)
            prefix = "text_encoders.t5xxl.transformer."
            tensors |= {
                prefix + k: v
                for k, v in parts["text_encoder_3"].state_dict().items()
                if k != "encoder.embed_tokens.weight"
            }
    elif family == "sd1":
        parts["text_encoder"] = clip_l(seed + 2)
        tensors |= _clip_keys(parts["text_encoder"], "cond_stage_model.transformer.")
    else:
        if family == "sdxl":
            parts["text_encoder"] = clip_l(seed + 2)
            tensors |= _clip_keys(parts["text_encoder"], "conditioner.embedders.0.transformer.")
        parts["text_encoder_2"] = clip_l(seed + 3, projection=True)
        prefix = (
            "conditioner.embedders.1.model."
            if family == "sdxl"
            else ("conditioner.embedders.0.model.")
        )
        tensors |= {prefix + k: v for k, v in bigg_to_openclip(parts["text_encoder_2"]).items()}
    # what Stable Diffusion's trainer saves beside the weights
    tensors["alphas_cumprod"] = torch.linspace(0.999, 0.001, 1000)
    tensors = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
    file = folder / f"{family}.safetensors"
    save_file(tensors, file)
    if family == "sd3-t5":  # as SD3.5 is published: MMDiT + VAE in one file, text encoders apart
        _write_parts(folder, "sd3", tensors, ("clip_l", "clip_g", "t5xxl"))

    _rounded({k: v for k, v in parts.items() if v is not None}, dtype)
    if family.startswith("sd3"):
        pipe = StableDiffusion3Pipeline(
            **parts,
            tokenizer=sgm.clip_tokenizer("<|endoftext|>"),
            tokenizer_2=sgm.clip_tokenizer("!"),
            tokenizer_3=None if parts["text_encoder_3"] is None else sgm.t5_tokenizer(),
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(published("sd3-medium")),
        )
    elif family == "sd1":
        pipe = StableDiffusionPipeline(
            **parts,
            tokenizer=sgm.clip_tokenizer("<|endoftext|>"),
            scheduler=PNDMScheduler.from_config(published("sd15")),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            **parts,
            tokenizer=sgm.clip_tokenizer("<|endoftext|>"),
            tokenizer_2=sgm.clip_tokenizer("!"),
            scheduler=EulerDiscreteScheduler.from_config(published("sdxl-base")),
        )
    else:
        pipe = StableDiffusionXLImg2ImgPipeline(
            **parts,
            text_encoder=None,
            tokenizer=None,
            tokenizer_2=sgm.clip_tokenizer("!"),
            scheduler=EulerDiscreteScheduler.from_config(published("sdxl-base")),
            requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False,
        )
    _save_with_published_scheduler(pipe, folder / family)


def _rounded(parts: dict, dtype) -> None:
    """The twin holds the values the file holds."""
    with torch.no_grad():
        for module in parts.values():
            for p in [*module.parameters(), *module.buffers()]:
                if p.is_floating_point():
                    p.copy_(p.to(dtype).float())


def _write_parts(folder: Path, name: str, tensors: dict, roles: tuple[str, ...]) -> None:
    """``tensors`` (a whole checkpoint) as component files in ``folder/NAME-parts/``: each
    role's tensors without their prefix; what no role takes (SD3.5: the MMDiT with its
    VAE) in ``denoiser.safetensors`` with its prefixes; and the model spec
    ``folder/NAME-spec.toml`` naming them."""
    from safetensors.torch import save_file

    from pangudraw.loading.single import ROLES

    parts = folder / f"{name}-parts"
    parts.mkdir()
    rest = dict(tensors)
    for role in roles:
        prefix = ROLES[role]
        part = {k[len(prefix) :]: rest.pop(k) for k in list(rest) if k.startswith(prefix)}
        save_file(part, parts / f"{role}.safetensors")
    if rest:
        save_file(rest, parts / "denoiser.safetensors")
        roles = ("denoiser", *roles)
    lines = [f'{role} = "{parts.name}/{role}.safetensors"' for role in roles]
    (folder / f"{name}-spec.toml").write_text("[model]\n" + "\n".join(lines) + "\n")


def write_flux(folder: Path, family: str, seed: int, dtype) -> None:
    """``FAMILY.safetensors`` as ComfyUI saves a whole Flux checkpoint (Black Forest Labs'
    transformer names, the VAE, CLIP-L with the projection ComfyUI's file carries, T5-XXL),
    its diffusers twin, and for dev also the component files as published (no prefixes)
    in ``flux-parts/`` with the model spec ``flux-spec.toml`` naming them."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from safetensors.torch import save_file

    from pangudraw import original as sgm
    from pangudraw.loading.single import ROLES

    dev = family == "flux"
    parts = {
        "transformer": flux(seed, guidance=dev),
        "vae": tiny_vae(seed + 1, 0.3611, layers=1, flow=True, shift_factor=0.1159),
        "text_encoder": clip_l(seed + 2),
        "text_encoder_2": t5(seed + 3, 32),
    }
    torch.manual_seed(seed + 4)
    components = {
        "denoiser": flux_to_original(parts["transformer"]),
        "vae": vae_to_sgm(parts["vae"]),
        "clip_l": _clip_keys(parts["text_encoder"], "")
        | {"text_projection.weight": torch.randn(CLIP_WIDTH, CLIP_WIDTH)},
        "t5xxl": {
            k: v
            for k, v in parts["text_encoder_2"].state_dict().items()
            if k != "encoder.embed_tokens.weight"
        },
    }
    whole = {ROLES[role] + k: v for role, part in components.items() for k, v in part.items()}
    whole = {k: v.to(dtype).contiguous() for k, v in whole.items()}
    save_file(whole, folder / f"{family}.safetensors")
    if dev:
        _write_parts(folder, "flux", whole, tuple(components))
    _rounded(parts, dtype)
    scheduler = published("flux1-dev" if dev else "flux1-schnell")
    pipe = FluxPipeline(
        **parts,
        tokenizer=sgm.clip_tokenizer("<|endoftext|>"),
        tokenizer_2=sgm.t5_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler),
    )
    _save_with_published_scheduler(pipe, folder / family)


def published(model: str) -> dict:
    from pangudraw.loading.schedulers import published_scheduler

    return published_scheduler(model)


def _save_with_published_scheduler(pipe, folder: Path) -> None:
    """``pipe`` saved, its scheduler config the published file itself (as a downloaded
    folder has it: with the keys its class does not take)."""
    from pangudraw.loading.schedulers import PUBLISHED

    pipe.save_pretrained(folder)
    model = {
        "PNDMScheduler": "sd15",
        "EulerDiscreteScheduler": "sdxl-base",
    }.get(type(pipe.scheduler).__name__)
    if model is None:
        dev = getattr(pipe.scheduler.config, "use_dynamic_shifting", False)
        model = "flux1-dev" if dev else "flux1-schnell"
        if type(pipe).__name__ == "StableDiffusion3Pipeline":
            model = "sd3-medium"
    source = PUBLISHED / model / "scheduler" / "scheduler_config.json"
    (folder / "scheduler" / "scheduler_config.json").write_bytes(source.read_bytes())
