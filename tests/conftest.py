from pathlib import Path

import pytest

from fixtures.tiny_models import tiny_controlnet, tiny_flux, tiny_sd, tiny_sd3, tiny_sdxl


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny seeded diffusers folders, saved with save_pretrained, loaded through our loader."""
    root = tmp_path_factory.mktemp("models")
    tiny_sd(root / "sd")
    tiny_sd(root / "sd_v", prediction_type="v_prediction", seed=1)
    tiny_sd(root / "sd_other", seed=2)
    tiny_sdxl(root / "sdxl")
    # Another latent space (8 channels at 1/4) and another native resolution (32 px).
    tiny_sd(root / "sd_b", seed=3, vae_seed=7, latent_channels=8, vae_blocks=3)
    # Another training schedule (linear betas).
    tiny_sd(root / "sd_linear", seed=4, schedule={"beta_schedule": "linear", "beta_end": 0.02})
    tiny_controlnet(root / "sd", root / "cn_sd")
    tiny_controlnet(root / "sd_b", root / "cn_sd_b", seed=1)
    # A UNet that downsamples 4x under a VAE that downsamples 4x: 8-multiples of pixels give
    # latents the UNet cannot halve twice (SD 1.5 at 520 px, in small).
    tiny_sd(root / "sd_deep", seed=5, vae_seed=7, latent_channels=8, vae_blocks=3, unet_blocks=3)
    # Flux.1 dev (guidance embedding) and schnell: 16-channel VAE, packed latents, T5.
    tiny_flux(root / "flux_dev")
    tiny_flux(root / "flux_schnell", seed=1, guidance_embeds=False)
    names = ("sd", "sd_v", "sd_other", "sdxl", "sd_b", "sd_linear", "cn_sd", "cn_sd_b")
    # SD3: MMDiT, three text encoders (and without T5), 16-channel VAE.
    tiny_sd3(root / "sd3")
    tiny_sd3(root / "sd3_no_t5", seed=1, with_t5=False)
    names += ("flux_dev", "flux_schnell", "sd3", "sd3_no_t5", "sd_deep")
    return {name: root / name for name in names}


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory):
    """The web UI on the bundled models, in this process: (URL, outputs folder, port)."""
    pytest.importorskip("gradio")
    import socket

    from pangudraw.ui.served import Limits, Served
    from pangudraw.ui.server import serve

    outputs = tmp_path_factory.mktemp("outputs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    served = Served.find(outputs, (), Limits(max_side=128, max_steps=50, max_images=4))
    served.prepare()
    blocks = serve(served, port=port, concurrency=2, block=False, preview_every=2)
    yield f"http://127.0.0.1:{port}/", outputs, port
    blocks.close()
