"""Chinese for the bundled models: distil embedding rows for CJK characters into MiniLM.

The generators were trained on MiniLM's embeddings of English captions and stay frozen.
The student is MiniLM with one new (or replaced) embedding row per CJK character of the
training names; nothing else in it trains, so English text keeps its embeddings exactly.
The rows learn from emoji names given in both languages (the dataset's ``zh`` column, from
CLDR via the ``emoji`` data) with two losses and an optional third:

- sentence: the mean-pooled student embedding of the Chinese name should point where
  MiniLM's embedding of the English name points (1 - cosine), as multilingual knowledge
  distillation does (Reimers and Gurevych, 2020); the evaluator's caption space;
- generator: the frozen structure and texture models, given noisy latents of the emoji's
  image, should predict the same noise from the Chinese token states as from the English
  ones (MSE): what a prompt is for;
- optionally (``attention_weight``) cross-attention: every cross-attention layer of both
  generators, at image tokens recorded from real inputs, should give the same output from
  the Chinese token states as from the English ones; needs no image, so it reaches the
  keyword bags and glosses too (measured: lower on held-out names, images no better).

One emoji in ten (by a hash of its file name) is held out of training, for the tests and
the benchmark. (Over 500 lines: the data readers, the three losses and the trainer belong
to this one experiment and are read together.) Run:
``python scripts/train_chinese_text.py`` (resumable, CPU).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..files import json_writer, read_json, safetensors_writer, write_outputs
from ..textenc import (
    MINILM_MAX_TOKENS,
    ZH_ADAPTER,
    ZH_ROWS,
    adapter_factors,
    add_adapter,
    add_cjk_rows,
    is_cjk,
    load_minilm,
)


@dataclass(frozen=True)
class Pair:
    english: str  # the emoji's English name (what a user types)
    chinese: str
    file: str  # the image, relative to the dataset folder


def chinese_held_out(file: str) -> bool:
    """The emoji whose Chinese names the bundled rows never trained on: one in ten by
    another hash than :func:`pangudraw.train.emoji.held_out` (so another set; kept as it is,
    the bundled rows and their benchmark numbers were made with it)."""
    return hashlib.sha1(file.encode()).digest()[0] % 10 == 0


def load_pairs(data: Path) -> list[Pair]:
    """(English name, Chinese name, image) for every emoji of an emoji dataset folder."""
    pairs = []
    for line in (data / "metadata.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("zh") and row.get("name"):
            pairs.append(Pair(row["name"], row["zh"], row["file_name"]))
    if not pairs:
        raise UserError(f"{data} has no emoji with both a name and a zh name")
    return pairs


def characters(pairs: list[Pair]) -> list[str]:
    """The CJK characters of the Chinese names, in first-seen order."""
    return list(dict.fromkeys(c for p in pairs for c in p.chinese if is_cjk(c)))


def _key(text: str) -> str:
    """An emoji's code points without variation selectors (how CLDR and file names meet)."""
    return text.replace("\ufe0f", "")


def load_keyword_pairs(annotations: Path, data: Path) -> list[Pair]:
    """CLDR's keyword lists (``cldr-annotations-full``: ``annotations/{en,zh}``), English
    and Chinese bags of words per emoji, for every emoji not held out of ``data``: more
    characters and more words for the rows to learn from (sentence loss only: no image)."""
    zh = json.loads((annotations / "zh" / "annotations.json").read_text(encoding="utf-8"))
    en = json.loads((annotations / "en" / "annotations.json").read_text(encoding="utf-8"))
    zh, en = zh["annotations"]["annotations"], en["annotations"]["annotations"]
    held = set()
    for line in (data / "metadata.jsonl").read_text(encoding="utf-8").splitlines():
        file = json.loads(line)["file_name"]
        if chinese_held_out(file):
            held.add(_key("".join(chr(int(c, 16)) for c in Path(file).stem.split("-"))))
    pairs = []
    for emoji, entry in zh.items():
        words_zh, words_en = entry.get("default"), en.get(emoji, {}).get("default")
        if _key(emoji) in held or not words_zh or not words_en:
            continue
        pairs.append(Pair(" ".join(words_en), " ".join(words_zh), ""))
    return pairs


GB2312_LEVEL_1_END = 5600  # kGB0 row 56 onwards is level 2: the rarer 3,008 characters


def _unihan_field(folder: Path, name: str, field: str) -> dict[str, str]:
    """One field of a Unihan data file (``Unihan_NAME.txt``, or ``.txt.bz2`` as Debian's
    ``unicode-data`` ships it): character -> value."""
    import bz2

    for path in (folder / f"Unihan_{name}.txt", folder / f"Unihan_{name}.txt.bz2"):
        if path.is_file():
            break
    else:
        raise UserError(
            f"{folder} has no Unihan_{name}.txt(.bz2): give the folder of Unicode's Unihan "
            "data (Debian: apt-get install unicode-data, then /usr/share/unicode)"
        )
    values = {}
    reader = bz2.open if path.suffix == ".bz2" else open
    with reader(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 3 and parts[1] == field and parts[0].startswith("U+"):
                try:
                    values[chr(int(parts[0][2:], 16))] = parts[2]
                except ValueError:
                    raise UserError(f"{path}: {parts[0]!r} is not a code point") from None
    return values


def load_unihan_pairs(folder: Path) -> list[Pair]:
    """Unihan's English glosses (``kDefinition``) of the 3,755 common simplified characters
    (GB 2312 level 1, ``kGB0``), one character per pair: a permissive dictionary (Unicode
    licence) that gives a row to characters no emoji name in training has. General data:
    nothing in it comes from the held-out emoji."""
    glosses = _unihan_field(folder, "Readings", "kDefinition")
    gb = _unihan_field(folder, "OtherMappings", "kGB0")
    common = [c for c, code in gb.items() if code.isdigit() and int(code) < GB2312_LEVEL_1_END]
    pairs = [Pair(glosses[c].replace(";", ","), c, "") for c in common if c in glosses]
    if not pairs:
        raise UserError(f"{folder}: no character with both kGB0 and kDefinition")
    return pairs


def token_states(text, prompts: list[str], grad: bool = False):
    """MiniLM's last hidden states (what the generators see) and mean-pooled unit
    embeddings (what the evaluator compares), for prompts padded to 16 tokens."""
    tokenizer, encoder = text
    tokens = _tokens(tokenizer, prompts)
    with torch.set_grad_enabled(grad):
        hidden = encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    return hidden, _pooled(hidden, tokens.attention_mask)


def _tokens(tokenizer, prompts: list[str]):
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=MINILM_MAX_TOKENS,
        truncation=True,
        return_tensors="pt",
    )


def _pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).float()
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def image_latents(expert, data: Path, files: list[str]) -> torch.Tensor:
    """Clean latents of the images at the expert's native size, in its space."""
    from ..imageio import read_image

    size = expert.sample_size
    latents = []
    for i in range(0, len(files), 64):
        images = torch.cat(
            [read_image(data / f, "RGB", size, "emoji image") for f in files[i : i + 64]]
        )
        with torch.no_grad():
            latents.append(expert.space.encode(images.float() * 2 - 1))
    return torch.cat(latents)


@dataclass
class Stage:
    """A frozen generator, the part of the trajectory it covers, and fixed noisy inputs of
    each training image with the generator's prediction from the English name (computed
    once: the teacher's half of the generator loss costs nothing per step)."""

    expert: object
    inputs: torch.Tensor  # (K, N, C, h, w) noisy latents
    timesteps: torch.Tensor  # (K, N)
    targets: torch.Tensor  # (K, N, C, h, w) predictions from the English token states

    @classmethod
    def build(cls, expert, t_range, latents, hidden_en, draws: int, gen) -> Stage:
        net, abar = expert.network, expert.schedule.alphas_cumprod

        @torch.no_grad()
        def predict(z, t):
            chunks = [slice(i, i + 64) for i in range(0, len(z), 64)]
            return torch.cat(
                [net(z[c], t[c], encoder_hidden_states=hidden_en[c])[0] for c in chunks]
            )

        inputs, timesteps, targets = [], [], []
        for _ in range(draws):
            t = torch.randint(*t_range, (len(latents),), generator=gen)
            a = abar[t].float().view(-1, 1, 1, 1)
            z = a.sqrt() * latents + (1 - a).sqrt() * torch.randn(latents.shape, generator=gen)
            inputs.append(z), timesteps.append(t), targets.append(predict(z, t))
        return cls(expert, torch.stack(inputs), torch.stack(timesteps), torch.stack(targets))

    def loss(self, index: torch.Tensor, hidden: torch.Tensor, gen) -> torch.Tensor:
        draw = torch.randint(len(self.inputs), (len(index),), generator=gen)
        z, t = self.inputs[draw, index], self.timesteps[draw, index]
        out = self.expert.network(z, t, encoder_hidden_states=hidden, return_dict=False)[0]
        return F.mse_loss(out, self.targets[draw, index])


class AttentionProbe:
    """The generators' cross-attention layers with image tokens recorded from real inputs:
    what a layer makes of a text is its output for those tokens. Comparing the outputs for
    the Chinese and the English token states gives a generator-level loss for pairs that
    have no image (keyword bags, glosses), at every cross-attention layer of both models."""

    def __init__(self, stages: list[Stage], hidden_en: torch.Tensor, queries: int, gen) -> None:
        self.layers, self.tokens, seen = [], [], {}

        def record(module, args, kwargs):
            seen[id(module)].append(kwargs.get("hidden_states", args[0] if args else None))

        for stage in stages:
            net = stage.expert.network
            layers = [m for name, m in net.named_modules() if name.endswith("attn2")]
            seen.update({id(m): [] for m in layers})
            hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in layers]
            pick = torch.randperm(stage.inputs.shape[1], generator=gen)[:16]
            with torch.no_grad():
                net(
                    stage.inputs[0, pick],
                    stage.timesteps[0, pick],
                    encoder_hidden_states=hidden_en[pick],
                )
            for hook in hooks:
                hook.remove()
            for module in layers:
                flat = torch.cat(seen[id(module)]).flatten(0, -2)
                keep = torch.randperm(len(flat), generator=gen)[:queries]
                self.layers.append(module)
                self.tokens.append(flat[keep])

    def loss(self, hidden: torch.Tensor, target: torch.Tensor, gen, per_layer: int = 32):
        """Mean over layers of the MSE between the layer's outputs for ``per_layer`` of its
        recorded image tokens, from ``hidden`` and from ``target``, over the target's
        variance (each layer weighs alike)."""
        losses = []
        for module, tokens in zip(self.layers, self.tokens):
            q = tokens[torch.randint(len(tokens), (per_layer,), generator=gen)]
            q = q.expand(len(hidden), -1, -1)
            with torch.no_grad():
                want = module(q, encoder_hidden_states=target)
            got = module(q, encoder_hidden_states=hidden)
            losses.append(F.mse_loss(got, want) / want.var().clamp_min(1e-8))
        return sum(losses) / len(losses)


@dataclass(frozen=True)
class RowSettings:
    """How the CJK rows train.

    ``adapter_rank`` > 0 also trains a low-rank change of MiniLM's linear layers
    (:func:`textenc.add_adapter`), used only for text with a CJK character. ``draws``:
    noisy versions of each image (fixed, the teacher's predictions computed once) that the
    generator loss samples from. ``attention_weight`` > 0 adds :class:`AttentionProbe`'s
    loss for every batch (names, keyword bags, glosses).
    """

    steps: int = 3000
    batch: int = 32
    lr: float = 3e-3
    seed: int = 0
    generator_weight: float = 10.0
    adapter_rank: int = 0
    adapter_lr: float = 1e-3
    draws: int = 2
    attention_weight: float = 0.0


@dataclass
class _Setup:
    """What one training of the rows holds: the student, the pairs and their English
    targets, the two frozen generators' stages, the trainable parameters."""

    student: tuple
    chars: list[str]
    pairs: list[Pair]
    targets: tuple[torch.Tensor, torch.Tensor]  # English token states, pooled embeddings
    text_batches: list  # (Chinese texts, English token states or None, English pooled)
    stages: list
    probe: AttentionProbe | None
    table: torch.Tensor
    ids: torch.Tensor
    param: torch.nn.Parameter
    factors: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer


def train(
    data: Path,
    out: Path,
    settings: RowSettings = RowSettings(),  # noqa: B008 - frozen
    max_minutes: float = 45.0,
    keywords: list[Pair] = (),
    glosses: list[Pair] = (),
    init: tuple[list[str], torch.Tensor] | None = None,
    log=print,
) -> dict:
    """Train (or resume) the CJK rows for at most ``max_minutes``; keeps a resumable
    checkpoint (safetensors + JSON) in ``out`` and, when all steps are done, writes
    ``out/cjk_rows.safetensors``, ``out/tokens.json`` (and ``out/adapter.safetensors`` with
    an adapter). Returns the progress record.

    ``keywords`` and ``glosses`` (pairs without an image: CLDR's keyword bags, Unihan's
    character glosses) each get a batch of their own for the sentence loss. ``init``
    (characters and rows) starts the rows from trained ones where it has them."""
    setup = _prepare(data, settings, keywords, glosses, init)
    done, seconds = _resume(out, setup)
    gen = torch.Generator().manual_seed(settings.seed + 1 + done)
    start, losses, attended = time.perf_counter(), [], []
    while done < settings.steps and seconds + (time.perf_counter() - start) < max_minutes * 60:
        sentence, generator, attention = _step(setup, settings, done, gen)
        done += 1
        losses.append((sentence, generator))
        if attention is not None:
            attended.append(attention)
        if done % 50 == 0 or done == settings.steps:
            recent = torch.tensor(losses[-50:]).mean(0)
            extra = f", attention {torch.tensor(attended[-50:]).mean():.4f}" if attended else ""
            log(
                f"step {done}/{settings.steps}: sentence {recent[0]:.4f}, "
                f"generator {recent[1]:.4f}{extra}"
            )
    seconds += time.perf_counter() - start
    record = {
        "step": done,
        "seconds": round(seconds, 1),
        "characters": len(setup.chars),
        "training_pairs": len(setup.pairs),
        "keyword_pairs": len(keywords),
        "gloss_pairs": len(glosses),
        "started_from_bundled_rows": init is not None,
        **{k: v for k, v in asdict(settings).items() if k != "seed"},
        "adapter_lr": settings.adapter_lr if settings.adapter_rank else None,
        "noisy_draws_per_image": settings.draws,
        "last_losses": [round(x, 5) for x in torch.tensor(losses[-50:]).mean(0).tolist()]
        if losses
        else None,
    }
    _save(out, setup, record, finished=done >= settings.steps)
    return record


def _prepare(data: Path, settings: RowSettings, keywords, glosses, init) -> _Setup:
    from ..loading.models import load_expert

    pairs = [p for p in load_pairs(data) if not chinese_held_out(p.file)]
    groups = [list(group) for group in (keywords, glosses) if group]  # pairs without images
    chars = characters(pairs + [p for group in groups for p in group])
    # One MiniLM serves as teacher and student: English text has no CJK token, so it gets
    # the plain embeddings; the student's rows enter through ``inputs_embeds``.
    student = load_minilm(chinese=False)
    tokenizer, encoder = student
    table = encoder.get_input_embeddings().weight.detach()
    vocab = tokenizer.get_vocab()
    unseen = table[tokenizer.unk_token_id]
    rows = torch.stack([table[vocab[c]] if c in vocab else unseen for c in chars])
    if init is not None:  # start from trained rows (the bundled ones) where there are some
        known = dict(zip(init[0], init[1]))
        rows = torch.stack([known.get(c, row) for c, row in zip(chars, rows)])
    add_cjk_rows(tokenizer, encoder, chars, rows)
    encoder.requires_grad_(False)

    english = [p.english for p in pairs]
    with torch.no_grad():
        hidden_en, pooled_en = zip(
            *(token_states(student, english[i : i + 256]) for i in range(0, len(english), 256))
        )
    hidden_en, pooled_en = torch.cat(hidden_en), torch.cat(pooled_en)
    text_batches = []
    for group in groups:
        with torch.no_grad():
            states = [
                token_states(student, [p.english for p in group[i : i + 256]])
                for i in range(0, len(group), 256)
            ]
        text_batches.append(
            (
                [p.chinese for p in group],
                # 24 kB a text: kept only for the attention loss
                torch.cat([s[0] for s in states]) if settings.attention_weight else None,
                torch.cat([s[1] for s in states]),
            )
        )
    structure, texture = load_expert("zoo:structure"), load_expert("zoo:texture")
    for expert in (structure, texture):
        expert.network.requires_grad_(False)
    files = [p.file for p in pairs]
    gen = torch.Generator().manual_seed(settings.seed)  # the same fixed draws when resuming
    stages = [
        Stage.build(
            expert, window, image_latents(expert, data, files), hidden_en, settings.draws, gen
        )
        for expert, window in ((structure, (500, 1000)), (texture, (0, 500)))
    ]
    probe = AttentionProbe(stages, hidden_en, 512, gen) if settings.attention_weight else None
    param = torch.nn.Parameter(rows.clone())
    optimizer = torch.optim.Adam([param], lr=settings.lr)
    # The adapter goes in after the English targets were computed by plain MiniLM.
    wrapped = (
        add_adapter(encoder, settings.adapter_rank, settings.seed) if settings.adapter_rank else {}
    )
    factors = adapter_factors(wrapped)  # name -> the trainable down/up parameter
    if factors:
        optimizer.add_param_group({"params": list(factors.values()), "lr": settings.adapter_lr})
    return _Setup(
        student=student,
        chars=chars,
        pairs=pairs,
        targets=(hidden_en, pooled_en),
        text_batches=text_batches,
        stages=stages,
        probe=probe,
        table=encoder.get_input_embeddings().weight,
        ids=torch.tensor(tokenizer.convert_tokens_to_ids(chars)),
        param=param,
        factors=factors,
        optimizer=optimizer,
    )


CHECKPOINT, PROGRESS = "checkpoint.safetensors", "progress.json"


def _resume(out: Path, setup: _Setup) -> tuple[int, float]:
    """Steps done and seconds spent, with the rows, adapter and optimizer of ``out``'s
    checkpoint restored (through :mod:`.checkpoint`'s optimizer state); (0, 0) anew."""
    from safetensors.torch import load_file

    from .checkpoint import restore_optimizer

    if not (out / CHECKPOINT).is_file():
        return 0, 0.0
    saved = load_file(out / CHECKPOINT)
    record = read_json(out / PROGRESS, "training progress")
    try:
        with torch.no_grad():
            setup.param.copy_(saved.pop("rows"))
            for name, tensor in setup.factors.items():
                tensor.copy_(saved.pop(f"adapter.{name}"))
        restore_optimizer(setup.optimizer, saved, record["optimizer_groups"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise UserError(f"{out / CHECKPOINT} is not a checkpoint of this training: {exc}") from exc
    return record["step"], record["seconds"]


def _step(setup: _Setup, settings: RowSettings, done: int, gen: torch.Generator):
    """One optimizer step: the sentence loss on names (and each text-only batch), the
    generator loss of one of the two generators in turn, the optional attention loss."""
    hidden_en, pooled_en = setup.targets
    index = torch.randint(len(setup.pairs), (settings.batch,), generator=gen)
    weights = setup.table.clone()
    weights[setup.ids] = setup.param
    names = [setup.pairs[i].chinese for i in index]
    hidden, pooled = _student_states(setup.student, weights, names)
    sentences = [(1 - (pooled * pooled_en[index]).sum(-1)).mean()]
    probe = setup.probe
    attention = [probe.loss(hidden, hidden_en[index], gen)] if probe else []
    for texts, states, targets in setup.text_batches:  # keyword bags, glosses: own batches
        pick = torch.randint(len(texts), (settings.batch,), generator=gen)
        hidden_t, pooled_t = _student_states(setup.student, weights, [texts[i] for i in pick])
        sentences.append((1 - (pooled_t * targets[pick]).sum(-1)).mean())
        if probe:
            attention.append(probe.loss(hidden_t, states[pick], gen))
    sentence = sum(sentences) / len(sentences)
    generator = setup.stages[done % 2].loss(index, hidden, gen)  # the two models in turn
    loss = sentence + settings.generator_weight * generator
    attended = None
    if probe:
        attended = sum(attention) / len(attention)
        loss = loss + settings.attention_weight * attended
    setup.optimizer.zero_grad()
    loss.backward()
    setup.optimizer.step()
    return sentence.item(), generator.item(), None if attended is None else attended.item()


def _save(out: Path, setup: _Setup, record: dict, finished: bool) -> None:
    """The checkpoint and progress, written together and whole (a kill never leaves a
    checkpoint without its progress); the rows (and adapter) when finished."""
    from .checkpoint import optimizer_tensors

    tensors, groups = optimizer_tensors(setup.optimizer)
    tensors["rows"] = setup.param.detach()
    tensors |= {f"adapter.{name}": t.detach() for name, t in setup.factors.items()}
    files = {
        out / CHECKPOINT: safetensors_writer(tensors),
        out / PROGRESS: json_writer(record | {"optimizer_groups": groups}),
    }
    if finished:
        files[out / ZH_ROWS] = safetensors_writer({"rows": setup.param.detach().half()})
        files[out / "tokens.json"] = json_writer(setup.chars)
        if setup.factors:
            adapter = {k: v.detach().half() for k, v in setup.factors.items()}
            files[out / ZH_ADAPTER] = safetensors_writer(adapter)
    write_outputs(files)


def _student_states(student, weights: torch.Tensor, prompts: list[str]):
    """Token states with ``weights`` as the embedding table (differentiable in its rows)."""
    tokenizer, encoder = student
    tokens = _tokens(tokenizer, prompts)
    embeds = F.embedding(tokens.input_ids, weights)
    hidden = encoder(inputs_embeds=embeds, attention_mask=tokens.attention_mask)[0]
    return hidden, _pooled(hidden, tokens.attention_mask)


def retrieval(text, queries: list[str], candidates: torch.Tensor) -> dict[str, float]:
    """Top-1 / top-5 accuracy of each query's pooled embedding finding its own row of
    ``candidates`` (unit English embeddings, same order)."""
    with torch.no_grad():
        _, pooled = token_states(text, queries)
    ranks = (pooled @ candidates.T).argsort(dim=1, descending=True)
    position = (ranks == torch.arange(len(queries))[:, None]).float().argmax(1)
    return {f"top{k}": float((position < k).float().mean()) for k in (1, 5)}


def chance(count: int) -> dict[str, float]:
    return {f"top{k}": min(1.0, k / count) for k in (1, 5)}
