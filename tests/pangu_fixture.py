"""A scaled-down PanGu-Draw v3 release written as real MindSpore checkpoints.

Random diffusers / transformers models (the ground truth) are mapped *back* to the
release's layout by hand here, independently of the converter (which maps forward with
diffusers' single-file code): sgm key names, OpenCLIP's fused attention, MindSpore's
``gamma``/``beta``/``embedding_table``. The checkpoints are protobuf written by a small
encoder below, one tensor split over several values and some tensors stored as float16.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

ZH_WIDTH, BIGG_WIDTH = 64, 64
SIZE_EMBEDDING = 256
BUCKETS = [(64, 32), (64, 64), (32, 64)]  # (width, height), like the release's list


def tiny_unet(seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(64, 64, 128),
        layers_per_block=2,
        cross_attention_dim=ZH_WIDTH + BIGG_WIDTH,
        attention_head_dim=(1, 1, 2),  # 64-wide heads, as the release
        transformer_layers_per_block=(1, 1, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=SIZE_EMBEDDING,
        projection_class_embeddings_input_dim=BIGG_WIDTH + SIZE_EMBEDDING,
    )
    _perturb(unet)
    return unet.eval()


def tiny_vae(
    seed: int,
    scaling_factor: float = 0.13025,
    layers: int = 2,
    flow: bool = False,
    shift_factor: float = 0.0609,
):
    """SD's VAE, or (``flow``) SD3's or Flux's: 16 channels, a shift factor, no quant convs."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=layers,
        latent_channels=16 if flow else 4,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor if flow else None,
        use_quant_conv=not flow,
        use_post_quant_conv=not flow,
    )
    _perturb(vae)
    return vae.eval()


def tiny_text(seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    zh = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=21128,
            hidden_size=ZH_WIDTH,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=1,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
        )
    )
    bigg = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=BIGG_WIDTH,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=1,
            max_position_embeddings=77,
            projection_dim=BIGG_WIDTH,
            hidden_act="gelu",
            eos_token_id=2,
        )
    )
    _perturb(zh), _perturb(bigg)
    return zh.eval(), bigg.eval()


def _perturb(model: torch.nn.Module) -> None:
    """Random values everywhere (norms and biases too), so a swapped tensor shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)


# ------------------------------------------------------------ diffusers -> sgm names


def _resnet(prefix: str, sd: dict, out: dict, dst: str) -> None:
    names = {
        "norm1": "in_layers.0",
        "conv1": "in_layers.2",
        "time_emb_proj": "emb_layers.1",
        "norm2": "out_layers.0",
        "conv2": "out_layers.3",
        "conv_shortcut": "skip_connection",
    }
    for key, value in sd.items():
        if key.startswith(prefix):
            head, tail = key[len(prefix) :].split(".", 1)
            out[dst + names[head] + "." + tail] = value


def _move(prefix: str, sd: dict, out: dict, dst: str) -> None:
    for key, value in sd.items():
        if key.startswith(prefix):
            out[dst + key[len(prefix) :]] = value


def unet_to_sgm(unet) -> dict:
    sd = unet.state_dict()
    cfg = unet.config
    per = cfg.layers_per_block
    out = {}
    simple = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for a, b in simple.items():
        for t in ("weight", "bias"):
            if f"{a}.{t}" in sd:  # SD 1.x has no vector condition (add_embedding)
                out[f"{b}.{t}"] = sd[f"{a}.{t}"]
    levels = len(cfg.block_out_channels)
    for i in range(levels):
        for j in range(per):
            k = 1 + i * (per + 1) + j
            _resnet(f"down_blocks.{i}.resnets.{j}.", sd, out, f"input_blocks.{k}.0.")
            _move(f"down_blocks.{i}.attentions.{j}.", sd, out, f"input_blocks.{k}.1.")
        if i < levels - 1:
            _move(
                f"down_blocks.{i}.downsamplers.0.conv.",
                sd,
                out,
                f"input_blocks.{(i + 1) * (per + 1)}.0.op.",
            )
        for j in range(per + 1):
            k = i * (per + 1) + j
            _resnet(f"up_blocks.{i}.resnets.{j}.", sd, out, f"output_blocks.{k}.0.")
            _move(f"up_blocks.{i}.attentions.{j}.", sd, out, f"output_blocks.{k}.1.")
        if i < levels - 1:
            k = i * (per + 1) + per
            slot = 2 if cfg.up_block_types[i].startswith("CrossAttn") else 1
            _move(f"up_blocks.{i}.upsamplers.0.", sd, out, f"output_blocks.{k}.{slot}.")
    _resnet("mid_block.resnets.0.", sd, out, "middle_block.0.")
    _move("mid_block.attentions.0.", sd, out, "middle_block.1.")
    _resnet("mid_block.resnets.1.", sd, out, "middle_block.2.")
    assert len(out) == len(sd), "the inverse UNet mapping missed keys"
    return out


def vae_to_sgm(vae) -> dict:
    sd = vae.state_dict()
    levels = len(vae.config.block_out_channels)
    out = {}

    def block(prefix, dst):
        for key, value in sd.items():
            if key.startswith(prefix):
                out[dst + key[len(prefix) :].replace("conv_shortcut", "nin_shortcut")] = value

    def attention(prefix, dst):
        names = {
            "group_norm": "norm",
            "to_q": "q",
            "to_k": "k",
            "to_v": "v",
            "to_out.0": "proj_out",
        }
        for a, b in names.items():
            for t in ("weight", "bias"):
                value = sd[f"{prefix}{a}.{t}"]
                out[f"{dst}{b}.{t}"] = value[..., None, None] if value.ndim == 2 else value

    for side in ("encoder", "decoder"):
        for a, b in (
            ("conv_in", "conv_in"),
            ("conv_out", "conv_out"),
            ("conv_norm_out", "norm_out"),
        ):
            for t in ("weight", "bias"):
                out[f"{side}.{b}.{t}"] = sd[f"{side}.{a}.{t}"]
        for j in range(2):
            block(f"{side}.mid_block.resnets.{j}.", f"{side}.mid.block_{j + 1}.")
        attention(f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.")
    for i in range(levels):
        block(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
        block(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
        up = levels - 1 - i
        block(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{up}.block.")
        block(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{up}.upsample.")
    for name in ("quant_conv", "post_quant_conv"):  # SD3's and Flux's VAEs have none
        for t in ("weight", "bias"):
            if f"{name}.{t}" in sd:
                out[f"{name}.{t}"] = sd[f"{name}.{t}"]
    assert len(out) == len(sd), "the inverse VAE mapping missed keys"
    return out


def bigg_to_openclip(model) -> dict:
    sd = model.state_dict()
    out = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].T.contiguous(),
        "logit_scale": torch.tensor(4.6052),
    }
    names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for i in range(model.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for t in ("weight", "bias"):
            qkv = [sd[f"{src}self_attn.{n}_proj.{t}"] for n in "qkv"]
            out[f"{dst}attn.in_proj_{t}"] = torch.cat(qkv)
            out[f"{dst}attn.out_proj.{t}"] = sd[f"{src}self_attn.out_proj.{t}"]
            for a, b in names.items():
                out[f"{dst}{b}.{t}"] = sd[f"{src}{a}.{t}"]
    return out


NORM = re.compile(
    r"(^|\.)(norm\d?|norm_out|group_norm|in_layers\.0|out_layers\.0|out\.0|layer_norm\d|"
    r"final_layer_norm|ln_\d|ln_final)\.(weight|bias)$"
)


def mindspore_name(key: str) -> str:
    """sgm (PyTorch) name -> the name MindSpore's modules give the same parameter."""
    if NORM.search(key):
        return key[: key.rindex(".")] + (".gamma" if key.endswith("weight") else ".beta")
    if key.endswith(("token_embedding.weight", "position_embedding.weight")):
        return key[: -len("weight")] + "embedding_table"
    return key


# ------------------------------------------------------------------ protobuf writer


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


DTYPE_NAMES = {torch.float32: "Float32", torch.float16: "Float16", torch.int32: "Int32"}


def _value(tag: str, dims: tuple, dtype: str, content: bytes) -> bytes:
    tensor = b"".join(_varint(1 << 3) + _varint(d) for d in dims)
    tensor += _field(2, dtype.encode()) + _field(3, content)
    return _field(1, _field(1, tag.encode()) + _field(2, tensor))


def write_ckpt(path: Path, tensors: dict, split: str | None = None, crc: bool = False) -> None:
    """``tensors`` (MindSpore names) as a ``.ckpt``; ``split`` is stored over 3 values."""
    with open(path, "wb") as f:
        for name, value in tensors.items():
            dtype = DTYPE_NAMES[value.dtype]
            dims = tuple(value.shape) or (0,)  # MindSpore writes a scalar's dims as [0]
            data = value.contiguous().numpy().tobytes()
            if name == split:
                step = -(-len(data) // 3)
                step += -step % value.element_size()
                for start in range(0, len(data), step):
                    f.write(_value(name, dims, dtype, data[start : start + step]))
            else:
                f.write(_value(name, dims, dtype, data))
        if crc:
            f.write(b"crc_num" + b"%010d" % 123456789)


def write_release(folder: Path, seed: int = 0) -> dict:
    """``folder/high.ckpt`` and ``folder/low.ckpt`` of a scaled-down release; returns the
    ground-truth modules."""
    folder.mkdir(parents=True, exist_ok=True)
    high, low = tiny_unet(seed), tiny_unet(seed + 1)
    vae = tiny_vae(seed + 2)
    zh, bigg = tiny_text(seed + 3)
    low_sd = {f"model.diffusion_model.{k}": v for k, v in unet_to_sgm(low).items()}
    low_sd |= {f"first_stage_model.{k}": v for k, v in vae_to_sgm(vae).items()}
    zh_sd = {
        k if k.startswith("text_model.") else f"text_model.{k}": v
        for k, v in zh.state_dict().items()
    }
    low_sd |= {f"conditioner.embedders.0.transformer.{k}": v for k, v in zh_sd.items()}
    low_sd |= {f"conditioner.embedders.1.model.{k}": v for k, v in bigg_to_openclip(bigg).items()}
    low_sd["global_step"] = torch.tensor([1000], dtype=torch.int32)
    high_sd = {f"model.diffusion_model.{k}": v for k, v in unet_to_sgm(high).items()}
    low_ms = {mindspore_name(k): v.detach().clone() for k, v in low_sd.items()}
    high_ms = {mindspore_name(k): v.detach().clone() for k, v in high_sd.items()}
    # One float16 tensor (its value is rounded in the ground truth too).
    half = "model.diffusion_model.out.2.weight"
    high_ms[half] = high_ms[half].half()
    with torch.no_grad():
        high.conv_out.weight.copy_(high_ms[half].float())
    write_ckpt(folder / "low.ckpt", low_ms, split="first_stage_model.decoder.conv_in.weight")
    write_ckpt(folder / "high.ckpt", high_ms, crc=True)
    return {"structure": high, "texture": low, "vae": vae, "zh": zh, "bigg": bigg}
