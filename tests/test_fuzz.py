"""Every reader of a file a user did not write, under 2,000 mutated inputs each (hypothesis,
derandomized so CI sees the same cases): it loads cleanly or raises one :class:`UserError`,
never another exception, a hang (10 s alarm per input) or a runaway allocation (the
process's peak memory may not grow by a GiB over a test).

The mutations start from valid files (safetensors single files and LoRAs, MindSpore
checkpoints, pangu-draw PNGs, Coop recipes, model specs, tokenizer folders) and overwrite,
cut and insert bytes; the safetensors headers and scheduler configs are also rebuilt with
hostile values (huge shapes and offsets, wrong types).
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import signal
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from pangudraw.errors import UserError

EXAMPLES = 2000
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _apply(valid: bytes, edits, cut: int, inserts) -> bytes:
    data = bytearray(valid)
    for at, value in edits:
        data[at % len(data)] = value
    for at, chunk in inserts:
        data[at % (len(data) + 1) : at % (len(data) + 1)] = chunk
    return bytes(data[: max(cut, 1)] if cut < len(data) else data)


def mutations(valid: bytes):
    """Bytes near ``valid``: a few overwritten, maybe cut short, maybe with insertions."""
    n = len(valid)
    return st.builds(
        _apply,
        st.just(valid),
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 255)), max_size=8),
        st.one_of(st.just(n), st.integers(0, n)),
        st.lists(st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=8)), max_size=2),
    )


@contextlib.contextmanager
def guarded():
    """Allow a clean result or a UserError; fail on a hang."""

    def hang(signum, frame):
        raise AssertionError("a reader took over 10 s on one input")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(10)
    try:
        yield
    except UserError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip(), repr(exc)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def memory():
    """The test may not raise the process's peak memory by a GiB."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20  # GiB
    assert grown < 1.0, f"peak memory grew by {grown:.2f} GiB"


def _tensors() -> dict:
    torch.manual_seed(0)
    return {
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(4, 4, 3, 3),
        "lora_unet_down_blocks_0.lora_down.weight": torch.randn(2, 8),
        "first_stage_model.decoder.conv_in.bias": torch.randn(4).half(),
        # ComfyUI's scaled fp8: a float8 weight, its scale, the marker
        "text_encoders.t5xxl.transformer.shared.weight": torch.randn(4, 4).to(torch.float8_e4m3fn),
        "text_encoders.t5xxl.transformer.shared.scale_weight": torch.tensor(0.5),
        "scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn),
    }


SAFETENSORS = save(_tensors(), metadata={"format": "pt"})


# ---------------------------------------------------------------- safetensors files


def _safetensors_readers(path: Path) -> None:
    from pangudraw.families import family_of_file
    from pangudraw.files import safetensors_keys
    from pangudraw.loading.single import read_tensors
    from pangudraw.lora import read_lora, read_metadata

    keys = safetensors_keys(path)  # never raises: a list or None
    assert keys is None or isinstance(keys, list)
    family_of_file(path)
    with guarded():
        read_tensors(path, allow_pickle=False)
    with guarded():
        read_metadata(path, read_lora(path))


@FUZZ
@given(data=mutations(SAFETENSORS))
def test_mutated_safetensors_files(tmp_path, memory, data):
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    _safetensors_readers(path)


def _header_file(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


hostile_numbers = st.one_of(
    st.integers(-(2**63), 2**64), st.sampled_from([0, 1, 2**31, 2**40, 2**62, -1])
)
hostile_values = st.one_of(
    hostile_numbers,
    st.text(max_size=8),
    st.none(),
    st.lists(hostile_numbers, max_size=6),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@FUZZ
@given(
    dtype=st.one_of(
        st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "F8_E4M3"]), st.text(max_size=6)
    ),
    shape=st.one_of(st.lists(hostile_numbers, max_size=5), hostile_values),
    offsets=st.one_of(st.lists(hostile_numbers, min_size=2, max_size=2), hostile_values),
    extra=st.dictionaries(st.text(max_size=10), hostile_values, max_size=2),
    metadata=st.one_of(
        st.none(), st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=3)
    ),
)
def test_hostile_safetensors_headers(tmp_path, memory, dtype, shape, offsets, extra, metadata):
    """Headers that claim huge shapes or offsets allocate nothing of that size."""
    header = {"model.diffusion_model.x": {"dtype": dtype, "shape": shape, "data_offsets": offsets}}
    header |= extra
    if metadata is not None:
        header["__metadata__"] = metadata | {"lora_adapter_metadata": json.dumps({"r": shape})}
    path = tmp_path / "model.safetensors"
    path.write_bytes(_header_file(header, bytes(64)))
    _safetensors_readers(path)


# ---------------------------------------------------------------- MindSpore checkpoints


def _checkpoint() -> bytes:
    from fixtures.pangu_release import write_ckpt

    buffer = Path(tempfile.mkdtemp()) / "x.ckpt"
    tensors = {"model.a.weight": torch.randn(3, 4), "model.b": torch.tensor(2.0)}
    tensors["model.c"] = torch.randn(5).half()
    write_ckpt(buffer, tensors, split="model.a.weight", crc=True)
    return buffer.read_bytes()


CHECKPOINT = _checkpoint()


@FUZZ
@given(data=mutations(CHECKPOINT))
def test_mutated_mindspore_checkpoints(tmp_path, memory, data):
    from pangudraw.convert.mindspore import read_checkpoint

    path = tmp_path / "x.ckpt"
    path.write_bytes(data)
    with guarded():
        for tensor in read_checkpoint(path):
            tensor.to_torch()


# ---------------------------------------------------------------- PNGs and their records


def _png() -> bytes:
    from PIL import Image

    from pangudraw.imageio import png_writer

    record = {
        "recipe": {
            "prompt": "red heart",
            "steps": 2,
            "experts": [{"model": "zoo:full", "window": {"t": [0, None]}}],
            "canvas": {"width": 64, "height": 64},
        },
        "seed": 1,
    }
    buffer = io.BytesIO()
    png_writer(Image.new("RGB", (8, 8), (200, 30, 30)), "red heart\nSteps: 2", record)(buffer)
    return buffer.getvalue()


PNG = _png()


@FUZZ
@given(data=mutations(PNG))
def test_mutated_pngs_and_their_recipes(tmp_path, memory, data):
    from pangudraw.imageio import read_record
    from pangudraw.recipes import recipe_from_png

    path = tmp_path / "in.png"
    path.write_bytes(data)
    with guarded():
        read_record(path)
    with guarded():
        recipe_from_png(path)


# ---------------------------------------------------------------- recipes and model specs

RECIPE = b"""prompt = "red heart"
negative_prompt = "blurry"
seed = 3
steps = 6
sampler = "euler"
noise = "carry"
offload = "none"
[canvas]
width = 64
height = 64
expert = "a"
[[experts]]
name = "a"
model = "zoo:full"
window = { t = [0, 1000] }
weight = 0.5
guidance = 5.0
loras = []
[[experts]]
name = "b"
model = "zoo:generator_b"
window = { sigma = [0.5, 20.0] }
size = [32, 32]
denoiser = "transformer"
[[experts.controls]]
model = "zoo:controlnet_canny"
image = "edges.png"
control_guidance_start = 0.0
control_guidance_end = 0.5
"""


@FUZZ
@given(data=mutations(RECIPE))
def test_mutated_recipes(tmp_path, memory, data):
    from pangudraw.recipes import load_recipe

    path = tmp_path / "r.toml"
    path.write_bytes(data)
    with guarded():
        load_recipe(path)


SPEC = b"""[model]
denoiser = "denoiser.safetensors"
vae = "ae.safetensors"
clip_l = "clip_l.safetensors"
"""


@FUZZ
@given(data=mutations(SPEC))
def test_mutated_model_specs(tmp_path, memory, data):
    from pangudraw.families import model_defaults
    from pangudraw.loading.single import load_model_spec

    for name in ("denoiser", "ae", "clip_l"):
        (tmp_path / f"{name}.safetensors").write_bytes(SAFETENSORS)
    path = tmp_path / "spec.toml"
    path.write_bytes(data)
    model_defaults(path)  # never raises
    with guarded():
        load_model_spec(path)


# ---------------------------------------------------------------- folder configs

SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 1,
}
CLASSES = [
    "EulerDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "UniPCMultistepScheduler",
    "PNDMScheduler",
    "DDPMPipeline",
]
KEYS = list(SCHEDULER) + ["shift", "use_dynamic_shifting", "flow_shift", "use_flow_sigmas"]
KEYS += ["trained_betas", "rescale_betas_zero_snr", "base_image_seq_len", "max_shift"]


@FUZZ
@given(
    name=st.one_of(st.sampled_from(CLASSES), st.text(max_size=12)),
    changes=st.dictionaries(st.sampled_from(KEYS), hostile_values | st.booleans(), max_size=4),
)
def test_hostile_scheduler_configs(memory, name, changes):
    from pangudraw.loading.schedulers import check_scheduler_config

    config = SCHEDULER | changes | {"_class_name": name}
    with guarded():
        check_scheduler_config(config, "scheduler_config.json")


# ---------------------------------------------------------------- tokenizer folders


def _tokenizer_files() -> dict[str, bytes]:
    from fixtures.tiny_models import qwen_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tok"
        qwen_tokenizer(Path(tmp) / "src").save_pretrained(folder)
        return {p.name: p.read_bytes() for p in folder.iterdir()}


TOKENIZER = _tokenizer_files()


@FUZZ
@given(
    name=st.sampled_from(sorted(TOKENIZER)),
    data=st.one_of(*(mutations(TOKENIZER[n]) for n in sorted(TOKENIZER))),
)
def test_mutated_tokenizer_folders(tmp_path, memory, name, data):
    """A split-file spec's tokenizer folder (the files transformers reads): one of its
    files mutated (the others left whole)."""
    from transformers import Qwen2Tokenizer, Qwen2TokenizerFast

    from pangudraw.split_files import tokenizer_folder

    folder = tmp_path / "tok"
    folder.mkdir(exist_ok=True)
    for file, content in TOKENIZER.items():
        (folder / file).write_bytes(data if file == name else content)
    with guarded():
        tokenizer = tokenizer_folder(
            tmp_path / "spec.toml", "tok", (Qwen2TokenizerFast, Qwen2Tokenizer), "Qwen2"
        )
        tokenizer(["a red apple"])
