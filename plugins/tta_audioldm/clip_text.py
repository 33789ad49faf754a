"""``clip``: CLIP's text tower (transformers' ``CLIPTextModel``) as text conditioner, the
encoder Stable Diffusion and the AudioLDM-family models built on it (Auffusion, ...) use.

Either ``pretrained:`` a local folder (transformers' layout: config.json and
model.safetensors / pytorch_model.bin; a diffusers pipeline's ``text_encoder/``) or a hub id,
read from the local cache (honouring HF_HUB_OFFLINE), frozen (eval mode, gradients off) unless
a stage lists it in ``trains``; or ``config:`` a CLIPTextConfig mapping (hidden_size,
num_hidden_layers, num_attention_heads, intermediate_size, max_position_embeddings, ...) for a
new model trained from scratch, or whose weights come from a checkpoint.

The tokenizer: ``tokenizer:`` a CLIP tokenizer's folder (vocab.json + merges.txt, or
tokenizer.json; a pipeline's ``tokenizer/``), by default the ``pretrained`` folder. With
``config:`` it may instead be ``config.tokenizer: bytes`` or ``words``, as for ``t5``: UTF-8
bytes (ByT5's ids) or hashed lower-cased words (``config.vocab_size`` buckets, default 4096),
no vocabulary file; the token ids (vocab_size, pad, eos) are then the tokenizer's. A
tokenizer that comes back nearly empty (transformers' answer offline when the files are not
cached) is refused, naming what is missing.

Conditioning:
- ``tokens`` [B, L, hidden_size]: ``last_hidden_state`` (after the final layer norm, what SD
  cross-attends to);
- ``pooled`` [B, hidden_size]: ``pooler_output``, the state at each prompt's end-of-text token
  (transformers finds it as the first ``eos_token_id``; configs that still say
  ``eos_token_id: 2`` use the argmax of the ids, the original CLIP's rule). With
  ``projection: true`` the model is ``CLIPTextModelWithProjection`` and ``pooled`` is its
  ``text_embeds`` [B, projection_dim] (not normalised, as SDXL's pooled prompt embedding);
  a checkpoint without ``text_projection`` weights is refused rather than projected at random;
- ``mask`` [B, L] bool, True on real tokens, as :class:`Conditioning` defines it.

``padding``: ``max_length`` (the default, as SD): every prompt is padded to ``max_length``
tokens (default 77, at most the model's ``max_position_embeddings``) and the network runs
without an attention mask, as SD's pipeline calls it. CLIP's attention is causal, so the real
tokens do not see the padding; the pad positions' outputs are kept as content and the mask is
all true, as ``t5``'s ``max_length`` does: SD's U-Net attends to all 77 positions, and a mask
that hid them would change what a model trained that way sees. ``longest`` pads to the batch's
longest prompt, zeroes the pad positions and masks them out (mask True exactly on the real
tokens: the start token where the tokenizer has one, the text's, the end token). Prompts longer than ``max_length`` are truncated
(keeping the end token) with a warning.

``random_weights: true`` builds the network ``pretrained:`` names with random weights, reading
nothing from the hub: the configuration from the folder's config.json, or the built-in text
tower of openai/clip-vit-large-patch14, -base-patch32 or -base-patch16 (:data:`CLIP_TEXT_CONFIGS`),
tokenized as ``config.tokenizer: words`` over the real vocabulary size. ``gradient_checkpointing:
true`` recomputes each layer's activations in the backward pass instead of keeping them.

``null(B)`` is the encoding of the empty prompt (start and end token only), SD's
unconditional input.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import torch

from tta_core.plugin import Conditioning, TtaError, closest

from .pretrained import check_tokenizer, checkpoint_layers, random_config
from .t5 import ByteTokenizer, WordHashTokenizer

log = logging.getLogger("tta.text")

#: What a pretrained folder needs: the network's files, and the tokenizer's (its own folder or the same).
MODEL_FILES = ("config.json", "model.safetensors or pytorch_model.bin")
TOKENIZER_FILES = "vocab.json + merges.txt, or tokenizer.json"
#: Keys of a saved config.json that describe the file, not the network.
_BOOKKEEPING = {"_name_or_path", "architectures", "transformers_version", "model_type", "torch_dtype", "dtype",
                "dropout", "tokenizer_class"}
_ID_KEYS = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")


def _clip_text(hidden: int, layers: int, heads: int, projection: int) -> dict[str, Any]:
    return dict(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, max_position_embeddings=77, hidden_act="quick_gelu",
                projection_dim=projection, layer_norm_eps=1e-5)


#: The text towers of well-known CLIP checkpoints (their config.json's text_config), for ``random_weights``.
CLIP_TEXT_CONFIGS = {
    "openai/clip-vit-large-patch14": _clip_text(768, 12, 12, 768),
    "openai/clip-vit-base-patch32": _clip_text(512, 12, 8, 512),
    "openai/clip-vit-base-patch16": _clip_text(512, 12, 8, 512),
}


class CLIPTextConditioner(torch.nn.Module):
    def __init__(
        self,
        pretrained: str | None = None,
        config: Mapping[str, Any] | None = None,
        tokenizer: str | None = None,
        max_length: int | None = None,  # tokens per prompt, start and end included; default 77
        padding: str = "max_length",
        projection: bool = False,  # pooled = CLIPTextModelWithProjection's text_embeds
        random_weights: bool = False,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        if (pretrained is None) == (config is None):
            raise ValueError("clip: give exactly one of pretrained: (hub id or folder) or config: (a CLIPTextConfig)")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"clip: padding is 'max_length' or 'longest', got {padding!r}")
        self.padding = padding
        self.hashed: ByteTokenizer | None = None  # the bytes / words tokenizer, when there is no tokenizer folder
        if pretrained is not None and random_weights:
            self.model = self._random_model(pretrained, projection)
            self.eval()
            self.requires_grad_(False)
        elif pretrained is not None:
            self.tokenizer = _load_tokenizer(tokenizer or pretrained)
            self.model = _load_model(pretrained, projection)
            self.eval()
            self.requires_grad_(False)
        else:
            self.model = self._new_model(dict(config), tokenizer, projection)
        if self.hashed is None:
            _check_eos(self.model.config, self.tokenizer.eos_token_id)
        positions = int(self.model.config.max_position_embeddings)
        if max_length is not None and int(max_length) > positions:
            raise ValueError(f"clip: max_length {max_length} is more than the model's {positions} positions "
                             "(max_position_embeddings)")
        if max_length is not None and int(max_length) < 2:
            raise ValueError(f"clip: max_length must leave room for the start and end tokens, got {max_length}")
        self.max_length = int(max_length) if max_length is not None else min(77, positions)
        self.width = int(self.model.config.hidden_size)
        self.pooled_width = int(self.model.config.projection_dim) if projection else self.width
        self.projection = bool(projection)
        if gradient_checkpointing:
            checkpoint_layers(self.model)
        self._warned = False

    def _random_model(self, source: str, projection: bool) -> torch.nn.Module:
        """The network ``source`` names, with random weights, and hashed words over its vocabulary."""
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        cfg = random_config(source, CLIP_TEXT_CONFIGS, "clip")
        cfg = dict(cfg.get("text_config") or cfg)  # a whole CLIPConfig holds the text tower's under text_config
        self.hashed = WordHashTokenizer(int(cfg.get("vocab_size", 49408)))
        ids = {"vocab_size": self.hashed.vocab_size, "pad_token_id": self.hashed.pad_id,
               "eos_token_id": self.hashed.eos_id, "bos_token_id": None}
        config = CLIPTextConfig.from_dict({**{k: v for k, v in cfg.items() if k not in _BOOKKEEPING}, **ids})
        return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)

    def _new_model(self, cfg: dict[str, Any], tokenizer: str | None, projection: bool) -> torch.nn.Module:
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        kind = cfg.pop("tokenizer", None)
        if (kind is None) == (tokenizer is None):
            raise ValueError("clip: with config:, give the tokenizer's folder in tokenizer:, or config.tokenizer: "
                             "bytes or words (no vocabulary file), not both")
        if kind is not None:
            if kind not in ("bytes", "words"):
                raise ValueError(f"clip config.tokenizer is 'bytes' or 'words', got {kind!r}")
            fixed = [k for k in _ID_KEYS if k in cfg and not (kind == "words" and k == "vocab_size")]
            if fixed:
                raise ValueError(f"clip config: {fixed} are set by config.tokenizer: {kind}; leave them out")
            self.hashed = ByteTokenizer() if kind == "bytes" else WordHashTokenizer(int(cfg.pop("vocab_size", 4096)))
            ids = {"vocab_size": self.hashed.vocab_size, "pad_token_id": self.hashed.pad_id,
                   "eos_token_id": self.hashed.eos_id, "bos_token_id": None}
        else:
            self.tokenizer = _load_tokenizer(tokenizer)
            size = len(self.tokenizer)
            if int(cfg.get("vocab_size", size)) < size:
                raise ValueError(f"clip config.vocab_size {cfg['vocab_size']} is smaller than the tokenizer's "
                                 f"{size} tokens")
            ids = {"vocab_size": size, "pad_token_id": self.tokenizer.pad_token_id,
                   "eos_token_id": self.tokenizer.eos_token_id, "bos_token_id": self.tokenizer.bos_token_id}
        known = set(CLIPTextConfig().to_dict())
        unknown = sorted(k for k in cfg if k not in known and k not in _BOOKKEEPING)
        if unknown:
            hints = [f"{k} (did you mean {closest(k, known)}?)" if closest(k, known) else k for k in unknown]
            raise ValueError(f"clip config: unknown keys {', '.join(hints)}; a CLIPTextConfig takes "
                             f"{', '.join(sorted(known - {'_name_or_path', 'architectures', 'transformers_version'}))}, "
                             "and tokenizer: bytes or words")
        args = {k: v for k, v in cfg.items() if k not in _BOOKKEEPING}
        config = CLIPTextConfig(**{**ids, **args})
        return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, L] long, mask [B, L] bool, True on real tokens)."""
        pad_to_max = self.padding == "max_length"
        if self.hashed is not None:
            ids, mask, truncated = self.hashed(texts, self.max_length, pad_to_max)
        else:
            lengths = [len(row) for row in self.tokenizer(texts, verbose=False).input_ids]
            truncated = sum(n > self.max_length for n in lengths)
            enc = self.tokenizer(texts, padding="max_length" if pad_to_max else True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            ids, mask = enc.input_ids, enc.attention_mask.bool()
        if truncated and not self._warned:
            log.warning("clip: %d prompt(s) longer than max_length=%d tokens were truncated", truncated,
                        self.max_length)
            self._warned = True
        return ids, mask

    def encode_text(self, texts: list[str]) -> Conditioning:
        """Prompts to tokens [B, L, hidden_size], mask [B, L], pooled [B, hidden_size or projection_dim]."""
        device = next(self.model.parameters()).device
        ids, mask = self._tokenize(list(texts))
        ids, mask = ids.to(device), mask.to(device)
        # No attention mask, as SD's pipeline: the attention is causal, so the real tokens (and the
        # end token that pooling reads) never see the padding after them.
        out = self.model(input_ids=ids)
        tokens = out.last_hidden_state
        pooled = out.text_embeds if self.projection else out.pooler_output
        if self.padding == "max_length":  # the pad positions' outputs are content, as SD's U-Net sees them
            return Conditioning(tokens=tokens, mask=torch.ones_like(mask), pooled=pooled)
        return Conditioning(tokens=tokens * mask[..., None], mask=mask, pooled=pooled)

    def null(self, batch: int) -> Conditioning:
        """The empty prompt's encoding, ``batch`` times."""
        return self.encode_text([""] * batch)


def _load_tokenizer(source: str) -> Any:
    from transformers import CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise TtaError(f"clip: cannot load a CLIP tokenizer from '{source}' ({_first_line(exc)}); expected "
                       f"{TOKENIZER_FILES} ({_found(source)}).") from None
    check_tokenizer(tokenizer, source, minimum=100, expected=TOKENIZER_FILES, who="clip: ",
                    fix="point tokenizer: at a complete local copy")
    return tokenizer


def _load_model(source: str, projection: bool) -> torch.nn.Module:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if os.path.isdir(source):
        files = set(os.listdir(source))
        missing = [name for name, present in (
            ("config.json", "config.json" in files),
            ("model.safetensors or pytorch_model.bin", bool(files & {"model.safetensors", "pytorch_model.bin",
                                                                      "model.safetensors.index.json",
                                                                      "pytorch_model.bin.index.json"})),
        ) if not present]
        if missing:
            hint = (" It looks like a diffusers pipeline: point pretrained: at its text_encoder/ and tokenizer: "
                    "at its tokenizer/." if "text_encoder" in files else "")
            raise TtaError(f"clip: the folder {source} lacks {' and '.join(missing)} (found: {sorted(files)}).{hint}")
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    try:
        model, info = cls.from_pretrained(source, output_loading_info=True)
    except OSError as exc:
        raise TtaError(f"clip: cannot load '{source}' ({_first_line(exc)}). Offline, point pretrained: at a local "
                       f"folder with {', '.join(MODEL_FILES)} and the tokenizer's {TOKENIZER_FILES}, or download "
                       "the model once with network access.") from None
    if projection and any(key.startswith("text_projection") for key in info.get("missing_keys", ())):
        raise TtaError(f"clip: projection: true, but {source} has no text_projection weights (a CLIPTextModel "
                       "checkpoint): a random projection would be garbage. Use projection: false, or a "
                       "CLIPTextModelWithProjection checkpoint.")
    return model


def _check_eos(config: Any, eos_id: int | None) -> None:
    """Pooling reads the state at the first ``config.eos_token_id``: it must be the tokenizer's
    end token (or 2, transformers' marker for the original argmax rule), else every prompt's
    pooled vector would be read at position 0."""
    if config.eos_token_id not in (2, eos_id):
        raise TtaError(f"clip: the model's eos_token_id {config.eos_token_id} is not the tokenizer's end token "
                       f"{eos_id}: pooled would be read at the wrong position. Use the model's own tokenizer.")


def _found(source: str) -> str:
    return f"found: {sorted(os.listdir(source))}" if os.path.isdir(source) else "not a local folder (hub id, offline?)"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
