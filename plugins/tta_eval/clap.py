"""``clap``: LAION-CLAP (Wu et al. 2023, "Large-scale Contrastive Language-Audio Pretraining
with Feature Fusion and Keyword-to-Caption Augmentation") audio and text embeddings, for the
CLAP score (the cosine between a generated clip and its prompt) and for Fréchet distances in
CLAP's space.

It is the ``clap`` conditioner (laion-clap's model, checkpoint loading, tokenizers and input
fitting), built through the registry (:func:`tta_core.plugin.build_component`), with the
embedder contract on top:

- ``embed(wave [B, N] at 48 kHz) -> [B, 1, 512]``: the audio tower's projection, L2-normalised;
- ``embed_text(texts) -> [B, 512]``: the text tower's projection, L2-normalised, in the
  same space.

Input: mono at 48 kHz (resample with ``torchaudio.functional.resample``, its defaults),
fitted to CLAP's 10 s window (480000 samples) as laion-clap fits it: a shorter clip is
repeated whole as often as it fits, then zero-padded ("repeatpad"); a longer one is cropped to
its centre (laion-clap takes a random window; the centre keeps embeddings reproducible).
Fusion checkpoints (``enable_fusion: true``) also get laion-clap's four-part mel of longer
clips. Front end: laion-clap's audio config (window 1024, hop 480, 64 mels, 50-14000 Hz for
HTSAT; listed in ``settings()``).

Weights: ``pretrained: PATH`` to a local laion-clap checkpoint, e.g. ``630k-audioset-best.pt``
(HTSAT-tiny + roberta; ``audioldm_eval``'s CLAP score uses a 630k checkpoint) or
``music_audioset_epoch_15_esc_90.14.pt`` (``amodel: HTSAT-base``), from
https://huggingface.co/lukewys/laion_clap, downloaded once with network access; tta never
downloads. It is loaded strictly and only if it unpickles to tensors and plain containers.
``amodel`` / ``tmodel`` / ``enable_fusion`` must match it. ``tmodel: roberta`` needs RoBERTa's
tokenizer files (``tokenizer:``, a local folder or a cached hub id, default ``roberta-base``);
``tmodel: transformer`` uses the CLIP vocabulary bundled with laion-clap. Without
``pretrained:`` the node must say ``random: true``: untrained, seeded weights for tests (use
``tmodel: transformer`` there, which needs no tokenizer files). Licence: laion-clap's code is
CC0-1.0; the checkpoints' terms are on their model card.

Cost: every clip becomes a 10 s window at 48 kHz, whatever its length; on a CPU an
HTSAT-tiny embedding takes a second or more per clip.

Options: ``pretrained``, ``random``, ``amodel``, ``tmodel``, ``enable_fusion``, ``tokenizer``,
``device``.
"""

from __future__ import annotations

from typing import Literal

import torch

from tta_core.plugin import build_component

from ._common import MONO, RESAMPLER, FrozenEmbedder, check_wave, choose_weights, seeded, weights_setting


class ClapEmbedder(FrozenEmbedder):
    """wave [B, N] at 48 kHz -> [B, 1, 512] unit vectors; ``embed_text(texts)`` -> [B, 512]."""

    name = "clap"

    def __init__(self, pretrained: str | None = None, random: bool = False, amodel: str = "HTSAT-tiny",
                 tmodel: Literal["roberta", "transformer"] = "roberta", enable_fusion: bool = False,
                 tokenizer: str | None = None, device: str = "cpu"):
        super().__init__()
        file = choose_weights(self.name, pretrained, random, option="pretrained",
                              download="download a laion-clap checkpoint (e.g. 630k-audioset-best.pt from "
                                       "https://huggingface.co/lukewys/laion_clap)")
        node = {"type": "clap", "amodel": amodel, "tmodel": tmodel, "enable_fusion": enable_fusion}
        if file is not None:
            node["pretrained"] = str(file)
        if tokenizer is not None:
            node["tokenizer"] = tokenizer
        with seeded(file is None):
            self.clap = build_component("conditioner", node)
        self.sample_rate = int(self.clap.sample_rate)  # 48000
        self.dim = int(self.clap.width)  # 512
        self._node = {k: v for k, v in node.items() if k not in ("type", "pretrained")}
        self._weights = weights_setting(file)
        self.freeze(device)

    def settings(self) -> dict:
        c = self.clap.audio_cfg
        seconds = self.clap.clip_samples / self.sample_rate
        text = (f"RoBERTa tokenizer from {self._node.get('tokenizer', 'roberta-base')}"
                if self._node["tmodel"] == "roberta" else "laion-clap's bundled CLIP BPE vocabulary")
        return {
            "embedder": self.name,
            "variant": f"laion-clap {self._node['amodel']} + {self._node['tmodel']}"
                       + (" (fusion)" if self._node["enable_fusion"] else ""),
            "model": dict(self._node),
            "sample_rate": self.sample_rate,
            "channels": MONO,
            "window": f"{seconds:g} s ({self.clap.clip_samples} samples): a shorter clip repeated whole, then "
                      "zero-padded (laion-clap's repeatpad); a longer one cropped to its centre",
            "resampler": RESAMPLER,
            "front_end": {k: c[k] for k in ("window_size", "hop_size", "mel_bins", "fmin", "fmax") if k in c},
            "embedding": f"audio_projection, L2-normalised, {self.dim}-d, one per clip",
            "text": f"text_projection, L2-normalised; {text}",
            "weights": self._weights,
        }

    @torch.no_grad()
    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        wave = check_wave(self.name, wave, self.sample_rate, 1)
        return self.clap.encode_audio(self.as_input(wave), self.sample_rate).pooled[:, None]

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        return self.clap.encode_text(list(texts)).pooled
