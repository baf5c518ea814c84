"""Our loop against diffusers' own pipelines on identical components, scheduler and seed:
the helpers the family test modules share.

Guidance is 2 in these tests: the random tiny UNets are chaotic under strong guidance (a
1e-6 nudge of diffusers' own initial latents moves its output by ~7e-4 at guidance 5), so
float rounding alone would exceed the 1e-4 tolerance there; at 2 diffusers' own
sensitivity is below the tolerance and any real difference shows.
"""

import torch

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
