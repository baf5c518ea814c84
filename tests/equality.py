"""Our loop against diffusers' own pipelines on identical components, scheduler and seed:
the helpers the family test modules share.

Guidance is 2 in these tests: the random tiny UNets are chaotic under strong guidance (a
1e-6 nudge of diffusers' own initial latents moves its output by ~7e-4 at guidance 5), so
float rounding alone would exceed the 1e-4 tolerance there; at 2 diffusers' own
sensitivity is below the tolerance and any real difference shows.
"""

import numpy as np
import torch
from PIL import Image

from pangudraw.coop import SAMPLERS
from pangudraw.pipelines import generate

PROMPT = "a red apple"
TOL = 1e-4


def single(expert, sampler: str, **kwargs) -> torch.Tensor:
    """Our single-expert sampling at the settings ``reference`` gives diffusers."""
    return generate(expert, None, PROMPT, seed=3, sampler=sampler, **kwargs).images


def reference(pipe, sampler: str, **kwargs) -> torch.Tensor:
    pipe.scheduler = SAMPLERS[sampler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        PROMPT, generator=torch.Generator().manual_seed(3), output_type="pt", **kwargs
    ).images


def run_cli(argv, capsys) -> tuple[int, str]:
    """``pangu-draw ARGV`` in this process: (exit code, what it wrote to stderr)."""
    from pangudraw.cli.main import main

    try:
        main([str(a) for a in argv])
    except SystemExit as exit:
        return exit.code, capsys.readouterr().err
    return 0, capsys.readouterr().err


def transformer_lora(folder, pipeline, out, seed: int = 1):
    """A rank-4 LoRA with random weights on the attention projections of ``folder``'s
    transformer, saved as ``pipeline.save_lora_weights`` saves it; returns the file."""
    import diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    index = __import__("json").loads((folder / "model_index.json").read_text())
    cls = getattr(diffusers, index["transformer"][1])
    torch.manual_seed(seed)
    network = cls.from_pretrained(folder / "transformer")
    config = LoraConfig(
        r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False
    )
    layers = get_peft_model_state_dict(inject_adapter_in_model(config, network))
    pipeline.save_lora_weights(out, transformer_lora_layers=layers)
    return out / "pytorch_lora_weights.safetensors"


def lora_latents(folder, pipeline, lora, scale: float, **call) -> tuple:
    """(ours, diffusers') latents of one expert of ``folder`` with ``lora`` at ``scale``,
    guidance off, seed 3: ours through ModelCache, theirs through ``load_lora_weights`` and
    ``set_adapters``; and ours without the LoRA (to see that it did something)."""
    from pangudraw.loading.models import ModelCache, load_expert
    from pangudraw.lora import LoraSpec

    kwargs = {"height": 32, "width": 32, "num_inference_steps": 4}
    expert = ModelCache().get(folder, [LoraSpec(str(lora), scale)])
    ours = generate(expert, None, PROMPT, seed=3, guidance_scale=1.0, **kwargs).latents
    plain = generate(load_expert(folder), None, PROMPT, seed=3, guidance_scale=1.0, **kwargs)
    pipe = pipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora), adapter_name="a")
    pipe.set_adapters(["a"], [scale])
    generator = torch.Generator().manual_seed(3)
    out = pipe(prompt=PROMPT, generator=generator, output_type="latent", **kwargs, **call)
    theirs = out.frames[:, :, 0] if hasattr(out, "frames") else out.images
    return ours, theirs, plain.latents


def picture(path, size=(16, 16), seed=0):
    """A smooth random picture (blocks upsampled), saved as PNG; returns its path."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path)
    return path


def mask(path, size=(16, 16), box=(4, 4, 12, 12)):
    """White (repaint) inside ``box``, black (keep) outside."""
    array = np.zeros((size[1], size[0]), dtype=np.uint8)
    x0, y0, x1, y1 = box
    array[y0:y1, x0:x1] = 255
    Image.fromarray(array).save(path)
    return path
