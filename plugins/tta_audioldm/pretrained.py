"""Checks shared by the conditioners that load pretrained parts from the hub or a folder."""

from __future__ import annotations

import os
from typing import Any

from tta_core.plugin import TtaError

#: The files a transformers tokenizer folder needs (one of the vocabularies, plus its config).
TOKENIZER_FILES = "tokenizer.json, or spiece.model / vocab.json + merges.txt, with tokenizer_config.json"


def check_tokenizer(tokenizer: Any, source: str, minimum: int = 100, expected: str = TOKENIZER_FILES,
                    who: str = "", fix: str = "point pretrained: at a complete local copy") -> None:
    """Offline, transformers can hand back a tokenizer with almost no vocabulary instead of
    failing (``RobertaTokenizer.from_pretrained('roberta-base')`` gives 5 tokens when the
    files are not cached); text embedded with it is garbage. Refuse it, naming what is missing."""
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else getattr(tokenizer, "vocab_size", 0)
    if size < minimum:
        present = sorted(os.listdir(source)) if os.path.isdir(source) else "not a local folder (hub id, offline?)"
        raise TtaError(
            f"{who}the tokenizer loaded from {source} has only {size} tokens: its vocabulary files are missing "
            f"(expected {expected}; found: {present}). Download the model once with network access, or {fix}."
        )
