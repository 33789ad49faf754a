"""Stages with ``adapters:``: a LoRA trained on the toy quickstart run (``tiny_run``), kept
alone in its checkpoints, resumed exactly, applied when sampling (its own run, another run,
scaled, mixed), merged into plain weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch

from tta_core.adapters import ADAPTER_SUFFIX, read_adapter
from tta_core.checkpoint import latest_checkpoint, load_weights
from tta_core.cli import main

REPO = Path(__file__).resolve().parents[1]
LORA = str(REPO / "recipes" / "quickstart_lora.yaml")
QUICK = str(REPO / "recipes" / "quickstart.yaml")


def _component_sets(tiny_run) -> list[str]:
    """The toy run's --set lines for its components and data (not its stages)."""
    args, _ = tiny_run
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    return [s for s in sets if not s.startswith("train.")]


@pytest.fixture(scope="module")
def lora(tiny_run, tmp_path_factory):
    """The toy LoRA stage trained 4 steps on the toy run: (set args, run root, base root, the
    base's set args)."""
    _, base = tiny_run
    root = tmp_path_factory.mktemp("lora")
    sets = [*_component_sets(tiny_run), *[f"train.{stage}.{key}" for stage in ("vae_lora", "lora") for key in (
        f"init_from={base / 'run'}", "max_steps=4", "batch_size=2", "checkpoint_every=2", "precision=fp32",
        "optimizer.lr=0.05", "adapters.rank=2")]]
    args = [x for s in sets for x in ("--set", s)] + ["--no-progress"]
    assert main([LORA, "train", *args, "--run-dir", str(root / "run")]) == 0
    plain = [x for s in _component_sets(tiny_run) for x in ("--set", s)] + ["--no-progress"]
    return args, root / "run", base / "run", plain


def _sample(recipe, args, run_dir, out, *extra):
    assert main([recipe, "sample", *args, "--run-dir", str(run_dir), "--out", str(out), "--text", "a rising chirp",
                 "--seed", "3", "--steps", "3", *extra]) == 0
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])
    wave, _ = sf.read(out / row["file"], dtype="float32")
    return torch.from_numpy(wave), row


def test_the_stage_trains_and_keeps_only_the_adapter(lora):
    _, run, base, _ = lora
    ckpt = latest_checkpoint(run / "lora" / "checkpoints")
    assert ckpt.step == 4
    files = sorted(p.name for p in ckpt.path.glob("*.safetensors"))
    assert files == [f"{c}.{ADAPTER_SUFFIX}{e}.safetensors" for c in ("text", "unet") for e in (".ema", "")]
    vae = read_adapter(latest_checkpoint(run / "vae_lora" / "checkpoints").path / f"vae.{ADAPTER_SUFFIX}.safetensors")
    assert vae.component == "vae" and all(".decoder." in m for m in vae.config.modules)
    found = read_adapter(ckpt.path / f"unet.{ADAPTER_SUFFIX}.safetensors")
    assert found.component == "unet" and found.kind == "denoiser" and found.config.rank == 2
    assert found.config.modules and all("lora_" in k for k in found.state)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in found.state.items())  # it trained
    # the base weights under it are the toy run's EMA U-Net, linked into this run unchanged
    source = latest_checkpoint(base / "ldm" / "checkpoints").path / "unet.ema.safetensors"
    given = run / "weights" / "unet.safetensors"
    assert given.read_bytes() == source.read_bytes()
    adapter_bytes = (ckpt.path / f"unet.{ADAPTER_SUFFIX}.safetensors").stat().st_size
    assert adapter_bytes < 0.2 * given.stat().st_size
    # the optimizer stepped the adapter's parameters only
    state = ckpt.tensors()["optimizers"]["main"]["state"]
    text = read_adapter(ckpt.path / f"text.{ADAPTER_SUFFIX}.safetensors")
    assert sum(s["exp_avg"].numel() for s in state.values()) == \
        sum(v.numel() for f in (found, text) for v in f.state.values())


def test_an_adapter_stage_resumes_exactly(lora, tiny_run, tmp_path):
    args, run, _, _ = lora
    split = tmp_path / "split"
    assert main([LORA, "train", *args, "--run-dir", str(split), "--max-steps", "2"]) == 0
    assert main([LORA, "train", *args, "--run-dir", str(split)]) == 0  # resumes at step 2
    a = latest_checkpoint(run / "lora" / "checkpoints")
    b = latest_checkpoint(split / "lora" / "checkpoints")
    assert a.step == b.step == 4
    for name in (f"unet.{ADAPTER_SUFFIX}", f"unet.{ADAPTER_SUFFIX}.ema", f"text.{ADAPTER_SUFFIX}"):
        wa, wb = a.weights(name), b.weights(name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    last = [json.loads((r / "lora" / "logs" / "metrics.jsonl").read_text().splitlines()[-1]) for r in (run, split)]
    assert last[0]["step"] == last[1]["step"] == 4 and last[0]["main"] == last[1]["main"]


def test_sampling_applies_the_runs_adapter_and_the_same_file_on_another_run(lora, tmp_path):
    args, run, base, plain_args = lora
    tuned, row = _sample(LORA, args, run, tmp_path / "tuned")
    assert f"unet.{ADAPTER_SUFFIX}.ema.safetensors" in row["weights"]["unet"]
    plain, _ = _sample(QUICK, plain_args, base, tmp_path / "plain")
    assert (tuned - plain).abs().max() > 1e-4  # the adapter changes the audio
    ckpt = latest_checkpoint(run / "lora" / "checkpoints").path
    file = ckpt / f"unet.{ADAPTER_SUFFIX}.ema.safetensors"
    # the adapter files alone, on the base run of the other recipe: the same audio as the
    # fine-tuned run (a stage or checkpoint folder names its adapters, the EMA copy first)
    vae_file = latest_checkpoint(run / "vae_lora" / "checkpoints").path / f"vae.{ADAPTER_SUFFIX}.safetensors"
    other, row = _sample(QUICK, plain_args, base, tmp_path / "other", "--adapter", str(run / "lora"),
                         "--adapter", str(vae_file))
    torch.testing.assert_close(other, tuned, atol=1e-5, rtol=0)
    assert all("+ adapter" in row["weights"][c] for c in ("unet", "text", "vae"))
    folder, _ = _sample(QUICK, plain_args, base, tmp_path / "folder", "--adapter", str(ckpt), "--adapter",
                        str(run / "vae_lora"))
    torch.testing.assert_close(folder, tuned, atol=1e-5, rtol=0)
    # scale 0 is the base run
    off, _ = _sample(QUICK, plain_args, base, tmp_path / "off", "--adapter", f"{file}:0")
    torch.testing.assert_close(off, plain, atol=1e-5, rtol=0)
    half, _ = _sample(QUICK, plain_args, base, tmp_path / "half", "--adapter", f"{file}:0.5")
    assert 1e-5 < (half - plain).abs().max() and 1e-5 < (half - tuned).abs().max()


def test_load_pipeline_mixes_several_adapters(lora):
    from tta_core.adapters import adapters_of
    from tta_core.sampling import load_pipeline

    _, run, base, plain_args = lora
    sets = [plain_args[i + 1] for i, a in enumerate(plain_args) if a == "--set"]
    file = latest_checkpoint(run / "lora" / "checkpoints").path / f"unet.{ADAPTER_SUFFIX}.safetensors"
    pipe = load_pipeline(QUICK, run_dir=base, overrides=sets, adapters=[file, (file, 0.5)])
    assert sorted(adapters_of(pipe.denoiser)) == ["unet", "unet_2"]
    assert pipe.weights["unet"].adapters == (f"{file}:1", f"{file}:0.5")


def test_merge_adapter_writes_plain_weights_that_sample_the_same(lora, tmp_path, capsys):
    args, run, _, _ = lora
    tuned, _ = _sample(LORA, args, run, tmp_path / "tuned")
    out = tmp_path / "merged"
    merge = [LORA, "merge-adapter", *[a for a in args if a != "--no-progress"], "--run-dir", str(run), "--out", str(out)]
    assert main(merge) == 0
    weights = load_weights(out / "weights" / "unet.safetensors")
    assert not any("lora_" in k or "base_layer" in k for k in weights)
    assert sorted(p.name for p in (out / "weights").iterdir()) == ["text.safetensors", "unet.safetensors",
                                                                   "vae.safetensors"]
    merged, row = _sample(LORA, args, out, tmp_path / "from-merged")
    assert "+ adapter" not in row["weights"]["unet"]
    torch.testing.assert_close(merged, tuned, atol=5e-4, rtol=0)  # merged weights round differently
    # an existing folder is refused and left as it was
    before = {p: p.read_bytes() for p in (out / "weights").iterdir()}
    capsys.readouterr()
    assert main(merge) == 2
    assert "is not empty" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (out / "weights").iterdir()} == before


def test_adapter_errors_are_clear_and_change_nothing(lora, tmp_path, capsys):
    args, run, base, plain_args = lora
    # an adapter of another rank's network: trained on a wider U-Net
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    file = latest_checkpoint(run / "lora" / "checkpoints").path / f"unet.{ADAPTER_SUFFIX}.safetensors"
    found = read_adapter(file)
    meta = {"tta_adapter": json.dumps({**json.loads(json.dumps(found.config.__dict__)), "modules": ["unet.nope"]}),
            "tta_component": "unet"}
    save_file({"x": torch.zeros(1)}, str(bad), metadata=meta)
    out = tmp_path / "out"
    assert main([QUICK, "sample", *plain_args, "--run-dir", str(base), "--out", str(out), "--text", "a beep",
                 "--adapter", str(bad)]) == 2
    assert "does not fit" in capsys.readouterr().err and not out.exists()
    assert main([QUICK, "sample", *plain_args, "--run-dir", str(base), "--out", str(out), "--text", "a beep",
                 "--adapter", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err and not out.exists()
    # an adapter stage over a component with no weights anywhere names what to do
    lonely = tmp_path / "lonely"
    assert main([LORA, "train", *args, "--set", "train.vae_lora.init_from=null", "--set", "train.lora.init_from=null",
                 "--run-dir", str(lonely)]) == 2
    err = capsys.readouterr().err
    assert "trains adapters on" in err and "no trained weights" in err
    assert not list(lonely.glob("*/checkpoints/step-*"))


def test_adapter_settings_are_validated(tiny_run, tmp_path, capsys):
    sets = [*_component_sets(tiny_run), "train.lora.adapters.components=[vae]"]
    args = [x for s in sets for x in ("--set", s)]
    assert main([LORA, "train", *args, "--run-dir", str(tmp_path / "r")]) == 2
    assert "not in the stage's trains" in capsys.readouterr().err
    sets = [*_component_sets(tiny_run), "train.lora.adapters.type=ia3"]
    assert main([LORA, "validate", *[x for s in sets for x in ("--set", s)]]) == 2
    assert "ia3" in capsys.readouterr().err


def test_plan_counts_the_optimizer_state_of_the_adapters_alone(tiny_run, capsys):
    sets = [x for s in _component_sets(tiny_run) for x in ("--set", s)]
    assert main([LORA, "plan", *sets, "--no-measure", "--json", "--stage", "lora"]) == 0
    adapted = json.loads(capsys.readouterr().out)["stages"][0]["breakdown"]
    assert main([QUICK, "plan", *sets, "--no-measure", "--json", "--stage", "ldm"]) == 0
    full = json.loads(capsys.readouterr().out)["stages"][0]["breakdown"]
    # AdamW: two fp32 states per trained parameter; the adapters are a fraction of U-Net and text
    assert adapted["optimizer"] == 2 * adapted["gradients"]
    assert 0 < adapted["optimizer"] < 0.3 * full["optimizer"]
