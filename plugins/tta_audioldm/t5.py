"""``t5``: a T5 encoder as text conditioner (AudioLDM 2 / Amphion use FLAN-T5 / T5-base).

Either ``pretrained:`` a hub id or a local folder (transformers' layout; read from the local
cache, honouring HF_HUB_OFFLINE), kept frozen unless a stage lists it in ``trains``; or
``config:`` a small T5 trained from scratch with a tokenizer that needs no vocabulary file:
``tokenizer: bytes`` (the default; ByT5's ids: bytes + 3, pad 0, eos 1) or ``tokenizer:
words`` (each lower-cased word hashed into ``vocab_size`` ids, default 4096: the model sees
words without having to learn to spell them).

``random_weights: true`` builds the network ``pretrained:`` names with random weights and reads
nothing from the hub: the configuration from the folder's config.json, or, for a hub id, the
built-in one of t5-small / -base / -large and google/flan-t5-small / -base / -large
(:data:`T5_CONFIGS`); the tokenizer is then ``words`` over the model's real vocabulary size, so
the embedding table has its real size. For measuring a recipe at its published size without
the weights. ``gradient_checkpointing: true`` recomputes each layer's activations in the
backward pass instead of keeping them (less memory, about a third more compute when trained).

Conditioning: tokens [B, L, d_model] (padding masked), mask [B, L], and pooled [B, d_model],
the masked mean of the tokens, for denoisers that also take a vector. ``null(B)`` is the
encoding of the empty prompt, which caption dropout trains the model to treat as "no text".

``padding: max_length`` encodes as audio-diffusion-pytorch's ``T5Embedder`` (the bird-sound
repository's and Mousai's text encoder): every prompt padded to ``max_length`` tokens, and the
encoder's outputs at the pad positions kept as content (mask all true), which is what models
trained with it saw. The default, ``longest``, pads to the batch's longest prompt and zeroes
and masks the padding.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch

from tta_core.plugin import Conditioning, TtaError

from .pretrained import check_tokenizer, checkpoint_layers, random_config

log = logging.getLogger("tta.text")


def _t5(d_model: int, d_ff: int, heads: int, layers: int, gated: bool) -> dict[str, Any]:
    return dict(vocab_size=32128, d_model=d_model, d_kv=64, d_ff=d_ff, num_heads=heads, num_layers=layers,
                feed_forward_proj="gated-gelu" if gated else "relu", tie_word_embeddings=not gated,
                relative_attention_num_buckets=32, dropout_rate=0.1, layer_norm_epsilon=1e-6,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


#: The hub's configurations (config.json) of the T5 encoders recipes name, for ``random_weights``.
T5_CONFIGS = {
    "t5-small": _t5(512, 2048, 8, 6, gated=False),
    "t5-base": _t5(768, 3072, 12, 12, gated=False),
    "t5-large": _t5(1024, 4096, 16, 24, gated=False),
    "google-t5/t5-small": _t5(512, 2048, 8, 6, gated=False),
    "google-t5/t5-base": _t5(768, 3072, 12, 12, gated=False),
    "google-t5/t5-large": _t5(1024, 4096, 16, 24, gated=False),
    "google/flan-t5-small": _t5(512, 1024, 6, 8, gated=True),
    "google/flan-t5-base": _t5(768, 2048, 12, 12, gated=True),
    "google/flan-t5-large": _t5(1024, 2816, 16, 24, gated=True),
}


class ByteTokenizer:
    """UTF-8 bytes as tokens, ByT5's ids: 0 pad, 1 eos, 2 unk, byte b -> b + 3."""

    vocab_size = 259
    pad_id, eos_id = 0, 1

    def ids_of(self, text: str) -> list[int]:
        return [b + 3 for b in text.encode("utf-8")]

    def __call__(self, texts: list[str], max_length: int, pad_to_max: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(ids [B, L], mask [B, L], how many were truncated): each text's ids and eos, cut to
        ``max_length``, padded to the longest (or to ``max_length``)."""
        rows, truncated = [], 0
        for text in texts:
            ids = self.ids_of(text)
            if len(ids) > max_length - 1:
                ids, truncated = ids[: max_length - 1], truncated + 1
            rows.append(ids + [self.eos_id])
        length = max_length if pad_to_max else max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids, ids != self.pad_id, truncated


class WordHashTokenizer(ByteTokenizer):
    """Words (lower-cased runs of letters and digits) as tokens, each hashed (CRC-32) into
    ``vocab_size - 3`` buckets after the pad, eos and unk ids: no vocabulary file, and a
    model trained from scratch sees whole words rather than having to learn their spelling."""

    def __init__(self, vocab_size: int = 4096):
        if vocab_size < 64:
            raise ValueError(f"t5 config.vocab_size must be at least 64, got {vocab_size}")
        self.vocab_size = vocab_size

    def ids_of(self, text: str) -> list[int]:
        import re
        import zlib

        return [3 + zlib.crc32(w.encode()) % (self.vocab_size - 3) for w in re.findall(r"[a-z0-9]+", text.lower())]


class T5Conditioner(torch.nn.Module):
    #: where adapters go by default (tta_core.adapters): the self-attention projections
    adapter_targets = ("*.SelfAttention.q", "*.SelfAttention.k", "*.SelfAttention.v", "*.SelfAttention.o")

    def __init__(
        self,
        pretrained: str | None = None,
        config: Mapping[str, Any] | None = None,
        max_length: int = 128,
        padding: str = "longest",
        random_weights: bool = False,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        if (pretrained is None) == (config is None):
            raise ValueError("t5: give exactly one of pretrained: (hub id or folder) or config: (a new small T5)")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"t5: padding is 'longest' or 'max_length', got {padding!r}")
        from transformers import T5Config, T5EncoderModel

        self.max_length, self.padding = max_length, padding
        if pretrained is not None and random_weights:
            self.encoder = T5EncoderModel(T5Config.from_dict(random_config(pretrained, T5_CONFIGS, "t5")))
            self.bytes = WordHashTokenizer(int(self.encoder.config.vocab_size))
        elif pretrained is not None:
            from transformers import AutoTokenizer

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(pretrained)
                self.encoder = T5EncoderModel.from_pretrained(pretrained)
            except OSError as exc:
                raise TtaError(f"t5: cannot load '{pretrained}' ({exc}). Offline, point pretrained: at a "
                               "local folder with config.json, the weights and the tokenizer files.") from None
            check_tokenizer(self.tokenizer, pretrained, who="t5: ")
            self.bytes = None
        else:
            cfg = dict(config)
            d_model = int(cfg.pop("d_model", 256))
            heads = int(cfg.pop("num_heads", 4))
            kind = cfg.pop("tokenizer", "bytes")
            if kind not in ("bytes", "words"):
                raise ValueError(f"t5 config.tokenizer is 'bytes' or 'words', got {kind!r}")
            tokenizer = ByteTokenizer() if kind == "bytes" else WordHashTokenizer(int(cfg.pop("vocab_size", 4096)))
            self.encoder = T5EncoderModel(T5Config(
                vocab_size=tokenizer.vocab_size, d_model=d_model, num_heads=heads,
                d_kv=int(cfg.pop("d_kv", d_model // heads)), d_ff=int(cfg.pop("d_ff", 4 * d_model)),
                num_layers=int(cfg.pop("num_layers", cfg.pop("layers", 2))),
                dropout_rate=float(cfg.pop("dropout", 0.0)), pad_token_id=0, eos_token_id=1,
                decoder_start_token_id=0,
            ))
            if cfg:
                raise ValueError(f"t5 config: unknown keys {sorted(cfg)}; known: d_model, num_heads, d_kv, d_ff, "
                                 "num_layers, dropout, tokenizer (bytes or words), vocab_size (words)")
            self.bytes = tokenizer
        if gradient_checkpointing:
            checkpoint_layers(self.encoder)
        self.width = self.encoder.config.d_model
        self._warned = False

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bytes is not None:
            ids, mask, truncated = self.bytes(texts, self.max_length, self.padding == "max_length")
        else:
            full = self.tokenizer(texts, padding=True, return_tensors="pt")
            truncated = int((full.attention_mask.sum(1) > self.max_length).sum())
            enc = self.tokenizer(texts, padding=True if self.padding == "longest" else "max_length", truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            ids, mask = enc.input_ids, enc.attention_mask.bool()
            if ids.shape[1] == 0:  # "" with a tokenizer that appends no </s>: one end token
                end = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else self.tokenizer.pad_token_id
                ids = torch.full((len(texts), 1), end if end is not None else 0, dtype=torch.long)
                mask = torch.ones_like(ids, dtype=torch.bool)
        if truncated and not self._warned:
            log.warning("t5: %d prompt(s) longer than max_length=%d tokens were truncated", truncated, self.max_length)
            self._warned = True
        return ids, mask

    def encode_text(self, texts: list[str]) -> Conditioning:
        device = next(self.encoder.parameters()).device
        ids, mask = self._tokenize(list(texts))
        ids, mask = ids.to(device), mask.to(device)
        tokens = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        if self.padding == "max_length":  # T5Embedder's: the pad positions' outputs are content
            return Conditioning(tokens=tokens, mask=torch.ones_like(mask), pooled=pooled)
        tokens = tokens * mask[..., None]
        return Conditioning(tokens=tokens, mask=mask, pooled=pooled)

    def null(self, batch: int) -> Conditioning:
        return self.encode_text([""] * batch)
