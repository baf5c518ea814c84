"""Measure a trained VAE on its data: reconstruction PSNR, latent statistics, a grid.

    .venv/bin/python scripts/check_vae.py src/pangudraw/zoo/models/vae_a data/emoji-google

Prints PSNR (median, 10th and 90th percentile over 256 random images, [-1, 1] range),
the scaled latents' std and mean, per-channel stds and the neighbour correlation, and
writes MODEL_samples_check.png (12 random images over their reconstructions) to /tmp.
"""

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from pangudraw.imageio import save_grid
from pangudraw.latents import LatentSpace
from pangudraw.train.data import load_records, stage_pool

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("model", type=Path)
parser.add_argument("data", type=Path)
parser.add_argument("--images", type=int, default=256)
args = parser.parse_args()

space = LatentSpace(AutoencoderKL.from_pretrained(args.model, torch_dtype=torch.float32).eval())
records = load_records(args.data)
pick = torch.randperm(len(records), generator=torch.Generator().manual_seed(0))[: args.images]
pool = stage_pool([records[i] for i in pick.tolist()], 64, 0)
x = pool.pixels.float() / 127.5 - 1
with torch.no_grad():
    z = space.encode(x)
    rec = space.decode(z).clamp(-1, 1)
psnr = 10 * torch.log10(4 / ((rec - x) ** 2).mean((1, 2, 3)))
print(
    f"PSNR dB: median {psnr.median():.2f}, p10 {psnr.quantile(0.1):.2f}, "
    f"p90 {psnr.quantile(0.9):.2f}"
)
print(
    f"scaled latents: std {z.std():.3f}, mean {z.mean():.3f}, per channel "
    f"{[round(v, 3) for v in z.std((0, 2, 3)).tolist()]}"
)
left, right = z[..., :-1].flatten(), z[..., 1:].flatten()
print(f"neighbour correlation {torch.corrcoef(torch.stack([left, right]))[0, 1]:.3f}")
out = Path("/tmp") / f"{args.model.name}_samples_check.png"
save_grid((torch.cat([x[:12], rec[:12]]) / 2 + 0.5).clamp(0, 1), out, 12)
print(out)
