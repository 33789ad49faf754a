"""`tta-run export diffusers RUN_DIR --out DIR`: a run imported from a tiny random diffusers
AudioLDMPipeline goes back out as a pipeline folder that `AudioLDMPipeline.from_pretrained`
loads and that samples as `tta-run sample` does (same seed, steps, guidance, negative
prompt), that re-imports to the same recipe and weights, with a run's adapters merged in; what
the pipeline cannot hold is refused by name before anything is written."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from test_audioldm_import import tiny_pipeline
from tta_core.cli import main

DURATION = 0.1  # 1600 samples: 400 vocoder frames of 4, a 4 x 200 x 4 latent (longer than one STFT window)
PROMPT, SEED, STEPS, GUIDANCE = "a dog barks", 3, 10, 2.5


def files_of(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", params=[("epsilon", "ddim"), ("v_prediction", "ddpm")], ids=["eps-ddim", "v-ddpm"])
def exported(tmp_path_factory, request):
    """(diffusers pipeline, imported run, its export): the ddpm case samples the imported run
    with DDPM, so its export holds a DDPMScheduler."""
    prediction, sampler = request.param
    root = tmp_path_factory.mktemp("export")
    pipe = tiny_pipeline(root, prediction)
    run, out = root / "run", root / "exported"
    sets = ["--set", f"audio.duration={DURATION}"]
    if sampler == "ddpm":  # DDPMScheduler ends at the clean signal
        sets += ["--set", "sample.sampler.type=ddpm", "--set", "components.process.set_alpha_to_one=true"]
    assert main(["import", "audioldm-diffusers", str(root / "pipe"), "--out", str(run), *sets]) == 0
    assert main(["export", "diffusers", str(run), "--out", str(out)]) == 0
    return pipe, run, out


def diffusers_wave(pipe, negative=None) -> np.ndarray:
    return pipe(PROMPT, audio_length_in_s=DURATION, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                negative_prompt=negative, generator=torch.Generator("cpu").manual_seed(SEED),
                output_type="np").audios[0]


def assert_same_audio(ours: np.ndarray, expected: np.ndarray) -> float:
    assert ours.shape == expected.shape == (int(DURATION * 16000),)
    peak, diff = float(np.abs(expected).max()), float(np.abs(ours - expected).max())
    print(f"max abs diff {diff:.3g} = {diff / peak:.3g} of the peak {peak:.3g}")
    assert peak > 0 and diff <= 1e-4 * peak
    return diff


def test_the_export_is_a_pipeline_folder_with_the_runs_settings(exported):
    from diffusers import AudioLDMPipeline

    from tta_core.recipe import load_recipe

    pipe, run, out = exported
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "AudioLDMPipeline"
    assert {"unet", "vae", "text_encoder", "tokenizer", "vocoder", "scheduler"} <= set(index)
    assert list((out / "unet").glob("*.safetensors")) and not list(out.rglob("*.bin"))
    loaded = AudioLDMPipeline.from_pretrained(out)
    want = pipe.scheduler.config
    got = loaded.scheduler.config
    sampler = load_recipe(run / "recipe.yaml").get("sample")["sampler"]["type"]
    assert type(loaded.scheduler).__name__ == {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler"}[sampler]
    for key in ("beta_start", "beta_end", "beta_schedule", "prediction_type", "timestep_spacing", "steps_offset",
                "num_train_timesteps"):
        assert got[key] == want[key], key
    assert not got["clip_sample"] and loaded.vae.config.scaling_factor == pytest.approx(0.6)
    assert not any(p.name.startswith(".exported.") for p in out.parent.iterdir())  # no temporary folder left


@pytest.mark.slow
def test_the_exported_pipeline_samples_as_tta_run_sample_does(exported, tmp_path):
    import soundfile
    from diffusers import AudioLDMPipeline

    pipe, run, out = exported
    stochastic = json.loads((out / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "DDPMScheduler"
    negative = None if stochastic else "w1 w2"
    args = [str(run / "recipe.yaml"), "sample", "--text", PROMPT, "--seed", str(SEED), "--steps", str(STEPS),
            "--guidance", str(GUIDANCE), "--format", "float", "--out", str(tmp_path), "--no-progress"]
    assert main(args + (["--negative", negative] if negative else [])) == 0
    row = json.loads((tmp_path / "manifest.jsonl").read_text().splitlines()[0])
    ours, rate = soundfile.read(tmp_path / row["file"], dtype="float32")
    assert rate == 16000
    assert_same_audio(ours, diffusers_wave(AudioLDMPipeline.from_pretrained(out), negative))


def test_reimporting_the_export_gives_the_same_recipe_and_weights(exported, tmp_path):
    from tta_core.checkpoint import load_weights
    from tta_core.recipe import load_recipe
    from tta_core.runs import RunDir

    _, run, out = exported
    again = tmp_path / "again"
    sample = load_recipe(run / "recipe.yaml").get("sample")
    sets = ["--set", f"audio.duration={DURATION}", "--set", f"sample.sampler.type={sample['sampler']['type']}"]
    assert main(["import", "audioldm-diffusers", str(out), "--out", str(again), *sets]) == 0
    first, second = (load_recipe(r / "recipe.yaml").to_dict() for r in (run, again))
    for recipe, where in ((first, run), (second, again)):  # each run names its own copy of the tokenizer
        assert recipe["components"]["text"].pop("tokenizer") == str(where.resolve() / "tokenizer")
    assert first["components"] == second["components"] and first["audio"] == second["audio"]
    tokenizer = files_of(again / "tokenizer")
    assert tokenizer and json.loads(tokenizer["tokenizer_config.json"])["model_max_length"] == 77
    for name, stages in (("unet", ["ldm"]), ("vae", ["vae"]), ("text", []), ("vocoder", [])):
        a, b = (RunDir(r).find_weights(name, stages) if stages else None for r in (run, again))
        a, b = (load_weights(f.path if f else RunDir(r).given_weights(name)) for f, r in ((a, run), (b, again)))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


# -- refusals -------------------------------------------------------------------------------------


def test_a_run_the_pipeline_cannot_hold_is_refused_naming_each_part_and_nothing_is_written(tmp_path, capsys):
    """The quickstart's structure: a T5 text encoder and Griffin-Lim (and a U-Net reading tokens
    on latent patches, a VAE on a normalised mel). Refused from the recipe, before any weight is read."""
    repo = Path(__file__).resolve().parents[1]
    run, out = tmp_path / "run", tmp_path / "out"
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "vae.safetensors").write_bytes(b"not read")
    before = files_of(run)
    code = main(["export", "diffusers", str(run), "--recipe", str(repo / "recipes" / "quickstart.yaml"),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "nothing was written" in err and "text (t5)" in err and "vocoder (griffin_lim)" in err
    assert "cross_attention_dim 128" in err and "patch_size 2" in err and "mel_mean -5.0" in err
    assert not out.exists() and files_of(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_existing_folder_that_is_not_empty_is_refused_and_left_as_it_was(exported, tmp_path, capsys):
    _, run, _ = exported
    out = tmp_path / "taken"
    (out / "unet").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "unet" / "config.json").write_text("{}")
    before = files_of(out)
    assert main(["export", "diffusers", str(run), "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert files_of(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_an_empty_out_folder_is_used_and_a_file_is_refused(exported, tmp_path, capsys):
    _, run, _ = exported
    (tmp_path / "empty").mkdir()
    assert main(["export", "diffusers", str(run), "--out", str(tmp_path / "empty")]) == 0
    assert (tmp_path / "empty" / "model_index.json").is_file()
    (tmp_path / "file").write_text("x")
    assert main(["export", "diffusers", str(run), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "file").read_text() == "x"


def test_a_run_without_a_recipe_and_an_unknown_format_are_usage_errors(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["export", "diffusers", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2
    assert "records no recipe" in capsys.readouterr().err
    assert main(["export", "difusers", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "diffusers" in err and not (tmp_path / "out").exists()


def test_a_trained_runs_recipe_is_found_in_its_last_stage(tmp_path):
    from tta_core.exporting import run_recipe

    run = tmp_path / "run"
    text = "name: r\ntrain:\n  - {name: vae}\n  - {name: ldm}\n"
    for stage in ("ldm", "vae"):  # the vae stage's written last
        (run / stage).mkdir(parents=True)
        (run / stage / "recipe.resolved.yaml").write_text(text)
    assert run_recipe(run) == run / "ldm" / "recipe.resolved.yaml"
    (run / "recipe.yaml").write_text(text)
    assert run_recipe(run) == run / "recipe.yaml"


# -- adapters -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_unets_lora_adapter_is_merged_into_the_exported_weights(exported, tmp_path):
    from diffusers import AudioLDMPipeline

    from tta_core.adapters import AdapterConfig, adapters_of, add_adapter
    from tta_core.discovery import get_plugins
    from tta_core.exporting import export_pipeline
    from tta_core.sampling import load_pipeline

    pipe, run, _ = exported
    if "ddpm" in (run / "recipe.yaml").read_text():
        pytest.skip("one adapter case is enough")
    ours = load_pipeline(run / "recipe.yaml", device="cpu")
    add_adapter(ours.denoiser, AdapterConfig(type="lora", rank=4, alpha=4), trainable=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in ours.denoiser.named_parameters():  # both factors from the generator: the same adapter always
            if "lora_A" in name:  # at the scale of peft's own initialisation
                p.copy_(torch.randn(p.shape, generator=generator) / p.shape[1] ** 0.5)
            elif "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=generator))
    wave, _ = ours.generate(PROMPT, seed=SEED, steps=STEPS, guidance=GUIDANCE, duration=DURATION)
    wave = wave[0].numpy()
    plain = diffusers_wave(pipe)
    assert float(np.abs(wave - plain).max()) > 0.05 * float(np.abs(plain).max())  # the adapter changes the audio

    exporter = get_plugins().registry.get("exporter", "diffusers").build()
    notes = export_pipeline(exporter, ours, tmp_path / "merged", fmt="diffusers")
    assert any("adapters merged" in n and "unet" in n for n in notes) and not adapters_of(ours.denoiser)
    from safetensors.torch import load_file

    keys = [k for f in (tmp_path / "merged" / "unet").glob("*.safetensors") for k in load_file(f)]
    assert keys and not any("lora" in k or "base_layer" in k for k in keys)  # plain diffusers names
    assert_same_audio(diffusers_wave(AudioLDMPipeline.from_pretrained(tmp_path / "merged")), wave)


# -- a run whose networks tta built (no diffusers configurations) ---------------------------------


def native_recipe(root: Path) -> Path:
    """The recipe (and tokenizer) of a run of networks built from tta's own arguments, as
    `train` makes them: a trained VAE scale (0.8, not AutoencoderKL's 0.18215), a self-attention
    U-Net on the pooled CLAP vector, v-prediction with trailing spacing. Returns the run folder."""
    from test_audioldm_import import byte_roberta_tokenizer

    run = root / "native"
    byte_roberta_tokenizer(root / "tok").save_pretrained(run / "tokenizer")
    text = dict(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
                num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=300, projection_dim=32,
                max_position_embeddings=80)
    vocoder = dict(model_in_dim=8, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[2, 2],
                   upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3, 7],
                   resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], normalize_before=False)
    recipe = {
        "name": "native", "run_dir": ".",
        "audio": {"sample_rate": 16000, "duration": DURATION, "min_duration": 0.08,
                  "mel": {"n_fft": 1024, "hop": 4, "win": 1024, "n_mels": 8, "fmin": 0, "fmax": 8000}},
        "components": {
            "vae": {"type": "kl_vae", "latent_channels": 4, "channels": [32, 64], "layers_per_block": 1,
                    "scale_factor": 0.8},
            "text": {"type": "clap_text", "config": text, "tokenizer": str(run / "tokenizer")},
            "unet": {"type": "unet2d", "in_channels": 4, "channels": [32, 64], "layers_per_block": 1,
                     "cross_attention_dim": None, "pooled_dim": 32, "pooled_concat": True},
            "process": {"type": "vp_discrete", "betas": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                        "prediction": "v", "spacing": "trailing"},
            "vocoder": {"type": "hifigan", "config": vocoder},
        },
        "sample": {"sampler": {"type": "ddim"}, "steps": 8, "guidance": 3.0},
    }
    (run / "recipe.yaml").write_text(json.dumps(recipe))
    return run


def native_run(root: Path) -> Path:
    """:func:`native_recipe`'s run, its random weights given in weights/."""
    from tta_core.checkpoint import save_weights
    from tta_core.discovery import get_plugins
    from tta_core.recipe import build, component_kind, load_recipe
    from tta_core.runs import has_params

    run = native_recipe(root)
    (run / "weights").mkdir()
    rec, registry = load_recipe(run / "recipe.yaml"), get_plugins().registry
    torch.manual_seed(1)
    for name, node in rec.components.items():
        module = build(node, component_kind(rec, name, registry), registry, audio=rec.audio)
        if has_params(module):
            save_weights(run / "weights" / f"{name}.safetensors", module.state_dict())
    return run


@pytest.mark.slow
def test_a_run_of_networks_built_here_exports_and_samples_alike(tmp_path, capsys):
    from diffusers import AudioLDMPipeline

    from tta_core.sampling import load_pipeline

    run = native_run(tmp_path)
    assert main(["export", "diffusers", str(run), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "num_inference_steps=8, guidance_scale=3, audio_length_in_s=0.1" in printed
    assert "pads latent frames to a multiple of 2" in printed
    exported = AudioLDMPipeline.from_pretrained(tmp_path / "out")
    assert exported.vae.config.scaling_factor == pytest.approx(0.8)
    assert exported.scheduler.config.timestep_spacing == "trailing"
    ours, _ = load_pipeline(run / "recipe.yaml", device="cpu").generate(PROMPT, seed=SEED, duration=DURATION)
    theirs = exported(PROMPT, audio_length_in_s=DURATION, num_inference_steps=8, guidance_scale=3.0,
                      generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").audios[0]
    assert_same_audio(ours[0].numpy(), theirs)


@pytest.mark.parametrize("sets, named", [
    (["components.text.random_weights=true"], "text (clap_text): random_weights"),
    (["components.vocoder={type: griffin_lim}"], "vocoder (griffin_lim)"),
    (["components.process={type: rectified_flow}"], "process (rectified_flow)"),
    (["components.unet.cross_attention_dim=32"], "unet (unet2d): cross_attention_dim 32"),
    (["components.unet.patch_size=[1, 2]"], "unet (unet2d): patch_size [1, 2]"),
    (["components.vae.mel_std=2.0"], "vae (kl_vae): mel_mean 0.0 / mel_std 2.0"),
    (["sample.sampler.type=vsampler"], "sample.sampler (vsampler)"),
    (["sample.sampler.type=ddpm", "components.process.set_alpha_to_one=false"], "DDPMScheduler always ends"),
    (["audio.channels=2"], "audio.channels 2"),
], ids=["random-text", "griffin-lim", "flow", "tokens", "patches", "mel-norm", "vsampler", "ddpm-end", "stereo"])
def test_each_part_the_pipeline_cannot_hold_is_refused_before_any_weight_is_read(tmp_path, capsys, sets, named):
    run = native_recipe(tmp_path)  # no weights: the refusal comes from the recipe alone
    before = files_of(tmp_path)
    code = main(["export", "diffusers", str(run), "--out", str(tmp_path / "out"),
                 *(arg for text in sets for arg in ("--set", text))])
    err = capsys.readouterr().err
    assert code == 2 and named in err and "nothing was written" in err, err
    assert files_of(tmp_path) == before


@pytest.mark.slow
def test_import_then_lora_then_export_round_trip(exported, tmp_path):
    """An imported AudioLDM run fine-tuned with a LoRA stage (diffusers' module names) exports
    with the adapter merged, and the pipeline samples as `tta-run sample` does on the
    fine-tuned run."""
    import soundfile
    from diffusers import AudioLDMPipeline

    from tta_core.adapters import ADAPTER_SUFFIX, read_adapter
    from tta_core.checkpoint import latest_checkpoint

    _, run, _ = exported
    if "ddpm" in (run / "recipe.yaml").read_text():
        pytest.skip("one fine-tuning run is enough")
    assert main(["synth", "sounds", "--out", str(tmp_path / "sounds"), "--n", "8", "--seed", "0",
                 "--duration", "0.5"]) == 0
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        f"base: {run / 'recipe.yaml'}\nname: mine\nrun_dir: {tmp_path / 'tuned'}\n"
        f"data:\n  train: {{type: jsonl, manifest: {tmp_path / 'sounds' / 'manifest.jsonl'}}}\n"
        "train:\n  - name: lora\n    objective: {type: latent_diffusion}\n    trains: [unet]\n"
        f"    frozen: [vae, text]\n    init_from: {run}\n    adapters: {{type: lora, rank: 2}}\n"
        "    max_steps: 3\n    batch_size: 2\n    optimizer: {lr: 0.05}\n")
    assert main([str(mine), "train", "--no-progress"]) == 0
    ckpt = latest_checkpoint(tmp_path / "tuned" / "lora" / "checkpoints")
    adapter = read_adapter(ckpt.path / f"unet.{ADAPTER_SUFFIX}.safetensors")
    assert all(m.startswith("unet.") and ".attn" in m for m in adapter.config.modules)  # diffusers' names
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in adapter.state.items())

    out = tmp_path / "exported"
    assert main(["export", "diffusers", str(tmp_path / "tuned"), "--out", str(out)]) == 0
    args = [str(mine), "sample", "--text", PROMPT, "--seed", str(SEED), "--steps", str(STEPS), "--guidance",
            str(GUIDANCE), "--format", "float", "--out", str(tmp_path / "ours"), "--no-progress"]
    assert main(args) == 0
    row = json.loads((tmp_path / "ours" / "manifest.jsonl").read_text().splitlines()[0])
    assert "+ adapter" in row["weights"]["unet"]
    ours, _ = soundfile.read(tmp_path / "ours" / row["file"], dtype="float32")
    assert_same_audio(ours, diffusers_wave(AudioLDMPipeline.from_pretrained(out)))
    assert main([str(run / "recipe.yaml"), *args[1:-3], "--out", str(tmp_path / "base"), "--no-progress"]) == 0
    base, _ = soundfile.read(next((tmp_path / "base").glob("*.wav")), dtype="float32")
    assert float(np.abs(base - ours).max()) > 1e-3 * float(np.abs(ours).max())  # the adapter is in the audio


def test_a_zero_terminal_snr_schedule_goes_out_as_diffusers_rescale(tmp_path):
    """rescale_betas_zero_snr in, zero_terminal_snr in the run's process, the same flag out."""
    from diffusers import AudioLDMPipeline

    from tta_core.recipe import load_recipe

    tiny_pipeline(tmp_path, "v_prediction")
    config = tmp_path / "pipe" / "scheduler" / "scheduler_config.json"
    raw = json.loads(config.read_text())
    config.write_text(json.dumps(dict(raw, rescale_betas_zero_snr=True, timestep_spacing="trailing")))
    run, out = tmp_path / "run", tmp_path / "exported"
    assert main(["import", "audioldm-diffusers", str(tmp_path / "pipe"), "--out", str(run),
                 "--set", f"audio.duration={DURATION}"]) == 0
    assert load_recipe(run / "recipe.yaml").components["process"]["zero_terminal_snr"] is True
    assert main(["export", "diffusers", str(run), "--out", str(out)]) == 0
    got = AudioLDMPipeline.from_pretrained(out).scheduler.config
    assert got["rescale_betas_zero_snr"] is True and got["timestep_spacing"] == "trailing"
