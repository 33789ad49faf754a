"""The ``clip`` text conditioner on tiny CLIP text towers and a byte-level CLIP tokenizer
written here (nothing downloaded)."""

import json
import logging
from pathlib import Path

import pytest
import torch

from tta_core.errors import TtaError
from tta_core.interfaces import Conditioning
from tta_core.testing.conformance import check_conditioner, check_denoiser

from tta_audioldm.clip_text import CLIPTextConditioner

WIDTH = 32
PROMPTS = ["a dog barks", "rain", "thunder rolls over the hills, far away"]


def byte_clip_tokenizer(folder: Path):
    """CLIP's byte-level BPE with no merges: every byte its own token, and again with CLIP's
    end-of-word mark ``</w>`` for a word's last byte; then ``<|startoftext|>`` (512) and
    ``<|endoftext|>`` (513, also the pad token, as in openai/clip-vit-*)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    # GPT-2's printable stand-in for each byte
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    vocab = {ch: i for i, ch in enumerate(chars)}
    vocab |= {ch + "</w>": 256 + i for i, ch in enumerate(chars)}
    vocab |= {"<|startoftext|>": 512, "<|endoftext|>": 513}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer",
                                                              "model_max_length": 77}))
    return CLIPTokenizer.from_pretrained(folder)


def tiny_clip(folder: Path, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=514, hidden_size=WIDTH, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, projection_dim=16,
                            bos_token_id=512, eos_token_id=513, pad_token_id=513)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip") / "clip"
    model = tiny_clip(folder)
    tokenizer = byte_clip_tokenizer(folder)
    return folder, model, tokenizer


def test_tokens_mask_and_pooled_with_longest_padding(clip_folder):
    folder, model, tokenizer = clip_folder
    clip = CLIPTextConditioner(pretrained=str(folder), padding="longest")
    assert not clip.training and not any(p.requires_grad for p in clip.parameters())  # frozen by default
    with torch.no_grad():
        out = clip.encode_text(PROMPTS)
    lengths = [len(ids) for ids in tokenizer(PROMPTS).input_ids]  # start and end tokens included
    assert lengths == [len(p.replace(" ", "")) + 2 for p in PROMPTS]  # a token per byte; CLIP drops the spaces
    assert out.tokens.shape == (3, max(lengths), WIDTH) and out.pooled.shape == (3, WIDTH)
    assert out.mask.dtype is torch.bool and out.mask.sum(1).tolist() == lengths
    assert all(out.mask[i, :n].all() and not out.mask[i, n:].any() for i, n in enumerate(lengths))
    assert torch.equal(out.tokens[1, lengths[1]:], torch.zeros(max(lengths) - lengths[1], WIDTH))
    # the real tokens' states are the model's, prompt by prompt
    for i, prompt in enumerate(PROMPTS):
        ids = torch.tensor(tokenizer([prompt]).input_ids)
        with torch.no_grad():
            ref = model(input_ids=ids).last_hidden_state[0]
        assert torch.allclose(out.tokens[i, : lengths[i]], ref, atol=1e-5)
        # pooled: transformers' pooler_output, the state at the first eos_token_id (the end token)
        eos = int((ids[0] == model.config.eos_token_id).int().argmax())
        assert eos == lengths[i] - 1
        assert torch.allclose(out.pooled[i], ref[eos], atol=1e-5)
    check_conditioner(clip)


def test_max_length_pads_to_77_as_stable_diffusion(clip_folder):
    folder, model, tokenizer = clip_folder
    clip = CLIPTextConditioner(pretrained=str(folder))
    longest = CLIPTextConditioner(pretrained=str(folder), padding="longest")
    with torch.no_grad():
        out, short = clip.encode_text(PROMPTS), longest.encode_text(PROMPTS)
        ids = tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt").input_ids
        ref = model(input_ids=ids)  # the pipeline's call: padded to 77, no attention mask
    assert out.tokens.shape == (3, 77, WIDTH) and out.mask.shape == (3, 77)
    assert out.mask.all()  # the pad positions' outputs are content the U-Net attends to, as in SD
    assert torch.allclose(out.tokens, ref.last_hidden_state, atol=1e-5)
    assert torch.allclose(out.pooled, ref.pooler_output, atol=1e-5)
    # causal attention: the real tokens and the pooled end token do not see the padding
    n = short.tokens.shape[1]
    assert torch.allclose(out.tokens[:, :n] * short.mask[..., None], short.tokens, atol=1e-5)
    assert torch.allclose(out.pooled, short.pooled, atol=1e-5)
    check_conditioner(clip)


def test_null_is_the_empty_prompt(clip_folder):
    folder, model, _ = clip_folder
    for padding in ("max_length", "longest"):
        clip = CLIPTextConditioner(pretrained=str(folder), padding=padding)
        with torch.no_grad():
            null, empty = clip.null(2), clip.encode_text(["", ""])
        for name in ("tokens", "mask", "pooled"):
            assert torch.equal(getattr(null, name), getattr(empty, name))
    with torch.no_grad():
        start_end = model(input_ids=torch.tensor([[512, 513]])).last_hidden_state[0]
    assert null.tokens.shape == (2, 2, WIDTH) and torch.allclose(null.pooled[0], start_end[1], atol=1e-5)


def test_an_over_long_prompt_is_truncated_with_a_warning(clip_folder, caplog):
    folder, model, tokenizer = clip_folder
    clip = CLIPTextConditioner(pretrained=str(folder), max_length=16, padding="longest")
    with caplog.at_level(logging.WARNING, logger="tta.text"):
        out = clip.encode_text(["a" * 40, "dog"])
    assert "1 prompt(s) longer than max_length=16 tokens were truncated" in caplog.text
    assert out.tokens.shape == (2, 16, WIDTH) and out.mask.sum(1).tolist() == [16, 5]
    ids = torch.tensor([[512] + [64] * 14 + [513]])  # kept: the start, 14 "a" (mid-word), and the end token
    assert torch.equal(clip._tokenize(["a" * 40])[0], ids)
    with torch.no_grad():
        ref = model(input_ids=ids).last_hidden_state[0]
    assert torch.allclose(out.tokens[0], ref, atol=1e-5) and torch.allclose(out.pooled[0], ref[-1], atol=1e-5)
    with pytest.raises(ValueError, match="max_length 100 is more than the model's 77 positions"):
        CLIPTextConditioner(pretrained=str(folder), max_length=100)


def test_missing_files_are_named(clip_folder, tmp_path):
    folder, _, _ = clip_folder
    # a tokenizer folder without its vocabulary: transformers hands back a 2-token tokenizer
    empty = tmp_path / "tok"
    empty.mkdir()
    (empty / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer"}))
    with pytest.raises(TtaError, match=r"has only 2 tokens: its vocabulary files are missing \(expected "
                                       r"vocab.json \+ merges.txt, or tokenizer.json; found: \['tokenizer_config.json'\]"):
        CLIPTextConditioner(pretrained=str(folder), tokenizer=str(empty))
    # a model folder without weights
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(TtaError, match="lacks model.safetensors or pytorch_model.bin"):
        CLIPTextConditioner(pretrained=str(tmp_path / "model"), tokenizer=str(folder))
    # a hub id that is not cached, offline
    with pytest.raises(TtaError, match="clip: "):
        CLIPTextConditioner(pretrained="tta-test/no-such-clip-model")


def test_projection_gives_text_embeds_as_pooled(clip_folder, tmp_path):
    folder, _, _ = clip_folder
    model = tiny_clip(tmp_path / "proj", projection=True)
    byte_clip_tokenizer(tmp_path / "proj")
    clip = CLIPTextConditioner(pretrained=str(tmp_path / "proj"), projection=True)
    with torch.no_grad():
        out = clip.encode_text(PROMPTS[:2])
        ids = torch.tensor(byte_clip_tokenizer(tmp_path / "proj")(PROMPTS[:2], padding="max_length",
                                                                   max_length=77).input_ids)
        ref = model(input_ids=ids)
    assert out.pooled.shape == (2, 16) and clip.pooled_width == 16 and clip.width == WIDTH
    assert torch.allclose(out.pooled, ref.text_embeds, atol=1e-5)
    assert torch.allclose(out.tokens, ref.last_hidden_state, atol=1e-5)
    check_conditioner(clip)
    with pytest.raises(TtaError, match="has no text_projection weights"):
        CLIPTextConditioner(pretrained=str(folder), projection=True)


SMALL = {"hidden_size": WIDTH, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


@pytest.mark.parametrize("kind", ["bytes", "words"])
def test_config_trains_from_scratch_over_bytes_or_words(kind):
    torch.manual_seed(0)
    clip = CLIPTextConditioner(config={**SMALL, "tokenizer": kind}, padding="longest")
    assert all(p.requires_grad for p in clip.parameters())  # a new model: trainable (a stage still decides)
    check_conditioner(clip)
    out = clip.encode_text(["a dog barks", ""])
    n = 3 + 1 if kind == "words" else len("a dog barks") + 1  # the ids, then the end token
    assert out.mask.sum(1).tolist() == [n, 1]
    # pooled is read at the end token
    eos = int(out.mask[0].sum()) - 1
    assert torch.allclose(out.pooled[0], clip.model(input_ids=clip._tokenize(["a dog barks"])[0]).last_hidden_state[0, eos])
    with pytest.raises(ValueError, match="set by config.tokenizer: bytes"):
        CLIPTextConditioner(config={**SMALL, "tokenizer": "bytes", "vocab_size": 300})


def test_config_with_a_tokenizer_folder_and_clear_config_errors(clip_folder):
    folder, _, tokenizer = clip_folder
    clip = CLIPTextConditioner(config=SMALL, tokenizer=str(folder))
    assert clip.model.config.vocab_size == len(tokenizer) and clip.model.config.eos_token_id == 513
    check_conditioner(clip)
    with pytest.raises(ValueError, match=r"unknown keys hiden_size \(did you mean hidden_size\?\)"):
        CLIPTextConditioner(config={"hiden_size": 32}, tokenizer=str(folder))
    with pytest.raises(ValueError, match="give the tokenizer's folder in tokenizer:"):
        CLIPTextConditioner(config=SMALL)
    # eos_token_id 2: transformers' marker for the original CLIP rule, pooled at the argmax of the ids
    # (the end token has the largest id in a CLIP vocabulary), as old SD text_encoder configs have it
    legacy = CLIPTextConditioner(config={**SMALL, "eos_token_id": 2}, tokenizer=str(folder), padding="longest")
    with torch.no_grad():
        out = legacy.encode_text(["a dog barks", "rain"])
    ends = out.mask.sum(1) - 1
    assert torch.allclose(out.pooled, out.tokens[torch.arange(2), ends], atol=1e-6)
    with pytest.raises(TtaError, match="eos_token_id 7 is not the tokenizer's end token 513"):
        CLIPTextConditioner(config={**SMALL, "eos_token_id": 7}, tokenizer=str(folder))


def test_a_recipe_can_use_it_and_unet2d_takes_its_output(clip_folder, monkeypatch):
    from tta_core.discovery import get_registry
    from tta_core.recipe import build, check, load_recipe
    from tta_audioldm.unet import UNet2D

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    text = f"{{type: clip, config: {{hidden_size: {WIDTH}, num_hidden_layers: 1, num_attention_heads: 4, intermediate_size: 64, tokenizer: bytes}}, max_length: 64, padding: longest}}"
    recipe = check(load_recipe("recipes/quickstart.yaml", [f"components.text={text}",
                                                           f"components.unet.cross_attention_dim={WIDTH}",
                                                           f"components.unet.pooled_dim={WIDTH}"]), get_registry())
    scratch = build(recipe.components["text"], "conditioner", get_registry())
    folder, _, _ = clip_folder
    pretrained = get_registry().get("conditioner", "clip").load()(pretrained=str(folder), padding="longest")
    torch.manual_seed(0)
    unet = UNet2D(in_channels=4, channels=(16, 32), layers_per_block=1, cross_attention_dim=WIDTH,
                  pooled_dim=WIDTH, norm_groups=8, head_dim=8).eval()
    for clip in (scratch, pretrained):
        with torch.no_grad():  # a guided batch: the prompts' and the null's conditioning, padded to one length
            both = Conditioning.cat([clip.encode_text(PROMPTS), clip.null(3)])
            out = unet(torch.randn(6, 4, 8, 8), torch.full((6,), 10.0), both)
        assert out.shape == (6, 4, 8, 8) and torch.isfinite(out).all()


def test_a_tiny_recipe_trains_one_step_with_clip_from_scratch(tmp_path, monkeypatch):
    from tta_core.checkpoint import latest_checkpoint
    from tta_core.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert main(["synth", "sounds", "--out", str(tmp_path / "s"), "--n", "16", "--seed", "3", "--duration", "1.0"]) == 0
    text = ("{type: clip, config: {hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, "
            "intermediate_size: 32, tokenizer: bytes}, max_length: 64, padding: longest}")
    sets = [f"data.train.manifest={tmp_path / 's/manifest.jsonl'}", "audio.duration=0.64",
            "components.vae.channels=[8,16]", "components.vae.norm_groups=4", f"components.text={text}",
            "components.unet.channels=[16,32]", "components.unet.attention_levels=[false,true]",
            "components.unet.cross_attention_dim=16", "components.unet.pooled_dim=16",
            "components.unet.norm_groups=8", "train.vae.batch_size=8", "train.ldm.batch_size=8",
            "train.vae.precision=fp32", "train.ldm.precision=fp32"]
    assert main(["recipes/quickstart.yaml", "train", "--max-steps", "1", "--no-progress",
                 *[x for s in sets for x in ("--set", s)], "--run-dir", str(tmp_path / "run")]) == 0
    trained = latest_checkpoint(tmp_path / "run/ldm/checkpoints").weights("text")  # the ldm stage trains it
    assert "model.embeddings.token_embedding.weight" in trained
    assert tuple(trained["model.embeddings.token_embedding.weight"].shape) == (259, 16)  # ByT5's byte ids
