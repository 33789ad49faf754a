"""Small inputs for the conformance kit's runs on the built-in components: a captioned set
of tones written with soundfile, and the tiny recipe settings the other tests train with."""

import json
import math
from pathlib import Path

import numpy as np
import soundfile

from test_audioldm import TINY as AUDIOLDM_TINY

WORDS = ("a low hum", "a high whistle", "a rising chirp", "a falling tone", "two beeps", "soft noise")


def write_tones(folder: Path, n: int = 6, rate: int = 16000, seconds: float = 1.0) -> Path:
    """``n`` mono WAVs of distinct tones and a jsonl manifest captioning them; the manifest's path."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    rows = []
    for i in range(n):
        wave = 0.3 * np.sin(2 * math.pi * (200 + 150 * i) * t) * np.linspace(1, 0.2, len(t))
        soundfile.write(folder / f"tone{i}.wav", wave.astype(np.float32), rate, subtype="PCM_16")
        rows.append({"id": f"tone{i}", "audio": f"tone{i}.wav", "caption": WORDS[i % len(WORDS)]})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


#: recipes/quickstart.yaml at toy size: tests/test_audioldm.py's components, with small
#: objective settings in place of its batch sizes.
QUICKSTART_TINY = [
    *(setting for setting in AUDIOLDM_TINY if not setting.startswith("train.")),
    "train.vae.objective.disc_channels=8", "train.vae.objective.disc_layers=2",
    "train.ldm.objective.validate_steps=2", "train.ldm.objective.validate_prompts=1",
]

#: recipes/diffae_birds_tiny.yaml smaller still (as tests/test_mousai.py trains it).
BIRDS_TINY = [
    "components.ae.decode_steps=2", "components.ae.channels=[16,32,32,32]", "components.ae.encoder_channels=32",
    "components.text.config={d_model: 16, num_layers: 1, num_heads: 2, d_ff: 32}",
    "components.unet.channels=[16,32,32]", "components.unet.embedding_features=16",
    "components.unet.attention_features=8", "components.unet.attention_heads=2",
    "train.diffae.objective.validate_clips=1", "train.diffae.objective.validate_steps=2",
    "train.diffgen.objective.validate_prompts=1", "train.diffgen.objective.validate_steps=2",
]


# -- importer sources: each built with the helpers of that importer's own tests -------------------

def birds_sources(folder: Path, t5_folder: Path):
    """Lightning checkpoints of the bird-sound repository's DMAE and DiffGen, and the
    ``diffae-birds`` import arguments that fit them: (sources, recipe, overrides)."""
    import torch
    from test_import import LightningModule, reference_diffae, reference_diffgen, save_lightning, sets

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_lightning(LightningModule(reference_diffae()), folder / "dmae.ckpt", folder / "pwned")
    save_lightning(LightningModule(reference_diffgen()), folder / "diffgen.ckpt", folder / "pwned")
    overrides = sets(t5_folder)[1::2]  # the --set values
    return [folder / "dmae.ckpt", folder / "diffgen.ckpt"], "recipes/diffae_birds_tiny.yaml", overrides


def diffusers_sources(folder: Path):
    """A saved tiny diffusers AudioLDMPipeline folder for ``audioldm-diffusers``."""
    from test_audioldm_import import DURATION, tiny_pipeline

    tiny_pipeline(folder)
    return [folder / "pipe"], None, [f"audio.duration={DURATION}"]


def ckpt_sources(folder: Path):
    """The original AudioLDM's Lightning checkpoint and tokenizer folder for ``audioldm-ckpt``."""
    import torch
    from test_audioldm_ckpt import build_original, original_audioldm
    from test_audioldm_import import byte_roberta_tokenizer

    tok = byte_roberta_tokenizer(folder / "_vocab")
    tok.save_pretrained(folder / "tokenizer")
    state, _ = build_original(original_audioldm(), len(tok))
    torch.save({"state_dict": state, "global_step": 5}, folder / "audioldm-s-tiny.ckpt")
    return [folder / "audioldm-s-tiny.ckpt", folder / "tokenizer"], None, ["audio.duration=0.64"]


def amphion_sources(folder: Path, t5_folder: Path):
    """Amphion TTA's trainer checkpoints, HiFi-GAN generator and config for ``amphion-tta``
    (the networks of tests/test_amphion_import.py)."""
    import torch
    from test_amphion_import import VOCODER, _randomise
    from test_audioldm_ckpt import HParams, original_audioldm

    nets = original_audioldm()
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    unet = nets.UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=32,
                          attention_resolutions=[1, 2], num_res_blocks=1, channel_mult=[1, 2], num_heads=8,
                          use_spatial_transformer=True, transformer_depth=1, context_dim=16, legacy=False)
    dd = dict(ch=32, out_ch=1, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=[], in_channels=1,
              resolution=64, z_channels=4, double_z=True, attn_type="none")
    encoder, decoder = nets.Encoder(**dd), nets.Decoder(**dd)
    quant, post_quant = torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(4, 4, 1)
    vocoder = nets.Generator(HParams(VOCODER))
    _randomise(unet, encoder, decoder, quant, post_quant, vocoder)
    vae = {f"{prefix}.{k}": v for prefix, m in (("encoder", encoder), ("decoder", decoder), ("quant_conv", quant),
                                                ("post_quant_conv", post_quant)) for k, v in m.state_dict().items()}
    torch.save({"model": vae, "step": 10}, folder / "step-0000010_loss-0.5.pt")
    torch.save({"model": {f"unet.{k}": v for k, v in unet.state_dict().items()}, "step": 20},
               folder / "audioldm-step-20.pt")
    torch.save({"generator": vocoder.state_dict()}, folder / "g_00000100")
    (folder / "config.json").write_text(json.dumps(VOCODER))
    sources = [folder / n for n in ("g_00000100", "audioldm-step-20.pt", "config.json", "step-0000010_loss-0.5.pt")]
    return sources, None, [f"components.text={{type: t5, pretrained: {t5_folder}, max_length: 16}}",
                           "audio.duration=1.024"]
