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
- ``max_length``: default the tokenizer's ``model_max_length``, at most what the model's
  position table holds.

Frozen by default (eval mode, gradients off); a stage that lists it in ``trains`` turns both on.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from tta_core.plugin import Conditioning, TtaError

from .pretrained import check_tokenizer


class ClapTextConditioner(torch.nn.Module):
    def __init__(self, pretrained: str | None = None, config: Mapping[str, Any] | None = None,
                 tokenizer: str | None = None, max_length: int | None = None):
        super().__init__()
        if (pretrained is None) == (config is None):
            raise ValueError("clap_text: give exactly one of pretrained: (a folder) or config: (a ClapTextConfig)")
        source = tokenizer or pretrained
        if source is None:
            raise ValueError("clap_text: with config:, name the tokenizer's folder in tokenizer:")
        from transformers import AutoTokenizer, ClapTextConfig, ClapTextModelWithProjection

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            if pretrained is not None:
                self.model = ClapTextModelWithProjection.from_pretrained(pretrained)
            else:
                cfg = {k: v for k, v in dict(config).items() if k not in ("architectures", "transformers_version")}
                self.model = ClapTextModelWithProjection(ClapTextConfig(**cfg))
        except OSError as exc:
            raise TtaError(f"clap_text: cannot load from '{pretrained or source}' ({exc}). Offline, point "
                           "pretrained: and tokenizer: at local folders.") from None
        check_tokenizer(self.tokenizer, source, minimum=50, expected="vocab.json and merges.txt",
                        who="clap_text: ", fix="point tokenizer: at a complete local copy")
        positions = int(self.model.config.max_position_embeddings) - 2  # RoBERTa's offset of pad_id + 1
        limit = min(int(getattr(self.tokenizer, "model_max_length", positions) or positions), positions)
        self.max_length = min(int(max_length), positions) if max_length else limit
        self.width = int(self.model.config.projection_dim)
        self.eval()
        self.requires_grad_(False)

    def encode_text(self, texts: list[str]) -> Conditioning:
        device = next(self.model.parameters()).device
        enc = self.tokenizer(list(texts), padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")
        out = self.model(input_ids=enc.input_ids.to(device), attention_mask=enc.attention_mask.to(device))
        return Conditioning(pooled=F.normalize(out.text_embeds, dim=-1))

    def null(self, batch: int) -> Conditioning:
        return self.encode_text([""] * batch)
