"""Evaluation embedders (kind ``embedder``), a plugin like any other (see :mod:`tta_eval.plugin`):

- ``mel_stats``: the project's 16 kHz log-mel frames and their deltas; no weights, so it
  always runs offline (:mod:`tta_eval.mel_stats`);
- ``panns``: PANNs Cnn14, the 2048-d clip embedding and 527 AudioSet logits that
  ``audioldm_eval`` computes FD, KL and IS with (:mod:`tta_eval.panns`);
- ``clap``: LAION-CLAP audio and text embeddings for the CLAP score (:mod:`tta_eval.clap`).

Every embedder satisfies :class:`tta_core.interfaces.Embedder`.
"""
