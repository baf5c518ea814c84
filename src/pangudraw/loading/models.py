"""Any model path to an expert: a diffusers folder, a single file, a model spec, a bundled
model (``zoo:NAME``) or a hub model (``hf:owner/name``, downloaded only when a user names
one); ControlNets; and :class:`ModelCache`, the loaded models a process shares.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from diffusers import ControlNetModel

from ..errors import UserError
from ..expert import Expert
from ..lora import LoraSpec, apply_loras
from ..offload import Residence, sequential
from ..options import DTYPES, HUB_PREFIX, OFFLOAD_MODES, check_choice
from .folder import load_folder
from .paths import MODEL_SPEC_SUFFIX, SINGLE_FILE_SUFFIXES, bundled, resolve_model
from .single import load_model_spec, load_single_file


def load_expert(path: str | Path, allow_pickle: bool = False, cache: dict | None = None) -> Expert:
    """Load an expert from a local diffusers pipeline folder (SD 1.x/2.x, SDXL, SD3, Flux.1,
    PanGu-Draw v3, the bundled models), an SD 1.x, SDXL, SD3 or Flux.1 single file in the
    original layout (``.safetensors``; ``.ckpt`` with ``allow_pickle``), a model spec naming
    component files (``.toml``), from the hub when ``path`` is ``hf:owner/name``, or a
    bundled model (``zoo:NAME``).

    Weights load from safetensors only unless ``allow_pickle`` is set. ``cache`` (a dict
    the caller keeps) lets experts whose components are the same files on disk share one
    loaded module: a PanGu-Draw v3 pair's VAE and text encoders load once. Only for experts
    nothing modifies in place (no LoRA).
    Raises :class:`UserError` with a one-line message for anything a user can fix.
    """
    if str(path).startswith(HUB_PREFIX):
        path = download(str(path)[len(HUB_PREFIX) :], allow_pickle)
    folder = resolve_model(path)
    if folder.suffix.lower() in SINGLE_FILE_SUFFIXES and not folder.is_dir():
        return load_single_file(folder, allow_pickle)
    if folder.suffix.lower() == MODEL_SPEC_SUFFIX and not folder.is_dir():
        return load_model_spec(folder, allow_pickle)
    if not folder.exists():
        raise UserError(
            f"model folder {folder} does not exist (a Hugging Face hub model is named "
            f"{HUB_PREFIX}owner/name)"
        )
    return load_folder(folder, allow_pickle, cache)


def download(repo_id: str, allow_pickle: bool = False) -> Path:
    """Fetch a diffusers model from the Hugging Face hub (only when the user names one)."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.model", "*.safetensors"]
    patterns += ["*.bin"] if allow_pickle else []
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repository, gated model, ...
        raise UserError(
            f"cannot download {repo_id} from the hub: {str(exc).splitlines()[0]}"
        ) from exc


def default_device() -> str | None:
    """The GPU when torch sees one, else None (the CPU, where models load)."""
    return "cuda" if torch.cuda.is_available() else None


class ModelCache:
    """Loaded experts (one per model and set of LoRAs) and ControlNets, shared between the
    generations of a process.

    Experts hold no per-generation state, so one loaded model serves every request; the
    lock makes a model that two requests ask for at once load once.
    """

    def __init__(
        self,
        allow_pickle: bool = False,
        device: str | None = None,
        dtype: str = "float32",
        offload: str = "none",
    ):
        self.allow_pickle = allow_pickle
        self.device = device or default_device()  # None: where they load (the CPU)
        self.dtype = check_choice(dtype, DTYPES, "dtype")  # networks' and text encoders'
        self.offload = check_choice(offload, OFFLOAD_MODES, "offload")  # offload.py
        self._loaded: dict[tuple, object] = {}
        self._components: dict = {}  # the same files on disk load once (no LoRA)
        self._lock = threading.Lock()

    def get(
        self, model: str | Path, loras: list[LoraSpec] = (), denoiser: str | None = None
    ) -> Expert:
        """The expert of ``model`` with ``loras``; ``denoiser="transformer_2"``: a folder
        that holds a pair (Wan2.2), its low-noise expert alone (the LoRAs go into it)."""
        path = bundled(model)
        key = (str(path.resolve()), tuple(loras), denoiser)
        with self._lock:
            if key not in self._loaded:
                cache = None if loras else self._components
                expert = load_expert(path, self.allow_pickle, cache)
                if denoiser == "transformer_2":
                    if expert.low_noise is None:
                        raise UserError(f"{model} has no transformer_2 (a second expert)")
                    expert = expert.low_noise
                expert = apply_loras(expert, list(loras), self.allow_pickle)
                self._loaded[key] = self._place(expert.to(self.device, getattr(torch, self.dtype)))
            return self._loaded[key]

    def _place(self, expert: Expert) -> Expert:
        """Offloading (:mod:`pangudraw.offload`): a windowed expert waits released (its
        text encoders in host memory on a GPU) until its first window opens."""
        device = torch.device(self.device or "cpu")
        for one in (expert, expert.low_noise) if expert.low_noise else (expert,):
            if self.offload == "window":
                one.residence = Residence(device)
                if device.type != "cpu":
                    for module in one.text_modules():
                        module.to("cpu")
                one.release()
            elif self.offload == "sequential":
                sequential(one.network, device)
        return expert

    def controlnet(self, model: str | Path, expert: Expert) -> ControlNetModel:
        """A ControlNet, loaded once and shared like the experts (and moved to their
        device), checked against ``expert`` on every use."""
        path = bundled(model)
        key = ("controlnet", str(path.resolve()))
        with self._lock:
            if key not in self._loaded:
                net = load_controlnet(str(path), expert, self.allow_pickle)
                self._loaded[key] = net.to(device=self.device, dtype=getattr(torch, self.dtype))
            net = self._loaded[key]
        check_controlnet(net, str(path), expert)
        return net


def load_controlnet(path: str, expert: Expert, allow_pickle: bool = False) -> ControlNetModel:
    """A diffusers ControlNetModel, refused when it was not built for ``expert``'s UNet."""
    _check_takes_controlnets(expert)
    path = str(resolve_model(path))
    if not (Path(path) / "config.json").is_file():
        raise UserError(f"{path} is not a diffusers ControlNet folder (no config.json)")
    try:
        model = ControlNetModel.from_pretrained(
            path, use_safetensors=None if allow_pickle else True
        )
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load ControlNet {path}: {str(exc).splitlines()[0]}") from exc
    model.to(memory_format=torch.channels_last)  # as the UNet it steers
    check_controlnet(model, path, expert)
    return model.eval()


def check_controlnet(model: ControlNetModel, path: str, expert: Expert) -> None:
    """Refuse a ControlNet built for another UNet than ``expert``'s."""
    _check_takes_controlnets(expert)
    keys = ("in_channels", "block_out_channels", "cross_attention_dim", "addition_embed_type")
    theirs, ours = model.config, expert.network.config
    mismatched = [k for k in keys if list(_listify(theirs.get(k))) != list(_listify(ours.get(k)))]
    if mismatched:
        raise UserError(
            f"ControlNet {path} was built for another base than {expert.name} "
            f"(differs in {', '.join(mismatched)}); use a ControlNet trained for that model"
        )


def _check_takes_controlnets(expert: Expert) -> None:
    if not expert.family.controlnets:
        raise UserError(
            f"{expert.name} is a {expert.family.label} model; ControlNets load for UNet models "
            "only (give the control to an SD or SDXL expert in the same recipe)"
        )


def _listify(value) -> list:
    return value if isinstance(value, list | tuple) else [value]
