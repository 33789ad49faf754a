"""`tta-run import audioldm-diffusers` keeps every network as its config says, writes a valid
recipe for short models, and a component that cannot be built is reported with its own
message (no --debug needed) while nothing is written and no file is touched."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from tta_core.cli import main

from test_audioldm_import import byte_roberta_tokenizer

N_MELS = 8
#: Two pipelines far from the defaults: VAE and U-Net group norms other than 32, other head
#: counts, default lengths under 0.25 s, other schedules and prediction types.
VARIANTS = {
    "groups8-heads-v": dict(
        vae=dict(block_out_channels=[16, 32], norm_num_groups=8, layers_per_block=2),
        unet=dict(block_out_channels=(16, 32), norm_num_groups=4, attention_head_dim=(2, 4), sample_size=10,
                  cross_attention_dim=(16, 32), layers_per_block=1),
        scheduler=("DDIMScheduler", dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                                         timestep_spacing="trailing", num_train_timesteps=500, steps_offset=1,
                                         set_alpha_to_one=False, clip_sample=False)),
        duration=0.2,  # 10 latent frames of 2 x 160 samples
        process=dict(betas="cosine", prediction="v", spacing="trailing", num_train_timesteps=500, steps_offset=1,
                     set_alpha_to_one=False),
        sampler="ddim"),
    "groups4-3levels-ddpm": dict(
        vae=dict(block_out_channels=[8, 16, 16], norm_num_groups=4, layers_per_block=1, mid_block_add_attention=False),
        unet=dict(block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=1, sample_size=4,
                  cross_attention_dim=(16, 32), layers_per_block=2, transformer_layers_per_block=2,
                  use_linear_projection=True, resnet_time_scale_shift="scale_shift"),
        scheduler=("DDPMScheduler", dict(beta_schedule="linear", beta_start=0.001, beta_end=0.03, clip_sample=False)),
        duration=0.16,  # 4 latent frames of 4 x 160 samples
        process=dict(betas="linear", prediction="epsilon", spacing="leading", num_train_timesteps=1000,
                     steps_offset=0, set_alpha_to_one=True),
        sampler="ddpm"),
}


def write_pipeline(folder: Path, variant: dict) -> Path:
    """A tiny random AudioLDMPipeline of ``variant``'s sizes, saved as save_pretrained does."""
    import diffusers
    from diffusers import AudioLDMPipeline, AutoencoderKL, UNet2DConditionModel
    from transformers import ClapTextConfig, ClapTextModelWithProjection, SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=32, class_embeddings_concat=True, **variant["unet"])
    levels = len(variant["vae"]["block_out_channels"])
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, scaling_factor=0.7,
                        down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
                        **variant["vae"])
    text = ClapTextModelWithProjection(ClapTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=300, projection_dim=32,
        max_position_embeddings=80))
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(  # AudioLDM's 160x upsampling, tiny channels
        model_in_dim=N_MELS, sampling_rate=16000, upsample_initial_channel=64, upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[10, 8, 4, 4, 4], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
        normalize_before=False))
    name, kwargs = variant["scheduler"]
    scheduler = getattr(diffusers, name)(**kwargs)
    with torch.no_grad():  # zero-initialised output layers would hide a network that differs
        for m in (unet, vae):
            for p in m.parameters():
                if not p.abs().sum():
                    p.normal_(0, 0.05)
    pipe = AudioLDMPipeline(vae=vae, text_encoder=text, tokenizer=byte_roberta_tokenizer(folder / "_tok"), unet=unet,
                            scheduler=scheduler, vocoder=vocoder)
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256), to prove nothing was touched."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", params=list(VARIANTS))
def imported(tmp_path_factory, request):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import SpeechT5HifiGan

    from tta_core.sampling import load_pipeline

    variant = VARIANTS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    folder = write_pipeline(root, variant)
    run = root / "run"
    assert main(["import", "audioldm-diffusers", str(folder), "--out", str(run)]) == 0
    return dict(variant=variant, folder=folder, run=run, ours=load_pipeline(run / "recipe.yaml", device="cpu"),
                vae=AutoencoderKL.from_pretrained(folder / "vae").eval(),
                unet=UNet2DConditionModel.from_pretrained(folder / "unet").eval(),
                vocoder=SpeechT5HifiGan.from_pretrained(folder / "vocoder").eval())


def test_the_written_recipe_is_valid_and_keeps_every_setting(imported, capsys):
    run, variant = imported["run"], imported["variant"]
    capsys.readouterr()
    assert main([str(run / "recipe.yaml"), "validate"]) == 0
    assert ": ok" in capsys.readouterr().out
    from tta_core.yamlio import load_yaml

    recipe = load_yaml((run / "recipe.yaml").read_text(), "recipe.yaml")
    audio, components = recipe["audio"], recipe["components"]
    assert audio["duration"] == pytest.approx(variant["duration"])  # the pipeline's default length, under 0.25 s
    assert audio["min_duration"] == pytest.approx(variant["duration"])
    for key, value in variant["process"].items():
        assert components["process"][key] == value, key
    assert recipe["sample"]["sampler"]["type"] == variant["sampler"]
    assert components["vae"]["diffusers_config"]["norm_num_groups"] == variant["vae"]["norm_num_groups"]
    assert components["unet"]["diffusers_config"]["norm_num_groups"] == variant["unet"]["norm_num_groups"]


def test_the_networks_are_the_pipelines(imported):
    ours, variant = imported["ours"], imported["variant"]
    vae_groups = {m.num_groups for m in ours.autoencoder.vae.modules() if isinstance(m, torch.nn.GroupNorm)}
    unet_groups = {m.num_groups for m in ours.denoiser.unet.modules() if isinstance(m, torch.nn.GroupNorm)
                   and m.num_channels in variant["unet"]["block_out_channels"]}
    assert vae_groups == {variant["vae"]["norm_num_groups"]} and unet_groups == {variant["unet"]["norm_num_groups"]}
    heads = variant["unet"]["attention_head_dim"]
    attn = [m for name, m in ours.denoiser.unet.named_modules() if name.endswith("attn1")]
    # the attending level is the last; the middle block has its heads too
    assert attn and {a.heads for a in attn} == {heads[-1] if isinstance(heads, tuple) else heads}
    assert [a.heads for a in attn] == [m.heads for n, m in imported["unet"].named_modules() if n.endswith("attn1")]


def test_vae_encode_and_decode_equal_diffusers(imported):
    ours, vae = imported["ours"].autoencoder, imported["vae"]
    ratio = 2 ** (len(imported["variant"]["vae"]["block_out_channels"]) - 1)
    g = torch.Generator().manual_seed(1)
    mel = torch.randn(2, 1, 8 * ratio, N_MELS, generator=g)
    z = torch.randn(2, 4, 8, N_MELS // ratio, generator=g)
    with torch.no_grad():
        expected_z = vae.encode(mel).latent_dist.mode() * 0.7
        expected_mel = vae.decode(z / 0.7).sample
        got_z, got_mel = ours.encode(mel), ours.decode(z)
    for got, expected in ((got_z, expected_z), (got_mel, expected_mel)):
        assert got.shape == expected.shape and float(expected.abs().max()) > 0.01
        assert torch.allclose(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_unet_forward_equals_diffusers(imported):
    from tta_core.interfaces import Conditioning

    ours, unet = imported["ours"].denoiser, imported["unet"]
    ratio = 2 ** (len(imported["variant"]["vae"]["block_out_channels"]) - 1)
    frames = imported["variant"]["unet"]["sample_size"]
    g = torch.Generator().manual_seed(2)
    x, clap = torch.randn(2, 4, frames, N_MELS // ratio, generator=g), torch.randn(2, 32, generator=g)
    t = torch.tensor([3, 400])
    with torch.no_grad():
        expected = unet(x, t, encoder_hidden_states=None, class_labels=clap).sample
        got = ours(x, t, Conditioning(pooled=clap))
    assert got.shape == expected.shape and float(expected.abs().max()) > 0.01
    assert torch.allclose(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_the_vocoder_is_the_pipelines(imported):
    g = torch.Generator().manual_seed(3)
    mel = torch.randn(1, 1, 12, N_MELS, generator=g)
    with torch.no_grad():
        expected = imported["vocoder"](mel[:, 0])[:, : 12 * 160]
        got = imported["ours"].vocoder(mel)
    assert got.shape == expected.shape == (1, 12 * 160)
    assert torch.allclose(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_a_short_model_samples_as_the_pipeline_does(imported, tmp_path):
    """The 0.2 s model end to end: the run's `sample` output equals the pipeline's."""
    import numpy as np
    import soundfile
    from diffusers import AudioLDMPipeline

    variant = imported["variant"]
    if variant["sampler"] != "ddim":
        pytest.skip("ddpm draws its noise differently from diffusers' loop; the networks are compared above")
    args = [str(imported["run"] / "recipe.yaml"), "sample", "--text", "a dog barks", "--seed", "3", "--steps", "4",
            "--guidance", "2.5", "--format", "float", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    row = json.loads((tmp_path / "manifest.jsonl").read_text().splitlines()[0])
    ours, rate = soundfile.read(tmp_path / row["file"], dtype="float32")
    pipe = AudioLDMPipeline.from_pretrained(imported["folder"])
    expected = pipe("a dog barks", num_inference_steps=4, guidance_scale=2.5,
                    generator=torch.Generator("cpu").manual_seed(3), output_type="np").audios[0]
    assert rate == 16000 and ours.shape == expected.shape == (int(variant["duration"] * 16000),)
    peak = float(np.abs(expected).max())
    assert peak > 0 and float(np.abs(ours - expected).max()) <= 1e-4 * peak


# -- failures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty")
    return write_pipeline(root, VARIANTS["groups8-heads-v"])


def edited_copy(folder: Path, dest: Path, part: str, name: str = "config.json", **changes) -> Path:
    shutil.copytree(folder, dest)
    path = dest / part / name
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return dest


def test_a_network_that_cannot_be_built_shows_its_own_message_and_writes_nothing(pipeline_folder, tmp_path, capsys):
    """3 groups cannot divide the U-Net's 16 channels: diffusers' own ValueError text is
    printed (no --debug), naming the component; --out is not created, the inputs are intact."""
    source = edited_copy(pipeline_folder, tmp_path / "pipe", "unet", norm_num_groups=3)
    before = tree_digest(source)
    capsys.readouterr()
    assert main(["import", "audioldm-diffusers", str(source), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "components.unet: unet2d (denoiser) could not be built" in err
    assert "num_channels (16) must be divisible by num_groups (3)" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and tree_digest(source) == before


def test_a_failed_import_over_an_existing_run_leaves_it_as_it_was(pipeline_folder, tmp_path, capsys):
    """--force over a run directory: when a component cannot be built, the old run is back,
    byte for byte, and no temporary copy is left beside it."""
    source = edited_copy(pipeline_folder, tmp_path / "pipe", "vae", norm_num_groups=3)
    out = tmp_path / "run"
    (out / "ldm" / "checkpoints").mkdir(parents=True)
    (out / "recipe.yaml").write_text("name: mine\n")
    (out / "ldm" / "checkpoints" / "latest").write_text("step-00000007\n")
    before, inputs = tree_digest(out), tree_digest(source)
    capsys.readouterr()
    assert main(["import", "audioldm-diffusers", str(source), "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert "components.vae: kl_vae (autoencoder) could not be built" in err
    assert "multiple of the 3 normalisation groups" in err and "(16, 32)" in err
    assert tree_digest(out) == before and tree_digest(source) == inputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "run"]


@pytest.mark.parametrize("part, name, changes, expected", [
    ("scheduler", "scheduler_config.json", {"clip_sample": True}, "clip_sample is true"),
    ("scheduler", "scheduler_config.json", {"timestep_spacing": "karras"}, "timestep_spacing 'karras'"),
    ("unet", "config.json", {"time_cond_proj_dim": 8}, "time_cond_proj_dim=8"),
    ("unet", "config.json", {"projection_class_embeddings_input_dim": 16},
     "projection_class_embeddings_input_dim is 16"),
    ("vae", "config.json", {"shift_factor": 0.1}, "shift_factor=0.1"),
])
def test_a_field_tta_cannot_represent_is_refused_by_name(pipeline_folder, tmp_path, capsys, part, name, changes,
                                                         expected):
    source = edited_copy(pipeline_folder, tmp_path / "pipe", part, name, **changes)
    before = tree_digest(source)
    capsys.readouterr()
    assert main(["import", "audioldm-diffusers", str(source), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and tree_digest(source) == before


def test_build_names_the_component_and_keeps_the_errors_text():
    """recipe.build: a ValueError is a recipe error (exit 2), anything else a runtime failure
    (exit 1); an error without text says where it was raised."""
    from tta_core.errors import RecipeError, TtaError
    from tta_core.recipe import build
    from tta_core.registry import Entry, Origin, Registry

    def refuses(kind_of_error: str):
        if kind_of_error == "value":
            raise ValueError("groups must divide the channels")
        if kind_of_error == "runtime":
            raise RuntimeError("out of memory")
        raise IndexError()  # no message

    registry = Registry()
    registry.add(Entry("denoiser", "picky", refuses, Origin("test")))
    with pytest.raises(RecipeError) as info:
        build({"type": "picky", "kind_of_error": "value"}, "denoiser", registry, where="components.unet")
    assert info.value.exit_code == 2 and str(info.value).startswith(
        "components.unet: picky (denoiser) could not be built: ValueError: groups must divide the channels")
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(TtaError) as info:
        build({"type": "picky", "kind_of_error": "runtime"}, "denoiser", registry)
    assert info.value.exit_code == 1 and "RuntimeError: out of memory" in str(info.value)
    with pytest.raises(TtaError) as info:
        build({"type": "picky", "kind_of_error": "other"}, "denoiser", registry)
    assert "IndexError: (no message) at test_faults_import.py:" in str(info.value)
    assert "raise IndexError()" in str(info.value)


def test_a_zero_terminal_snr_scheduler_imports_as_the_process_option():
    """rescale_betas_zero_snr: true becomes vp_discrete's zero_terminal_snr (the same levels
    as diffusers' rescaled table); without it the process has no such key."""
    from diffusers import DDIMScheduler
    from tta_audioldm.importer import _process
    from tta_core.diffusion import VPDiscrete

    raw = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.0015,
           "beta_end": 0.0195, "prediction_type": "v_prediction", "timestep_spacing": "trailing",
           "clip_sample": False, "rescale_betas_zero_snr": True}
    process, sampler = _process(dict(raw), [])
    assert process["zero_terminal_snr"] is True and sampler == "ddim"
    ours = VPDiscrete(**{k: v for k, v in process.items() if k != "type"})
    ref = DDIMScheduler(**{k: v for k, v in raw.items() if k != "_class_name"})
    torch.testing.assert_close(ours.alphas_cumprod[:-1], ref.alphas_cumprod[:-1], rtol=1e-5, atol=1e-7)
    assert "zero_terminal_snr" not in _process(dict(raw, rescale_betas_zero_snr=False), [])[0]
