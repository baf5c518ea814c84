"""Tiny seeded diffusers models and a toy dataset, built offline, for tests and benchmarks.

They have random weights: they exercise every code path in seconds but draw nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

TRAINING_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "timestep_spacing": "leading",
    "steps_offset": 1,
}


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (the base alphabet of CLIP's BPE)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    shifted = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(shifted)}
    return [table[b] for b in range(256)]


def byte_tokenizer(folder: Path, max_length: int = 16) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols (no merges): offline, tiny."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length
    )


def _text_config(hidden: int, projection: int = 0) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=514,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        projection_dim=projection or hidden,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )


def tiny_vae(latent_channels: int = 4, blocks: int = 2, seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(8, 16, 16, 16)[:blocks],
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=16,
    )


def tiny_sd(
    folder: Path,
    prediction_type: str = "epsilon",
    seed: int = 0,
    sample_size: int = 8,
    vae_seed: int = 0,
    latent_channels: int = 4,
    vae_blocks: int = 2,
    schedule: dict | None = None,
    unet_blocks: int = 2,
) -> StableDiffusionPipeline:
    """An SD 1.x/2.x-style pipeline saved to ``folder`` (SD2-like with ``"v_prediction"``).

    Models built with the same ``vae_seed``, ``latent_channels`` and ``vae_blocks`` share one
    latent space, as the SD 1.x family does; ``schedule`` overrides the training betas.
    """
    torch.manual_seed(seed)
    deep = unet_blocks - 2  # extra cross-attention blocks
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (1 + deep),
        up_block_types=("CrossAttnUpBlock2D",) * (1 + deep) + ("UpBlock2D",),
        block_out_channels=(16,) + (32,) * (1 + deep),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    text_encoder = CLIPTextModel(_text_config(32))
    training = {**TRAINING_SCHEDULE, **(schedule or {}), "prediction_type": prediction_type}
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(latent_channels, vae_blocks, seed=vae_seed),
        text_encoder=text_encoder,
        tokenizer=byte_tokenizer(folder / "_tok"),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**training),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return pipe


def tiny_controlnet(model_folder: Path, folder: Path, seed: int = 0) -> ControlNetModel:
    """A ControlNet for the UNet in ``model_folder``, with non-zero output convolutions.

    diffusers zero-initialises the ControlNet's output layers, which would make an untrained
    one a no-op; random ones make its effect visible in tests.
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(model_folder / "unet")
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=(8, 16), load_weights_from_unet=True
    )
    for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        torch.nn.init.normal_(block.weight, std=0.05)
    controlnet.save_pretrained(folder)
    return controlnet


def _sdxl_unet(sample_size: int, cross: int, numbers: int) -> UNet2DConditionModel:
    """SDXL's UNet in small: pooled text (32 wide) plus ``numbers`` size or score numbers."""
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        cross_attention_dim=cross,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=numbers * 8 + 32,
        norm_num_groups=8,
    )


def tiny_sdxl(folder: Path, seed: int = 0, sample_size: int = 8) -> StableDiffusionXLPipeline:
    """An SDXL-style pipeline (two text encoders, pooled embeddings, time ids)."""
    torch.manual_seed(seed)
    unet = _sdxl_unet(sample_size, 64, 6)
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(seed=seed),
        text_encoder=CLIPTextModel(_text_config(32)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(32, projection=32)),
        tokenizer=byte_tokenizer(folder / "_tok"),
        tokenizer_2=byte_tokenizer(folder / "_tok2"),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**TRAINING_SCHEDULE),
    )
    pipe.save_pretrained(folder)
    return pipe


def t5_tokenizer() -> T5TokenizerFast:
    """A T5 (unigram) tokenizer over printable ASCII characters: offline, tiny."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(chr(c), -1.0) for c in range(32, 127)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
    )


def tiny_t5() -> T5EncoderModel:
    config = T5Config(
        vocab_size=99,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config)


def tiny_flux(folder: Path, seed: int = 0, guidance_embeds: bool = True, vae_seed: int = 0):
    """A Flux.1-style pipeline (dev with ``guidance_embeds``, else schnell) saved to ``folder``:
    16-channel VAE with a shift factor, CLIP pooled + T5 text, packed 2x2 latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=[4, 4, 8],
    )
    text_encoder_2 = tiny_t5()
    vae = _flow_vae(vae_seed)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=vae,
        text_encoder=CLIPTextModel(_text_config(32)),
        tokenizer=byte_tokenizer(folder / "_tok"),
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )
    pipe.save_pretrained(folder)
    return pipe


def tiny_sd3(folder: Path, seed: int = 0, with_t5: bool = True):
    """An SD3-style pipeline saved to ``folder``: MMDiT with 2x2 patches, two projected CLIPs
    and T5 (or none: zeros in its place), 16-channel VAE with a shift factor."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=16,
    )
    text_encoder_3 = tiny_t5()
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_flow_vae(),
        text_encoder=CLIPTextModelWithProjection(_text_config(16, projection=32)),
        tokenizer=byte_tokenizer(folder / "_tok"),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(16, projection=32)),
        tokenizer_2=byte_tokenizer(folder / "_tok2"),
        text_encoder_3=text_encoder_3 if with_t5 else None,
        tokenizer_3=t5_tokenizer() if with_t5 else None,
        transformer=transformer,
    )
    pipe.save_pretrained(folder)
    return pipe


def _flow_vae(seed: int = 0) -> AutoencoderKL:
    """A 16-channel VAE with SD3/Flux's shift factor and scaling, no quant convs."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=16,
        norm_num_groups=4,
        sample_size=16,
        shift_factor=0.1159,
        scaling_factor=0.3611,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def tiny_lora(
    model_folder: Path,
    folder: Path,
    seed: int = 0,
    flux: bool = False,
    alpha: float = 4,
    text_encoder: bool = False,
    metadata: bool = False,
) -> Path:
    """A rank-4 LoRA with random (non-zero) weights on the attention projections of the
    UNet (or Flux transformer) in ``model_folder`` (and of its first CLIP text encoder with
    ``text_encoder``), saved as diffusers' ``save_lora_weights`` saves it: with ``metadata``
    the LoRA settings (``lora_alpha``) go into the file's header, as diffusers' training
    scripts write them; returns the .safetensors file."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    cls, pipeline = (
        (FluxTransformer2DModel, FluxPipeline)
        if flux
        else (UNet2DConditionModel, StableDiffusionPipeline)
    )
    network = cls.from_pretrained(model_folder / ("transformer" if flux else "unet"))
    config = LoraConfig(
        r=4, lora_alpha=alpha, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False
    )
    network.add_adapter(config)
    name = "transformer" if flux else "unet"
    layers = {f"{name}_lora_layers": get_peft_model_state_dict(network)}
    if metadata:
        layers[f"{name}_lora_adapter_metadata"] = config.to_dict()
    if text_encoder:
        encoder = CLIPTextModel.from_pretrained(model_folder / "text_encoder")
        text_config = LoraConfig(
            r=4, lora_alpha=alpha, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        )
        # (peft's own call: transformers' add_adapter wants a newer peft than PyPI has)
        encoder = inject_adapter_in_model(text_config, encoder)
        layers["text_encoder_lora_layers"] = get_peft_model_state_dict(encoder)
        if metadata:
            layers["text_encoder_lora_adapter_metadata"] = text_config.to_dict()
    pipeline.save_lora_weights(folder, **layers)
    return folder / "pytorch_lora_weights.safetensors"


def to_kohya_sgm(diffusers_file: Path, out: Path, layers_per_block: int) -> Path:
    """An SDXL UNet LoRA as kohya's sd-scripts name it: after the original UNet's blocks
    (``lora_unet_input_blocks_4_1_...``, ``middle_block_1``, ``output_blocks_N_1``), with
    lora_down/lora_up and alpha tensors."""
    from safetensors.torch import load_file, save_file

    per = layers_per_block + 1
    state = {}
    for key, value in load_file(diffusers_file).items():
        module, _, kind = key.removeprefix("unet.").rpartition(".lora_")
        parts = module.split(".")
        if parts[0] == "down_blocks":  # down_blocks.i.attentions.j -> input_blocks.N.1
            block = f"input_blocks.{1 + int(parts[1]) * per + int(parts[3])}.1"
        elif parts[0] == "up_blocks":  # up_blocks.i.attentions.j -> output_blocks.N.1
            block = f"output_blocks.{int(parts[1]) * per + int(parts[3])}.1"
        else:  # mid_block.attentions.0 -> middle_block.1
            block = "middle_block.1"
        rest = parts[3:] if parts[0] == "mid_block" else parts[4:]
        name = "lora_unet_" + ".".join([block, *rest]).replace(".", "_")
        state[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        if kind.startswith("A"):
            state[f"{name}.alpha"] = torch.tensor(float(value.shape[0]))
    save_file(state, out)
    return out


def to_kohya(diffusers_file: Path, out: Path) -> Path:
    """The same UNet LoRA with kohya's keys (lora_unet_..., lora_down/lora_up, alpha)."""
    from safetensors.torch import load_file, save_file

    state = {}
    for key, value in load_file(diffusers_file).items():
        module, _, kind = key.removeprefix("unet.").rpartition(".lora_")
        name = "lora_unet_" + module.replace(".", "_")
        state[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        if kind.startswith("A"):
            state[f"{name}.alpha"] = torch.tensor(float(value.shape[0]))
    save_file(state, out)
    return out


class GaussianDenoiser(torch.nn.Module):
    """The exact epsilon-prediction (or flow velocity ``n - x0`` with ``flow``) for data
    ``x0 ~ N(mu, tau^2)``, i.i.d. per element.

    Called like a diffusers UNet; with it the loop's output distribution is known in
    closed form, so samplers and fusion rules can be checked against the truth.
    """

    def __init__(self, schedule, mu: float, tau: float, channels: int, flow: bool = False):
        super().__init__()
        self.schedule, self.mu, self.tau, self.flow = schedule, mu, tau, flow
        self.config = _Config(block_out_channels=(channels,), in_channels=channels)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a dtype

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=False, **_):
        alpha, s = self.schedule.coefficients(self.schedule.t_to_sigma(float(timestep)))
        var = alpha**2 * self.tau**2 + s**2
        eps = s * (sample - alpha * self.mu) / var
        if self.flow:
            x0 = self.mu + alpha * self.tau**2 * (sample - alpha * self.mu) / var
            return (eps - x0,)
        return (eps,)


class _Config(dict):
    __getattr__ = dict.__getitem__


FLOW_SCHEDULE = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000}


def gaussian_expert(
    mu: float = 0.3,
    tau: float = 0.5,
    size: int = 16,
    unshuffle: int = 1,
    name: str = "gauss",
    flow: bool = False,
):
    """An :class:`~pangudraw.experts.Expert` in pixel space whose denoiser is exact: epsilon
    on the SD training schedule, or with ``flow`` a rectified-flow velocity model."""
    from pangudraw.expert import Expert
    from pangudraw.families import BY_NAME
    from pangudraw.families.sd import SDText
    from pangudraw.latents import LatentSpace
    from pangudraw.noise import DiscreteVPSchedule, RectifiedFlowSchedule

    if flow:
        schedule, config = RectifiedFlowSchedule(1000), dict(FLOW_SCHEDULE)
    else:
        schedule, config = (
            DiscreteVPSchedule.from_config(TRAINING_SCHEDULE),
            dict(TRAINING_SCHEDULE),
        )
    space = LatentSpace(None, unshuffle=unshuffle)
    return Expert(
        name=name,
        network=GaussianDenoiser(schedule, mu, tau, space.channels, flow),
        space=space,
        text=SDText(None, None),
        schedule=schedule,
        prediction_type="flow" if flow else "epsilon",
        scheduler_config=config,
        family=BY_NAME["sd"],  # called like a UNet
        sample_size=(size, size),
    )


def mini_dataset(folder: Path, n: int = 24, size: int = 32, small: int = 4, broken: int = 1):
    """An imagefolder of coloured shapes on white with captions ("red circle", ...).

    ``small`` extra images are half-size (for min_size filters) and ``broken`` files are
    not images at all (for decode-failure handling).
    """
    from PIL import Image, ImageDraw

    colours = {
        "red": (220, 30, 30),
        "green": (30, 160, 60),
        "blue": (40, 60, 220),
        "yellow": (230, 200, 20),
    }
    shapes = ("circle", "square")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n + small):
        colour, shape = list(colours)[i % 4], shapes[(i // 4) % 2]
        side = size if i < n else size // 2
        image = Image.new("RGB", (side, side), "white")
        box = [side // 4, side // 4, 3 * side // 4, 3 * side // 4]
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colours[colour])
        name = f"images/{i:04d}.png"
        image.save(folder / name)
        rows.append({"file_name": name, "text": f"{colour} {shape}"})
    for i in range(broken):
        name = f"images/broken-{i}.png"
        (folder / name).write_bytes(b"not a png")
        rows.append({"file_name": name, "text": "broken"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def tiny_sdxl_refiner(folder: Path, seed: int = 0, sample_size: int = 8):
    """An SDXL-refiner-style pipeline: bigG alone, aesthetic-score time ids (5 numbers)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    torch.manual_seed(seed)
    unet = _sdxl_unet(sample_size, 32, 5)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=tiny_vae(seed=seed),
        text_encoder=None,
        text_encoder_2=CLIPTextModelWithProjection(_text_config(32, projection=32)),
        tokenizer=None,
        tokenizer_2=byte_tokenizer(folder / "_tok2"),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**TRAINING_SCHEDULE),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )
    pipe.save_pretrained(folder)
    return pipe
