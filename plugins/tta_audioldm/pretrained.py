"""What the components that load pretrained parts from the hub or a folder share: the
tokenizer check, and the configurations and tokenizer of builds with random weights."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

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


def random_config(source: str, table: Mapping[str, Mapping[str, Any]], who: str, subfolder: str = "") -> dict:
    """The configuration of ``source`` for a build with random weights, read without the hub:
    a local folder's ``config.json``; else the built-in configuration of a well-known model,
    matched by its hub id, or by its name after the owner (so that ``checkpoints/flan-t5-large``,
    a copy not yet downloaded, builds FLAN-T5-large), with or without ``subfolder``."""
    folder = Path(source)
    if folder.is_dir():
        file = folder / "config.json"
        if not file.is_file():
            raise ValueError(f"{who}: random_weights: the folder {source} has no config.json to build the network from")
        return json.loads(file.read_text())
    path = str(source).rstrip("/")
    if subfolder and path.endswith("/" + subfolder):
        path = path[: -len(subfolder) - 1]
    for key, config in table.items():
        name = key.split("/")[-1]
        if path in (key, name) or path.endswith("/" + name):
            return dict(config)
    raise ValueError(f"{who}: random_weights: {source!r} is neither a local folder nor a model whose configuration "
                     f"is built in ({', '.join(sorted(table))}); point pretrained: at a local folder with its "
                     "config.json")


class AttrDict(dict):
    """A mapping read as keys or attributes: a network's configuration (as diffusers' and
    transformers' ``config``), or token ids and attention mask (as transformers' BatchEncoding)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


#: The tokenizer classes whose tokenizer.json :class:`JsonTokenizer` runs as transformers does.
JSON_TOKENIZER_CLASSES = (None, "RobertaTokenizer", "RobertaTokenizerFast")


class JsonTokenizer:
    """A tokenizer folder's ``tokenizer.json``, run by the tokenizers library as transformers'
    fast tokenizer runs it (its special tokens, truncation to ``max_length`` around them, right
    padding with the pad token), without importing transformers. :func:`json_tokenizer` says
    which folders it reads; others go to transformers' AutoTokenizer."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        cfg = _tokenizer_config(self.folder)
        self.model_max_length = int(cfg.get("model_max_length") or 10 ** 30)
        self.pad_token = _token_text(cfg.get("pad_token"))
        self.pad_token_id = self.tokenizer.token_to_id(self.pad_token) if self.pad_token is not None else None

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: list[str], padding: bool | str = False, truncation: bool = False,
                 max_length: int | None = None, return_tensors: str | None = None, **_: Any) -> AttrDict:
        import torch

        tok = self.tokenizer
        if truncation:
            tok.enable_truncation(max_length=int(max_length or self.model_max_length))
        else:
            tok.no_truncation()
        if padding:
            if self.pad_token_id is None:
                raise ValueError(f"the tokenizer in {self.folder} has no pad_token to pad with")
            length = int(max_length or self.model_max_length) if padding == "max_length" else None
            tok.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token, length=length)
        else:
            tok.no_padding()
        rows = tok.encode_batch(list(texts))
        ids, mask = [r.ids for r in rows], [r.attention_mask for r in rows]
        if return_tensors == "pt":
            ids, mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
        return AttrDict({"input_ids": ids, "attention_mask": mask})

    def to_transformers(self) -> Any:
        """transformers' tokenizer of the same folder (for ``tta-run export``)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.folder))


def json_tokenizer(folder: str | None) -> JsonTokenizer | None:
    """The folder's tokenizer as :class:`JsonTokenizer` when it has a ``tokenizer.json`` of a
    RoBERTa-style tokenizer (CLAP's), else None."""
    if folder is None or not (Path(folder) / "tokenizer.json").is_file():
        return None
    if _tokenizer_config(Path(folder)).get("tokenizer_class") not in JSON_TOKENIZER_CLASSES:
        return None
    return JsonTokenizer(folder)


def local_safetensors(folder: str, model_type: str, build: Any) -> Any:
    """The network of a local folder in transformers' layout whose config.json is of
    ``model_type`` and whose weights are ``model.safetensors``: ``build(config)`` as
    placeholders, given the file's tensors (nothing initialised and then overwritten). None for
    anything else (a hub id, another model, weights in another format), which transformers'
    ``from_pretrained`` reads."""
    path = Path(folder)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        return None
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type", model_type) != model_type:
        return None
    from safetensors.torch import load_file

    from tta_core.plugin import empty_parameters, load_state

    with empty_parameters():
        net = build(config)
    load_state(net, load_file(str(path / "model.safetensors")), str(path / "model.safetensors"))
    return net


def _tokenizer_config(folder: Path) -> dict:
    file = folder / "tokenizer_config.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def _token_text(token: Any) -> str | None:
    return token.get("content") if isinstance(token, dict) else token


class HashedWords:
    """A tokenizer that needs no vocabulary file, for networks built with random weights and a
    real vocabulary size: lower-cased words hashed into ``vocab_size`` ids, between the model's
    own start, end and padding ids; called as transformers' tokenizers are."""

    def __init__(self, vocab_size: int, bos_id: int | None, eos_id: int, pad_id: int, model_max_length: int):
        from .t5 import WordHashTokenizer  # imported late: t5 imports this module

        self.words = WordHashTokenizer(vocab_size)
        self.vocab_size, self.model_max_length = vocab_size, model_max_length
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos_id, eos_id, pad_id

    def __len__(self) -> int:
        return self.vocab_size

    def __call__(self, texts: list[str], padding: bool | str = True, truncation: bool = False,
                 max_length: int | None = None, return_tensors: str | None = None, **_: Any) -> Any:
        import torch

        start = [] if self.bos_token_id is None else [self.bos_token_id]
        rows = [start + self.words.ids_of(text) + [self.eos_token_id] for text in texts]
        if truncation and max_length:
            rows = [row if len(row) <= max_length else row[: max_length - 1] + [self.eos_token_id] for row in rows]
        if return_tensors is None:
            return AttrDict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
        length = max_length if padding == "max_length" and max_length else max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
        return AttrDict({"input_ids": ids, "attention_mask": mask})


def checkpoint_layers(model: Any) -> None:
    """Turn on a transformers model's gradient checkpointing, non-reentrant (it recomputes each
    layer in the backward pass, and works when the inputs need no gradient)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
