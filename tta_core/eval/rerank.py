"""Best of K candidates by text-audio similarity: ``sample --n K --rerank clap`` (AudioLDM's
``n_candidate_gen_per_text``, which keeps the candidate its CLAP model ranks first).

Each candidate is resampled to the embedder's rate (``torchaudio.functional.resample``) and
mixed to mono; its score is the cosine between its audio embedding (frames averaged) and the
prompt's text embedding.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UsageError
from ..interfaces import has_text


def scores(embedder: Any, prompt: str, waves: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """waves [K, N] or [K, C, N] at ``sample_rate`` -> cosine similarity to ``prompt`` [K]."""
    _check_text_side(embedder)
    import torchaudio.functional as AF

    waves = waves.float().cpu()
    if waves.ndim == 3:
        waves = waves.mean(dim=1)
    if sample_rate != embedder.sample_rate:
        waves = AF.resample(waves, int(sample_rate), int(embedder.sample_rate))
    with torch.no_grad():
        audio = embedder.embed(waves).mean(dim=1).double().cpu()  # [K, D]
        text = embedder.embed_text([prompt]).double().cpu()  # [1, D]
    return torch.nn.functional.cosine_similarity(audio, text.expand_as(audio), dim=-1)


def ranker(spec: Any, registry: Any, *, recipe: Any = None, device: str | None = None) -> Any:
    """The embedder ``spec`` names (a name, a YAML mapping or a node; a bare name of the same
    type as the recipe's ``eval.text_embedder`` means that node, with its settings), refused
    before anything is generated when it has no text side."""
    from .compare import embedder_from_spec, spec_of

    node = spec_of(spec)
    configured = spec_of((recipe.get("eval") or {}).get("text_embedder")) if recipe is not None else None
    if len(node) == 1 and configured is not None and configured["type"] == node["type"]:
        node = configured  # the recipe says which checkpoint of that model
    embedder = embedder_from_spec(node, registry, device)
    _check_text_side(embedder)
    return embedder


def _check_text_side(embedder: Any) -> None:
    if not has_text(embedder):
        raise UsageError(f"reranking needs a text-audio embedder (one with embed_text); '{embedder.name}' has no "
                         "text side")


def best(embedder: Any, prompt: str, waves: torch.Tensor, sample_rate: int) -> tuple[int, list[float]]:
    """The index of the candidate (of waves [K, ...]) closest to ``prompt``, and every score."""
    sc = scores(embedder, prompt, waves, sample_rate)
    return int(sc.argmax()), [round(float(x), 6) for x in sc]
