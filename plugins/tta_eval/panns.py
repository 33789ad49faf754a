"""``panns``: PANNs Cnn14 (Kong et al. 2020, "PANNs: Large-Scale Pretrained Audio Neural
Networks for Audio Pattern Recognition"), the AudioSet tagger that ``audioldm_eval`` computes
its Fréchet distance (2048-d embeddings), KL and inception score (527 logits) with.

The network is the Cnn14 that laion-clap ships (``clap_module/pann_model.py``, imported
without laion-clap's network-reaching ``__init__``): the same layers and parameter names as
``Cnn14`` / ``Cnn14_16k`` in ``qiuqiangkong/audioset_tagging_cnn`` (``pytorch/models.py``), so
PANNs' published checkpoints load into it as they are.

- ``embed(wave [B, N]) -> [B, 1, 2048]``: the clip embedding ``relu(fc1(max_t + mean_t))``
  (PANNs' ``embedding``; ``audioldm_eval``'s ``"2048"`` feature).
- ``logits(wave [B, N]) -> [B, 527]``: ``fc_audioset`` of that embedding before the sigmoid
  (``audioldm_eval``'s ``"logits"``; PANNs' ``clipwise_output`` is their sigmoid).
- ``num_classes = 527``: the AudioSet ontology, in the order of PANNs'
  ``metadata/class_labels_indices.csv``.

Variants, chosen by ``sample_rate`` (the front ends PANNs trained them with, which the
checkpoints' STFT and mel weights also carry; audioldm_eval's ``EvaluationHelper`` builds the
same two):

=========== ============= ====== ===== ==== ============= ===========================
sample_rate PANNs model   window hop   mels fmin - fmax   checkpoint (Zenodo 3987831)
=========== ============= ====== ===== ==== ============= ===========================
16000       ``Cnn14_16k`` 512    160   64   50 - 8000 Hz  ``Cnn14_16k_mAP=0.438.pth``
32000       ``Cnn14``     1024   320   64   50 - 14000 Hz ``Cnn14_mAP=0.431.pth``
=========== ============= ====== ===== ==== ============= ===========================

``audioldm_eval`` evaluates 16 kHz models with ``Cnn14_16k`` (the default here). Both use
torchlibrosa's Hann STFT (center=True, reflect padding) and ``10 log10`` power mel (amin
1e-10, no top_db), then a BatchNorm over mel bands.

Input: mono, at ``sample_rate`` (resample with ``torchaudio.functional.resample``, its
defaults), the whole clip: no padding and no cropping (PANNs pool over time, so any length
of at least 31 hops, about 0.31 s, works; ``audioldm_eval`` also feeds whole files). Items of
one batch share their length; a zero-padded tail would count as silence.

Weights: ``weights: PATH`` to a local PANNs checkpoint, ``{"model": state_dict, ...}`` as
PANNs releases them (a bare state dict or a .safetensors file also do). It is read without
running any code it names (``tta_core.importing.read_tensors``: PANNs' files also hold their
training sampler's numpy state, which ``torch.load(weights_only=True)`` refuses) and loaded
strictly: a missing, unexpected or reshaped key is an error listing them. Download once,
with network access, e.g. ``wget -O Cnn14_16k_mAP=0.438.pth
'https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth?download=1'``; tta never
downloads. Without ``weights:`` the node must say ``random: true``: untrained weights, seeded,
for tests only. Licence: PANNs' code is MIT-licensed (laion-clap's copy is CC0-1.0); the
checkpoints were trained on AudioSet: read the terms on their Zenodo record for your use.

Options: ``sample_rate`` (16000 | 32000), ``weights``, ``random``, ``device``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Literal, Mapping

import torch

from tta_core.plugin import CheckpointError, import_inner_package, load_state

from ._common import MONO, RESAMPLER, FrozenEmbedder, check_wave, choose_weights, seeded, weights_setting

_ZENODO = "https://zenodo.org/record/3987831"

#: PANNs' front ends per sample rate (pytorch/models.py's Cnn14_16k asserts the 16 kHz one;
#: the 32 kHz one is the repository's default, README and inference.py).
VARIANTS = {
    16000: {"model": "Cnn14_16k", "window_size": 512, "hop_size": 160, "mel_bins": 64, "fmin": 50, "fmax": 8000,
            "checkpoint": "Cnn14_16k_mAP=0.438.pth"},
    32000: {"model": "Cnn14", "window_size": 1024, "hop_size": 320, "mel_bins": 64, "fmin": 50, "fmax": 14000,
            "checkpoint": "Cnn14_mAP=0.431.pth"},
}
CLASSES = 527
#: Cnn14 halves the time axis five times, so a clip needs 32 STFT frames (center=True: N // hop + 1).
_MIN_HOPS = 31


def _cnn14_class() -> type:
    import_inner_package("laion_clap", "clap_module", missing="the panns embedder needs laion-clap, which ships "
                         "PANNs' Cnn14: pip install laion-clap")
    return importlib.import_module("clap_module.pann_model").Cnn14


class PANNs(FrozenEmbedder):
    """wave [B, N] at ``sample_rate`` -> clip embedding [B, 1, 2048]; ``logits`` -> [B, 527]."""

    name = "panns"
    dim = 2048
    num_classes = CLASSES

    def __init__(self, sample_rate: Literal[16000, 32000] = 16000, weights: str | None = None, random: bool = False,
                 device: str = "cpu"):
        super().__init__()
        if sample_rate not in VARIANTS:
            raise ValueError(f"panns: sample_rate is 16000 (Cnn14_16k) or 32000 (Cnn14), got {sample_rate!r}")
        self.sample_rate = int(sample_rate)
        self.variant = VARIANTS[self.sample_rate]
        v = self.variant
        file = choose_weights(
            self.name, weights, random, option="weights",
            download=f"download {v['checkpoint']} (PANNs {v['model']}, {self.sample_rate} Hz) from {_ZENODO}")
        with seeded(file is None):
            self.net = _cnn14_class()(sample_rate=self.sample_rate, window_size=v["window_size"],
                                      hop_size=v["hop_size"], mel_bins=v["mel_bins"], fmin=v["fmin"],
                                      fmax=v["fmax"], classes_num=CLASSES)
        if file is not None:
            self._load(file)
        self._weights = weights_setting(file)
        self.min_samples = _MIN_HOPS * v["hop_size"]
        self.freeze(device)

    def _load(self, file: Path) -> None:
        from tta_core.plugin import read_tensors

        raw = read_tensors(file)
        state = raw.get("model", raw) if isinstance(raw, Mapping) else raw
        if not isinstance(state, Mapping) or not state:
            raise CheckpointError(f"panns: {file} holds no PANNs state dict (parameter names to tensors, at the top "
                                  "or under 'model' as PANNs' checkpoints have it)")
        state = {str(k).removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
        v = self.variant
        load_state(self.net, state, str(file), hint=(
            f"Is it a PANNs Cnn14 checkpoint for sample_rate: {self.sample_rate} ({v['checkpoint']})? "
            f"Cnn14_16k_mAP=0.438.pth is sample_rate: 16000, Cnn14_mAP=0.431.pth sample_rate: 32000."))

    def settings(self) -> dict:
        v = self.variant
        return {
            "embedder": self.name,
            "variant": v["model"],
            "architecture": "PANNs Cnn14 (laion-clap clap_module.pann_model.Cnn14)",
            "sample_rate": self.sample_rate,
            "channels": MONO,
            "window": f"whole clip, no padding or cropping (at least {self.min_samples} samples)",
            "resampler": RESAMPLER,
            "front_end": {"window_size": v["window_size"], "hop_size": v["hop_size"], "mel_bins": v["mel_bins"],
                          "fmin": v["fmin"], "fmax": v["fmax"],
                          "stft": "torchlibrosa Spectrogram: Hann, center=True, reflect padding",
                          "log_mel": "torchlibrosa LogmelFilterBank: 10 log10(max(mel power, 1e-10)), ref 1, "
                                     "no top_db"},
            "embedding": "relu(fc1(max over time + mean over time of the last conv block's band average)), "
                         "2048-d, one per clip",
            "logits": f"fc_audioset(embedding) before the sigmoid, {CLASSES} AudioSet classes",
            "weights": self._weights,
        }

    def _forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wave [B, N] -> (embedding [B, 2048], logits [B, 527])."""
        x = self.as_input(check_wave(self.name, wave, self.sample_rate, self.min_samples))
        embedding = self.net({"waveform": x}, device=x.device)["embedding"]  # dropout is off in eval mode
        return embedding, self.net.fc_audioset(embedding)

    @torch.no_grad()
    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        return self._forward(wave)[0][:, None]

    @torch.no_grad()
    def logits(self, wave: torch.Tensor) -> torch.Tensor:
        return self._forward(wave)[1]

    @torch.no_grad()
    def embed_with_logits(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embed(wave), logits(wave))`` from one forward pass."""
        embedding, logits = self._forward(wave)
        return embedding[:, None], logits
