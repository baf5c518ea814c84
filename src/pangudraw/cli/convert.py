"""``pangu-draw convert``: released checkpoints into model folders pangu-draw loads."""

from __future__ import annotations

from pathlib import Path

import click

from .shared import FILE, FOLDER

DTYPES = ("same", "float16", "bfloat16", "float32")


@click.group("convert")
def group() -> None:
    """Convert released checkpoints (no framework but PyTorch needed)."""


@group.command("pangu-v3")
@click.option(
    "--high",
    type=FILE,
    required=True,
    help="pangu_high_timestamp-*.ckpt (the structure UNet, t >= 500).",
)
@click.option(
    "--low",
    type=FILE,
    required=True,
    help="pangu_low_timestamp-*.ckpt (the texture UNet, both text encoders, the VAE).",
)
@click.option(
    "-o",
    "--output",
    type=FOLDER,
    required=True,
    help="New folder: OUTPUT/structure and OUTPUT/texture are written in it.",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default="same",
    show_default=True,
    help="Weight type of the written files (same: as stored in the checkpoints).",
)
@click.option(
    "--allow-unmapped",
    is_flag=True,
    help="Drop tensors the conversion does not know instead of refusing the checkpoint.",
)
def pangu_v3(high: Path, low: Path, output: Path, dtype: str, allow_unmapped: bool) -> None:
    """PanGu-Draw v3's MindSpore checkpoints as two diffusers folders, without MindSpore.

    The checkpoints are read as they are (a memory-mapped protobuf), mapped to diffusers'
    SDXL layout and written as safetensors; then:

    \b
    pangu-draw generate "一只戴着帽子的猫" \\
        --structure OUTPUT/structure --texture OUTPUT/texture
    """
    from ..errors import UserError
    from ..files import check_output_folder

    if output.exists():
        raise UserError(f"{output} exists; give a new folder for the converted models")
    check_output_folder(output)
    for path in (high, low):
        if not path.is_file():
            raise UserError(f"checkpoint {path} does not exist")

    import torch
    from tqdm import tqdm

    from ..convert.pangu import convert_pangu_v3
    from .shared import quiet_libraries

    quiet_libraries()
    total = high.stat().st_size + low.stat().st_size
    types = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    with tqdm(total=total, unit="B", unit_scale=True, desc="reading", leave=False) as bar:
        report = convert_pangu_v3(
            high,
            low,
            output,
            allow_unmapped=allow_unmapped,
            dtype=types.get(dtype),
            progress=bar.update,
        )
    if report.unmapped:
        click.echo(f"dropped {len(report.unmapped)} unmapped tensor(s): {report.unmapped[:5]}")
    if report.ignored:
        click.echo(f"ignored {len(report.ignored)} bookkeeping tensor(s): {report.ignored[:5]}")
    click.echo(f"converted {report.tensors} tensors")
    click.echo(str(output / "structure"))
    click.echo(str(output / "texture"))
