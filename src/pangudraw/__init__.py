"""pangu-draw: PanGu-Draw on diffusers.

Time-decoupled generation (a structure expert for high noise, a texture expert for low
noise) and Coop-Diffusion (experts with different latent spaces in one denoising loop).
Heavy imports (torch, diffusers) happen in the submodules, not here.
"""

__version__ = "0.1.0"
