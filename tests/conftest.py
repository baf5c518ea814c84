from pathlib import Path

import pytest

from pangudraw.testing import tiny_sd, tiny_sdxl


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny seeded diffusers folders, saved with save_pretrained, loaded through our loader."""
    root = tmp_path_factory.mktemp("models")
    tiny_sd(root / "sd")
    tiny_sd(root / "sd_v", prediction_type="v_prediction", seed=1)
    tiny_sd(root / "sd_other", seed=2)
    tiny_sdxl(root / "sdxl")
    return {name: root / name for name in ("sd", "sd_v", "sd_other", "sdxl")}
