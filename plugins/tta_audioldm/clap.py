"""``clap``: LAION-CLAP (laion-clap) as conditioner, the way AudioLDM 1 uses it.

Text and audio map into one L2-normalised 512-wide space, given as ``pooled`` [B, 512] (no
tokens): the denoiser takes it through FiLM (``unet2d`` with ``pooled_dim: 512``; AudioLDM
concatenates it to the time embedding, ``pooled_concat: true``). Because both sides share the
space, a model can train on the audio embeddings of its clips (``latent_diffusion`` with
``audio_conditioning: true``: no captions needed) and sample from text.

- ``pretrained``: a laion-clap checkpoint file (``630k-audioset-best.pt``, ...; from
  https://huggingface.co/lukewys/laion_clap). Its state dict may sit under ``state_dict`` and
  carry DataParallel's ``module.`` prefix. It is loaded strictly, and only if it unpickles to
  tensors and plain containers (``tta_core.checkpoint.torch_load``). Without it the weights
  are random, which is only good for tests; sampling refuses a node without ``pretrained:``.
- ``random_weights: true``: the network ``amodel`` / ``tmodel`` / ``enable_fusion`` describe,
  with random weights, the checkpoint not read, and for ``tmodel: roberta`` hashed words over
  RoBERTa's vocabulary size instead of its tokenizer files: nothing is read or downloaded. For
  measuring a recipe at its published size without the weights.
- ``amodel`` / ``tmodel`` / ``enable_fusion`` must match the checkpoint: the 630k-* files are
  HTSAT-tiny + roberta, the music_* ones HTSAT-base + roberta, the *fusion* ones need
  ``enable_fusion: true``.
- ``tmodel: roberta`` tokenizes with RoBERTa's tokenizer (``tokenizer:``, a hub id or local
  folder, default ``roberta-base``; a tokenizer that comes back nearly empty, as transformers
  gives offline, is refused). The RoBERTa network is built from roberta-base's configuration
  and takes its weights from the checkpoint, so only the tokenizer files are needed (laion-clap
  downloads roberta-base's weights only to overwrite them). ``tmodel: transformer`` is
  laion-clap's own text tower, tokenized with the CLIP BPE vocabulary bundled in the package:
  nothing to download.

Audio: resampled to CLAP's 48 kHz (torchaudio) and fitted to its 10 s window (480000
samples) as laion-clap fits its inputs: a shorter clip is repeated whole as often as it fits,
then zero-padded ("repeatpad"); a longer one is cropped, to its centre where laion-clap takes
a random window, so that a clip always gives the same embedding. Fusion models also get
laion-clap's four-part mel: the whole clip's mel shrunk to the window, and windows from the
front, middle and back thirds (random in laion-clap, the middle of each third here).

``null(B)``: AudioLDM 1's unconditional input, for classifier-free guidance and caption
dropout, is the CLAP *text* embedding of the empty string, also when it trains on audio
embeddings (haoheliu/AudioLDM, ``audioldm/clap/encoders.py``:
``CLAPAudioEmbeddingClassifierFreev2.get_unconditional_condition`` returns
``get_text_embedding(tokenizer(["", ""]))[0:1]`` repeated over the batch, and its
``forward`` swaps an item's embedding for the same vector with ``unconditional_prob``).

Frozen by default: built in eval mode with gradients off; a stage that lists it in
``trains`` turns both on (the trainer sets them for every component).

Importing: ``laion_clap/__init__`` imports laion-clap's training code, which loads three
tokenizers (BERT, RoBERTa, BART) from the Hugging Face hub at import time (it hangs without a
network unless HF_HUB_OFFLINE=1 is set). This module imports only laion-clap's model package,
``clap_module`` (the top-level name laion-clap itself imports it under), which reaches for no
network, so it sets no environment variables of its own.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import ModuleType
from typing import Iterator, Literal, Mapping

import torch
import torch.nn.functional as F

from tta_core.plugin import CheckpointError, Conditioning, TtaError, closest, import_inner_package

from .pretrained import HashedWords, check_tokenizer

#: roberta-base's architecture (its config.json); CLAP's roberta checkpoints hold all of its weights.
ROBERTA_BASE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                    layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)

#: Tokens per text: laion-clap pads and truncates every text tower's input to 77.
CONTEXT = 77

_ROBERTA_FILES = "vocab.json + merges.txt (or tokenizer.json), with tokenizer_config.json"


def clap_module() -> ModuleType:
    """laion-clap's model package, imported without running ``laion_clap/__init__``."""
    return import_inner_package("laion_clap", "clap_module",
                                missing="the clap conditioner needs laion-clap: pip install laion-clap")


@contextlib.contextmanager
def _roberta_from_config(clap: ModuleType) -> Iterator[None]:
    """While laion-clap's CLAP constructor runs, its ``RobertaModel.from_pretrained('roberta-base')``
    builds roberta-base from its configuration instead of downloading 500 MB of weights that the
    checkpoint replaces anyway."""
    from transformers import RobertaConfig, RobertaModel

    class FromConfig:
        @staticmethod
        def from_pretrained(*_args, **_kwargs):
            return RobertaModel(RobertaConfig(**ROBERTA_BASE))

    saved = clap.model.RobertaModel
    clap.model.RobertaModel = FromConfig
    try:
        yield
    finally:
        clap.model.RobertaModel = saved


class CLAPConditioner(torch.nn.Module):
    def __init__(
        self,
        pretrained: str | None = None,
        amodel: str = "HTSAT-tiny",
        tmodel: Literal["roberta", "transformer"] = "roberta",
        enable_fusion: bool = False,
        tokenizer: str | None = None,
        random_weights: bool = False,
    ):
        super().__init__()
        if tmodel not in ("roberta", "transformer"):
            raise ValueError(f"clap: tmodel is roberta or transformer, got {tmodel!r}")
        clap = clap_module()
        audio_models = sorted(m for m in clap.list_models() if m.startswith(("HTSAT", "PANN")))
        if amodel not in audio_models:
            hint = closest(amodel, audio_models)
            raise ValueError(f"clap: unknown amodel {amodel!r}" + (f" (did you mean {hint!r}?)" if hint else "")
                             + f"; laion-clap has {', '.join(audio_models)}")
        self.amodel, self.tmodel, self.fusion = amodel, tmodel, enable_fusion

        # the tokenizer first: a missing vocabulary fails before a 100M-parameter model is built
        self.tokenizer = None
        if tmodel == "roberta" and random_weights:
            self.tokenizer = HashedWords(ROBERTA_BASE["vocab_size"], bos_id=0, eos_id=2, pad_id=1,
                                         model_max_length=CONTEXT)
        elif tmodel == "roberta":
            from transformers import RobertaTokenizer

            source = tokenizer or "roberta-base"
            try:
                self.tokenizer = RobertaTokenizer.from_pretrained(source)
            except (OSError, ValueError) as exc:
                raise TtaError(f"clap: cannot load the RoBERTa tokenizer from '{source}' ({exc}); it needs "
                               f"{_ROBERTA_FILES}") from None
            check_tokenizer(self.tokenizer, source, expected=_ROBERTA_FILES, who="clap: ",
                            fix="set tokenizer: to a local folder with roberta-base's tokenizer files")
        elif tokenizer is not None and tmodel == "transformer":
            raise ValueError("clap: tokenizer: is for tmodel: roberta; tmodel: transformer uses laion-clap's "
                             "bundled CLIP vocabulary")

        with _roberta_from_config(clap) if tmodel == "roberta" else contextlib.nullcontext():
            self.model, cfg = clap.create_model(
                amodel, tmodel, precision="fp32", device=torch.device("cpu"), enable_fusion=enable_fusion,
                fusion_type="aff_2d" if enable_fusion else "None",  # laion-clap's fusion models are aff_2d
            )
        self.audio_cfg = dict(cfg["audio_cfg"])
        self.sample_rate = int(self.audio_cfg["sample_rate"])  # 48000
        self.clip_samples = int(self.audio_cfg["clip_samples"])  # 480000: 10 s
        self.width = int(self.model.joint_embed_shape)  # 512
        if pretrained is not None and not random_weights:
            self.load_pretrained(pretrained)
        self.eval()
        self.requires_grad_(False)

    # -- weights ---------------------------------------------------------------------------------
    def load_pretrained(self, path: str) -> None:
        """Load a laion-clap checkpoint into the model, strictly; nothing changes on an error."""
        from tta_core.plugin import load_state, torch_load

        if not Path(path).is_file():
            raise CheckpointError(f"clap: no checkpoint at {path}: download a laion-clap checkpoint (e.g. "
                                  "630k-audioset-best.pt from https://huggingface.co/lukewys/laion_clap) and "
                                  "point pretrained: at the file")
        raw = torch_load(path)  # refuses files that need arbitrary Python objects to unpickle
        state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else raw
        if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"clap: {path} holds no CLAP state dict (a mapping of parameter names to "
                                  "tensors, at the top or under 'state_dict')")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        # buffers that transformers no longer saves (position_ids since 4.31) but older files hold
        own = self.model.state_dict()
        transient = {name for name, _ in self.model.named_buffers()} - set(own)
        state = {k: v for k, v in state.items() if k not in transient}
        try:
            load_state(self.model, state, path)
        except CheckpointError as exc:
            detail = str(exc).split("\nDid the recipe change")[0]
            raise CheckpointError(
                f"clap: {detail}\nDo amodel ({self.amodel}), tmodel ({self.tmodel}) and enable_fusion "
                f"({self.fusion}) match the checkpoint? The 630k-* files are HTSAT-tiny + roberta, music_* "
                "HTSAT-base + roberta, *fusion* ones need enable_fusion: true."
            ) from None

    # -- the contract ----------------------------------------------------------------------------
    def _param(self) -> torch.Tensor:
        return next(self.model.parameters())

    def encode_text(self, texts: list[str]) -> Conditioning:
        """texts -> Conditioning(pooled=[B, 512]), unit norm."""
        texts = list(texts)
        device = self._param().device
        if self.tokenizer is None:
            ids = clap_module().tokenize(texts, context_length=CONTEXT).to(device)
            x = self.model.encode_text(ids, device=device)
        else:
            enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=CONTEXT, return_tensors="pt")
            x = self.model.encode_text({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]},
                                       device=device)
        return Conditioning(pooled=F.normalize(x, dim=-1))

    def encode_audio(self, wave: torch.Tensor, sample_rate: int) -> Conditioning:
        """wave [B, N] at ``sample_rate`` -> Conditioning(pooled=[B, 512]), unit norm."""
        import torchaudio.functional as AF

        if wave.dim() != 2:
            raise ValueError(f"clap: encode_audio takes a wave [B, N], got {tuple(wave.shape)}")
        param = self._param()
        x = wave.to(device=param.device, dtype=param.dtype)
        if sample_rate != self.sample_rate:
            x = AF.resample(x, int(sample_rate), self.sample_rate)
        inputs = {"waveform": self._fit(x), "longer": torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)}
        if self.fusion:
            inputs["mel_fusion"], longer = self._mel_fusion(x, inputs["waveform"])
            inputs["longer"][:] = longer
        embedding = self.model.encode_audio(inputs, device=x.device)["embedding"]
        return Conditioning(pooled=F.normalize(self.model.audio_projection(embedding), dim=-1))

    def null(self, batch: int) -> Conditioning:
        """The text embedding of "" for every item (AudioLDM 1's unconditional input)."""
        return Conditioning(pooled=self.encode_text([""]).pooled.repeat(batch, 1))

    # -- laion-clap's input fitting -----------------------------------------------------------------
    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N] at 48 kHz -> [B, clip_samples]: repeat-pad a shorter clip, centre-crop a longer one."""
        n, clip = x.shape[-1], self.clip_samples
        if n > clip:
            start = (n - clip) // 2
            return x[:, start:start + clip]
        if n < clip:
            x = x.repeat(1, clip // n)
            x = F.pad(x, (0, clip - x.shape[-1]))
        return x

    def _mel(self, x: torch.Tensor) -> torch.Tensor:
        """laion-clap's fusion mel: [B, N] -> power mel in dB [B, T, mel_bins]."""
        import torchaudio

        c = self.audio_cfg
        spec = torchaudio.transforms.MelSpectrogram(
            sample_rate=c["sample_rate"], n_fft=c["window_size"], win_length=c["window_size"],
            hop_length=c["hop_size"], center=True, pad_mode="reflect", power=2.0, norm=None,
            n_mels=c["mel_bins"], f_min=c["fmin"], f_max=c["fmax"],
        ).to(device=x.device, dtype=x.dtype)
        return torchaudio.transforms.AmplitudeToDB(top_db=None)(spec(x)).transpose(1, 2)

    def _mel_fusion(self, x: torch.Tensor, fitted: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The fusion model's input [B, 4, T, mel_bins] and whether the clips are longer than
        the window (then: the shrunk whole mel and three windows; else four copies)."""
        frames = self.clip_samples // self.audio_cfg["hop_size"] + 1
        mel = self._mel(x) if x.shape[-1] > self.clip_samples else None
        if mel is None or mel.shape[1] == frames:
            mel = self._mel(fitted) if mel is None else mel
            return mel[:, None].repeat(1, 4, 1, 1), False
        from torchvision.transforms import Resize

        thirds = torch.tensor_split(torch.arange(mel.shape[1] - frames + 1), 3)
        starts = [int(part[len(part) // 2]) if len(part) else 0 for part in thirds]
        shrunk = Resize([frames, mel.shape[2]])(mel[:, None])[:, 0]
        return torch.stack([shrunk, *(mel[:, s:s + frames] for s in starts)], dim=1), True
