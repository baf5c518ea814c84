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
the benchmark. Run: ``python scripts/train_chinese_text.py`` (resumable, CPU).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
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


def held_out(file: str) -> bool:
    """One emoji in ten, fixed by its file name, never trained on."""
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
        if held_out(file):
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


def train(
    data: Path,
    out: Path,
    steps: int = 3000,
    batch: int = 32,
    lr: float = 3e-3,
    max_minutes: float = 45.0,
    seed: int = 0,
    generator_weight: float = 10.0,
    log=print,
    keywords: list[Pair] = (),
    glosses: list[Pair] = (),
    init: tuple[list[str], torch.Tensor] | None = None,
    adapter_rank: int = 0,
    adapter_lr: float = 1e-3,
    draws: int = 2,
    attention_weight: float = 0.0,
) -> dict:
    """Train (or resume) the CJK rows for at most ``max_minutes``; keeps a resumable
    checkpoint (safetensors + JSON) in ``out`` and, when all ``steps`` are done, writes
    ``out/cjk_rows.safetensors`` and ``out/tokens.json``. Returns the progress record.

    ``adapter_rank`` > 0 also trains a low-rank change of MiniLM's linear layers
    (:func:`textenc.add_adapter`), used only for text with a CJK character; written as
    ``out/adapter.safetensors``. ``keywords`` and ``glosses`` (pairs without an image:
    CLDR's keyword bags, Unihan's character glosses) each get a batch of their own for the
    sentence loss. ``draws``: noisy versions of each image (fixed, the
    teacher's predictions computed once) that the generator loss samples from.
    ``attention_weight`` > 0 adds :class:`AttentionProbe`'s loss for every batch (names,
    keyword bags, glosses): the generators' cross-attention outputs from the Chinese token
    states should match those from the English ones."""
    from safetensors.torch import load_file

    from ..loading.models import load_expert

    pairs = [p for p in load_pairs(data) if not held_out(p.file)]
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
    checkpoint, progress = out / "checkpoint.safetensors", out / "progress.json"
    done, seconds, saved = 0, 0.0, {}
    moments = [torch.zeros_like(rows), torch.zeros_like(rows)]
    if checkpoint.is_file():
        saved = load_file(checkpoint)
        rows, moments = saved["rows"], [saved["m"], saved["v"]]
        record = read_json(progress, "training progress")
        done, seconds = record["step"], record["seconds"]
    add_cjk_rows(tokenizer, encoder, chars, rows)
    encoder.requires_grad_(False)
    table = encoder.get_input_embeddings().weight
    ids = torch.tensor(tokenizer.convert_tokens_to_ids(chars))
    param = torch.nn.Parameter(rows.clone())
    optimizer = torch.optim.Adam([param], lr=lr)
    if done:
        optimizer.state[param] = {
            "step": torch.tensor(float(done)),
            "exp_avg": moments[0],
            "exp_avg_sq": moments[1],
        }

    english = [p.english for p in pairs]
    chinese = [p.chinese for p in pairs]
    with torch.no_grad():
        hidden_en, pooled_en = zip(
            *(token_states(student, english[i : i + 256]) for i in range(0, len(english), 256))
        )
    hidden_en, pooled_en = torch.cat(hidden_en), torch.cat(pooled_en)
    text_batches = []  # (Chinese texts, MiniLM's English token states and embeddings)
    for group in groups:
        with torch.no_grad():
            states = [
                token_states(student, [p.english for p in group[i : i + 256]])
                for i in range(0, len(group), 256)
            ]
        text_batches.append(
            (
                [p.chinese for p in group],
                torch.cat([s[0] for s in states]) if attention_weight else None,  # 24 kB a text
                torch.cat([s[1] for s in states]),
            )
        )
    structure, texture = load_expert("zoo:structure"), load_expert("zoo:texture")
    for expert in (structure, texture):
        expert.network.requires_grad_(False)
    files = [p.file for p in pairs]
    gen = torch.Generator().manual_seed(seed)  # the same fixed draws when resuming
    stages = [
        Stage.build(
            structure, (500, 1000), image_latents(structure, data, files), hidden_en, draws, gen
        ),
        Stage.build(texture, (0, 500), image_latents(texture, data, files), hidden_en, draws, gen),
    ]
    probe = AttentionProbe(stages, hidden_en, 512, gen) if attention_weight else None
    # The adapter goes in after the English targets were computed by plain MiniLM.
    wrapped = add_adapter(encoder, adapter_rank, seed) if adapter_rank else {}
    factors = adapter_factors(wrapped)  # name -> the trainable down/up parameter
    if factors:
        optimizer.add_param_group({"params": list(factors.values()), "lr": adapter_lr})
        for name, tensor in factors.items():
            if f"adapter.{name}" in saved:
                with torch.no_grad():
                    tensor.copy_(saved[f"adapter.{name}"])
                optimizer.state[tensor] = {
                    "step": torch.tensor(float(done)),
                    "exp_avg": saved[f"m.adapter.{name}"],
                    "exp_avg_sq": saved[f"v.adapter.{name}"],
                }
    gen = torch.Generator().manual_seed(seed + 1 + done)
    start, losses, attended_log = time.perf_counter(), [], []
    while done < steps and seconds + (time.perf_counter() - start) < max_minutes * 60:
        index = torch.randint(len(pairs), (batch,), generator=gen)
        weights = table.clone()
        weights[ids] = param
        hidden, pooled = _student_states(student, weights, [chinese[i] for i in index])
        sentences = [(1 - (pooled * pooled_en[index]).sum(-1)).mean()]
        attention = [probe.loss(hidden, hidden_en[index], gen)] if probe else []
        for texts, states, targets in text_batches:  # keyword bags, glosses: own batches
            pick = torch.randint(len(texts), (batch,), generator=gen)
            hidden_t, pooled_t = _student_states(student, weights, [texts[i] for i in pick])
            sentences.append((1 - (pooled_t * targets[pick]).sum(-1)).mean())
            if probe:
                attention.append(probe.loss(hidden_t, states[pick], gen))
        sentence = sum(sentences) / len(sentences)
        generator = stages[done % 2].loss(index, hidden, gen)  # the two models in turn
        loss = sentence + generator_weight * generator
        if probe:
            attended = sum(attention) / len(attention)
            loss = loss + attention_weight * attended
            attended_log.append(attended.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done += 1
        losses.append((sentence.item(), generator.item()))
        if done % 50 == 0 or done == steps:
            recent = torch.tensor(losses[-50:]).mean(0)
            extra = f", attention {torch.tensor(attended_log[-50:]).mean():.4f}" if probe else ""
            log(f"step {done}/{steps}: sentence {recent[0]:.4f}, generator {recent[1]:.4f}{extra}")
    seconds += time.perf_counter() - start
    state = optimizer.state[param]
    record = {
        "step": done,
        "steps": steps,
        "seconds": round(seconds, 1),
        "characters": len(chars),
        "training_pairs": len(pairs),
        "keyword_pairs": len(keywords),
        "gloss_pairs": len(glosses),
        "started_from_bundled_rows": init is not None,
        "batch": batch,
        "lr": lr,
        "generator_weight": generator_weight,
        "adapter_rank": adapter_rank,
        "adapter_lr": adapter_lr if adapter_rank else None,
        "noisy_draws_per_image": draws,
        "attention_weight": attention_weight,
        "last_losses": [round(x, 5) for x in torch.tensor(losses[-50:]).mean(0).tolist()]
        if losses
        else None,
    }
    tensors = {"rows": param, "m": state["exp_avg"], "v": state["exp_avg_sq"]}
    for name, tensor in factors.items():
        moment = optimizer.state.get(tensor) or {}
        tensors[f"adapter.{name}"] = tensor.detach()
        tensors[f"m.adapter.{name}"] = moment.get("exp_avg", torch.zeros_like(tensor))
        tensors[f"v.adapter.{name}"] = moment.get("exp_avg_sq", torch.zeros_like(tensor))
    files = {  # written together, whole: a kill never leaves a checkpoint without progress
        checkpoint: safetensors_writer(tensors),
        progress: json_writer(record),
    }
    if done >= steps:
        files[out / ZH_ROWS] = safetensors_writer({"rows": param.half()})
        files[out / "tokens.json"] = json_writer(chars)
        if factors:
            adapter = {k: v.detach().half() for k, v in factors.items()}
            files[out / ZH_ADAPTER] = safetensors_writer(adapter)
    write_outputs(files)
    return record


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
