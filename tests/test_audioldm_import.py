"""`tta-run import audioldm-diffusers`: a tiny random diffusers AudioLDMPipeline, saved
offline (its RoBERTa tokenizer written here), becomes a run directory whose `sample` output
equals the pipeline's own for the same seed, steps, guidance and negative prompt."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tta_core.cli import main

DURATION = 0.256  # 1024 vocoder frames of 4 samples at 16 kHz -> a 4 x 512 x 4 latent


def byte_roberta_tokenizer(folder: Path):
    """RoBERTa's byte-level BPE with no merges: every byte its own token (offline)."""
    from transformers import RobertaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    # GPT-2's printable stand-in for each byte
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in chars:
        vocab[ch] = len(vocab)
    vocab["<mask>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def tiny_pipeline(folder: Path, prediction: str = "epsilon"):
    from diffusers import AudioLDMPipeline, AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import ClapTextConfig, ClapTextModelWithProjection, SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=(32, 64), class_embed_type="simple_projection", projection_class_embeddings_input_dim=32,
        class_embeddings_concat=True)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=1, out_channels=1, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        scaling_factor=0.6)
    text = ClapTextModelWithProjection(ClapTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=300, projection_dim=32,
        max_position_embeddings=80))
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=8, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[2, 2],
        upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
        normalize_before=False))
    scheduler = DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=prediction)
    tokenizer = byte_roberta_tokenizer(folder / "_tok")
    pipe = AudioLDMPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            vocoder=vocoder)
    pipe.save_pretrained(folder / "pipe")
    return AudioLDMPipeline.from_pretrained(folder / "pipe")  # as users load the folder they import


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def imported(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("audioldm")
    pipe = tiny_pipeline(root, request.param)
    run = root / "run"
    assert main(["import", "audioldm-diffusers", str(root / "pipe"), "--out", str(run),
                 "--set", f"audio.duration={DURATION}"]) == 0
    return pipe, run


def test_the_run_holds_the_pipelines_parts(imported):
    pipe, run = imported
    if pipe.scheduler.config.prediction_type != "epsilon":
        pytest.skip("one layout check is enough")
    info = json.loads((run / "imported.json").read_text())
    assert info["format"] == "audioldm-diffusers" and any((run / "tokenizer").iterdir())
    assert sorted(p.name for p in (run / "weights").iterdir()) == ["text.safetensors", "vocoder.safetensors"]
    assert (run / "ldm" / "checkpoints" / "latest").exists() and (run / "vae" / "checkpoints" / "latest").exists()
    from tta_core.sampling import load_pipeline

    ours = load_pipeline(run / "recipe.yaml", device="cpu")
    assert float(ours.autoencoder.scale_factor) == pytest.approx(0.6)
    ref = pipe.unet.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in ours.denoiser.unet.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize("negative", [None, "w1 w2"])
def test_sample_equals_the_diffusers_pipeline(imported, tmp_path, negative):
    import soundfile

    pipe, run = imported
    prompt, seed, steps, guidance = "a dog barks", 3, 10, 2.5
    args = [str(run / "recipe.yaml"), "sample", "--text", prompt, "--seed", str(seed), "--steps", str(steps),
            "--guidance", str(guidance), "--format", "float", "--out", str(tmp_path), "--no-progress"]
    if negative:
        args += ["--negative", negative]
    assert main(args) == 0
    row = json.loads((tmp_path / "manifest.jsonl").read_text().splitlines()[0])
    ours, rate = soundfile.read(tmp_path / row["file"], dtype="float32")

    expected = pipe(prompt, audio_length_in_s=DURATION, num_inference_steps=steps, guidance_scale=guidance,
                    negative_prompt=negative, generator=torch.Generator("cpu").manual_seed(seed),
                    output_type="np").audios[0]
    assert rate == 16000 and ours.shape == expected.shape == (4096,)
    peak = float(np.abs(expected).max())
    assert peak > 0 and float(np.abs(ours - expected).max()) <= 1e-4 * peak


def test_a_folder_that_is_not_a_pipeline_is_refused_and_nothing_is_written(tmp_path, capsys):
    (tmp_path / "half" / "unet").mkdir(parents=True)
    assert main(["import", "audioldm-diffusers", str(tmp_path / "half"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "not an AudioLDM pipeline folder" in err and "vae/" in err and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_an_imported_run_fine_tunes_its_unet(imported, tmp_path):
    from tta_core.checkpoint import latest_checkpoint

    pipe, run = imported
    if pipe.scheduler.config.prediction_type != "epsilon":
        pytest.skip("one fine-tuning run is enough")
    import shutil

    assert main(["synth", "sounds", "--out", str(tmp_path / "sounds"), "--n", "8", "--seed", "0", "--duration", "0.5"]) == 0
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = latest_checkpoint(copy / "ldm" / "checkpoints").weights("unet")
    assert main([str(copy / "recipe.yaml"), "train", "--stage", "ldm", "--max-steps", "2", "--no-progress",
                 "--set", f"data.train={{type: jsonl, manifest: {tmp_path / 'sounds' / 'manifest.jsonl'}}}",
                 "--set", "train.ldm.batch_size=2"]) == 0
    after = latest_checkpoint(copy / "ldm" / "checkpoints")
    tuned = after.weights("unet")
    assert after.step == 2 and not all(torch.equal(tuned[k], before[k]) for k in before)
    assert max(float((tuned[k] - before[k]).abs().max()) for k in before) < 0.01  # a small step from the import


@pytest.mark.slow
def test_another_recipe_starts_from_the_imported_run(imported, tmp_path):
    """`train --init-from RUN_DIR`: the U-Net starts from the imported weights, the frozen VAE
    and text encoder and the vocoder are copied into the new run, which then samples alone."""
    from tta_core.checkpoint import latest_checkpoint, load_weights

    pipe, run = imported
    if pipe.scheduler.config.prediction_type != "epsilon":
        pytest.skip("one fine-tuning run is enough")
    assert main(["synth", "sounds", "--out", str(tmp_path / "sounds"), "--n", "8", "--seed", "0", "--duration", "0.5"]) == 0
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"base: {run / 'recipe.yaml'}\nname: mine\nrun_dir: runs_mine\n"
                    f"data:\n  train: {{type: jsonl, manifest: {tmp_path / 'sounds' / 'manifest.jsonl'}}}\n")
    assert main([str(mine), "train", "--stage", "ldm", "--init-from", str(run), "--max-steps", "1",
                 "--no-progress", "--set", "train.ldm.batch_size=2"]) == 0
    new_run = tmp_path / "runs_mine"
    assert sorted(p.name for p in (new_run / "weights").iterdir()) == ["text.safetensors", "vae.safetensors",
                                                                       "vocoder.safetensors"]
    imported_unet = latest_checkpoint(run / "ldm" / "checkpoints").weights("unet")
    tuned = load_weights(latest_checkpoint(new_run / "ldm" / "checkpoints").path / "unet.safetensors")
    assert max(float((tuned[k] - imported_unet[k]).abs().max()) for k in tuned) < 0.01  # one small step away
    assert main([str(mine), "sample", "--text", "a dog barks", "--steps", "2", "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    assert len(list((tmp_path / "out").glob("*.wav"))) == 1
