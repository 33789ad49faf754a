"""``clap_text``: CLAP's text tower as transformers has it (``ClapTextModelWithProjection``),
the conditioner of diffusers' ``AudioLDMPipeline``.

``pooled`` [B, projection_dim]: the model's ``text_embeds``, L2-normalised, as the pipeline
computes them (prompts padded to ``max_length`` and truncated). ``null(B)`` is the embedding
of the empty prompt, the pipeline's unconditional input.

- ``pretrained``: a folder saved by transformers (config.json + weights; a diffusers
  pipeline's ``text_encoder/``); or ``config``: a ClapTextConfig mapping, the weights then
  coming from a checkpoint (what ``tta-run import audioldm-diffusers`` writes).
- ``tokenizer``: the RoBERTa tokenizer's folder (a pipeline's ``tokenizer/``); default the
  ``pretrained`` folder. A tokenizer that comes back nearly empty (transformers' answer
  offline when the files are missing) is refused.
- ``random_weights: true``: the network ``pretrained:`` names (its folder's config.json, or the
  built-in ClapTextConfig of laion/clap-htsat-* and cvssp/audioldm-*, all roberta-base with a
  512-wide projection) or ``config:`` describes, with random weights, tokenized by hashed words
  over RoBERTa's vocabulary: nothing is read from the hub. For measuring a recipe at its
  published size without the weights.
- ``max_length``: default the tokenizer's ``model_max_length``, at most what the model's
  position table holds.

Frozen by default (eval mode, gradients off); a stage that lists it in ``trains`` turns both on.

The tower is tta's own (:mod:`tta_audioldm.nets`: transformers' parameter names and
embeddings) and a tokenizer folder with a ``tokenizer.json`` is read by the tokenizers library
as transformers' fast tokenizer reads it, so that a sampling process does not import
transformers; weights in another format than ``model.safetensors``, a hub id, or a
configuration the tower does not cover go through transformers' classes.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from tta_core.plugin import Conditioning, TtaError

from .nets import ClapTextModelWithProjection, clap_text_unsupported
from .pretrained import HashedWords, check_tokenizer, json_tokenizer, local_safetensors, random_config

#: The text tower of laion's CLAP checkpoints (ClapTextConfig: roberta-base with a 512-wide
#: projection), AudioLDM's pipelines' ``text_encoder``, for ``random_weights``.
_CLAP_TEXT = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, hidden_act="gelu", max_position_embeddings=514, type_vocab_size=1,
                  layer_norm_eps=1e-12, projection_dim=512, projection_hidden_act="relu", pad_token_id=1,
                  bos_token_id=0, eos_token_id=2)
CLAP_TEXT_CONFIGS = {name: _CLAP_TEXT for name in (
    "laion/clap-htsat-unfused", "laion/clap-htsat-fused", "cvssp/audioldm", "cvssp/audioldm-s-full",
    "cvssp/audioldm-s-full-v2", "cvssp/audioldm-m-full", "cvssp/audioldm-l-full")}


class ClapTextConditioner(torch.nn.Module):
    def __init__(self, pretrained: str | None = None, config: Mapping[str, Any] | None = None,
                 tokenizer: str | None = None, max_length: int | None = None, random_weights: bool = False):
        super().__init__()
        if (pretrained is None) == (config is None):
            raise ValueError("clap_text: give exactly one of pretrained: (a folder) or config: (a ClapTextConfig)")
        if random_weights:
            self._build_random(pretrained, config)
        else:
            self._load(pretrained, config, tokenizer)
        positions = int(self.model.config.max_position_embeddings) - 2  # RoBERTa's offset of pad_id + 1
        limit = min(int(getattr(self.tokenizer, "model_max_length", positions) or positions), positions)
        self.max_length = min(int(max_length), positions) if max_length else limit
        self.width = int(self.model.config.projection_dim)
        self.eval()
        self.requires_grad_(False)

    def _build_random(self, pretrained: str | None, config: Mapping[str, Any] | None) -> None:
        """The network, random; hashed words over RoBERTa's vocabulary with its special ids."""
        cfg = random_config(pretrained, CLAP_TEXT_CONFIGS, "clap_text", subfolder="text_encoder") \
            if pretrained is not None else dict(config)
        cfg = dict(cfg.get("text_config") or cfg)  # a whole ClapConfig holds the text tower's under text_config
        self.model = _text_tower(cfg)
        c = self.model.config
        self.tokenizer = HashedWords(int(c.vocab_size), bos_id=c.bos_token_id, eos_id=c.eos_token_id,
                                     pad_id=c.pad_token_id, model_max_length=512)

    def _load(self, pretrained: str | None, config: Mapping[str, Any] | None, tokenizer: str | None) -> None:
        source = tokenizer or pretrained
        if source is None:
            raise ValueError("clap_text: with config:, name the tokenizer's folder in tokenizer:")
        try:
            self.tokenizer = json_tokenizer(source)
            if self.tokenizer is None:
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(source)
            if pretrained is None:
                self.model = _text_tower(dict(config))
            else:
                model = local_safetensors(pretrained, "clap_text_model", _text_tower)
                if model is None:  # a hub id, or weights in another format: transformers reads them
                    from transformers import ClapTextModelWithProjection

                    model = ClapTextModelWithProjection.from_pretrained(pretrained)
                self.model = model
        except OSError as exc:
            raise TtaError(f"clap_text: cannot load from '{pretrained or source}' ({exc}). Offline, point "
                           "pretrained: and tokenizer: at local folders.") from None
        check_tokenizer(self.tokenizer, source, minimum=50, expected="vocab.json and merges.txt",
                        who="clap_text: ", fix="point tokenizer: at a complete local copy")

    def encode_text(self, texts: list[str]) -> Conditioning:
        device = next(self.model.parameters()).device
        enc = self.tokenizer(list(texts), padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")
        out = self.model(input_ids=enc.input_ids.to(device), attention_mask=enc.attention_mask.to(device))
        return Conditioning(pooled=F.normalize(out.text_embeds, dim=-1))

    def null(self, batch: int) -> Conditioning:
        return self.encode_text([""] * batch)


def _text_tower(cfg: Mapping[str, Any]) -> torch.nn.Module:
    """The text tower of a ClapTextConfig mapping: tta's own (tta_audioldm.nets) where it covers
    it, else transformers'."""
    cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")}
    if clap_text_unsupported(cfg) is None:
        return ClapTextModelWithProjection(**cfg)
    from transformers import ClapTextConfig, ClapTextModelWithProjection as TransformersTower

    return TransformersTower(ClapTextConfig.from_dict(cfg))
