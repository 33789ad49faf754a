"""`tta-run RECIPE plan`: the parameters, estimated peak memory and step time of every stage and
of sampling, and the settings that bring a stage under a memory limit."""

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from tta_core.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "recipes" / "quickstart.yaml")


def _sets(tiny_run) -> list[str]:
    """The --set arguments of the toy quickstart (tests/conftest.py tiny_run), without its run dir."""
    args, _ = tiny_run
    return [a for pair in zip(args[::2], args[1::2]) if pair[0] == "--set" for a in pair]


def _plan_json(*args: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([QUICKSTART, "plan", *args, "--json"]) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def planned(tiny_run):
    """The toy quickstart's plan, as --json prints it."""
    return _plan_json(*_sets(tiny_run))


def _limit(planned) -> int:
    """A limit under the toy ldm stage's estimate, and over what its settings can bring it to."""
    ldm = next(s for s in planned["stages"] if s["name"] == "ldm")
    return int(ldm["estimated_peak_bytes"] * 0.8)


def test_the_plan_names_every_stage_and_sampling_with_the_documented_keys(planned):
    assert planned["recipe"].endswith("quickstart.yaml") and planned["memory_limit"] is None
    assert planned["device"] == "cpu"
    assert [s["name"] for s in planned["stages"]] == ["vae", "ldm"]
    for stage in planned["stages"]:
        assert {"name", "components", "batch_size", "precision", "estimated_peak_bytes", "breakdown",
                "measured_step_seconds", "measured_at_batch", "fits", "suggestions"} <= set(stage)
        assert set(stage["breakdown"]) == {"weights", "gradients", "optimizer", "ema", "activations"}
        assert stage["estimated_peak_bytes"] == sum(stage["breakdown"].values()) > 0
        assert stage["measured_step_seconds"] > 0 and stage["measured_at_batch"] == 1
        assert stage["fits"] is None and stage["suggestions"] == []  # no --memory: nothing to fit
        for component in stage["components"]:
            assert {"name", "type", "role", "params", "random_weights", "note"} <= set(component)
            assert component["role"] in ("trained", "frozen", "ema")
    sampling = planned["sampling"]
    assert sampling["estimated_peak_bytes"] > sampling["breakdown"]["weights"] > 0
    assert sampling["measured_step_seconds"] > 0 and sampling["batch_size"] == 8


def test_parameter_counts_are_those_of_the_built_modules(planned, tiny_run):
    from tta_core.discovery import get_plugins
    from tta_core.recipe import build, component_kind, load_recipe

    recipe = load_recipe(QUICKSTART, _sets(tiny_run)[1::2])
    registry = get_plugins().registry
    built = {name: build(node, component_kind(recipe, name, registry), registry, audio=recipe.audio)
             for name, node in recipe.components.items()}
    counts = {name: sum(p.numel() for p in getattr(m, "parameters", lambda: [])()) for name, m in built.items()}
    vae, ldm = planned["stages"]
    rows = {c["name"]: c for c in ldm["components"]}
    for name, count in counts.items():
        assert rows[name]["params"] == count
    assert {n for n, c in rows.items() if c["role"] == "trained"} == {"unet", "text"}
    assert rows["unet.ema"]["params"] == counts["unet"] and rows["text.ema"]["role"] == "ema"
    # the vae stage also trains the modules its objective owns (vae_gan's discriminator)
    trained = {c["name"] for c in vae["components"] if c["role"] == "trained"}
    assert {"vae", "discriminator"} <= trained and "unet" not in trained
    grads = sum(c["params"] for c in ldm["components"] if c["role"] == "trained")
    assert ldm["breakdown"]["gradients"] == 4 * grads and ldm["breakdown"]["optimizer"] == 8 * grads
    assert ldm["breakdown"]["ema"] == 4 * grads


def test_a_stage_over_the_limit_gets_set_lines_under_which_it_fits(planned, tiny_run):
    limit = _limit(planned)
    (ldm,) = _plan_json(*_sets(tiny_run), "--memory", f"{limit}B", "--stage", "ldm", "--no-measure")["stages"]
    assert ldm["fits"] is False and ldm["suggestions"]
    sets = [part for line in ldm["suggestions"] for part in line.split()]
    assert sets[0::2] == ["--set"] * len(ldm["suggestions"])
    again = _plan_json(*_sets(tiny_run), *sets, "--memory", f"{limit}B", "--stage", "ldm", "--no-measure")
    (replanned,) = again["stages"]
    assert replanned["fits"] is True and replanned["estimated_peak_bytes"] <= 0.9 * limit
    b, k = replanned["batch_size"], replanned["grad_accum"]
    assert b * k == ldm["batch_size"] * ldm["grad_accum"]  # the global batch is kept
    assert again["sampling"] is None and replanned["measured_step_seconds"] is None


def test_a_stage_within_the_limit_fits_with_no_suggestion(tiny_run):
    (vae,) = _plan_json(*_sets(tiny_run), "--stage", "vae", "--memory", "1GB", "--no-measure")["stages"]
    assert vae["fits"] is True and vae["suggestions"] == [] and vae["estimated_peak_bytes"] < 0.9 * 10**9


def test_the_report_says_what_fits_and_what_to_set(planned, tiny_run, capsys):
    limit = _limit(planned)
    assert main([QUICKSTART, "plan", *_sets(tiny_run), "--stage", "ldm", "--memory", f"{limit}B", "--no-measure"]) == 0
    out = capsys.readouterr().out
    assert "stage ldm: batch 2" in out and "estimated peak:" in out and "does not fit in" in out
    assert "to fit, add:  --set " in out and "stage vae" not in out and "sampling" not in out


def test_on_a_gpu_the_frozen_autoencoder_of_a_cached_stage_is_not_counted_on_the_device(tiny_run):
    """The ldm stage trains from cached latents, so on an accelerator its frozen VAE waits on the
    CPU (tta_core.training.latent_diffusion): a plan for CUDA (the CPU standing in here) leaves
    the VAE's weights out of the peak and says why; on the CPU they are in it."""
    plans = {device: _plan_json(*_sets(tiny_run), "--stage", "ldm", "--no-measure", "--device", device)["stages"][0]
             for device in ("cpu", "cuda")}
    vae = {d: next(c for c in p["components"] if c["name"] == "vae") for d, p in plans.items()}
    assert "waits on the CPU" in vae["cuda"]["note"] and "waits on the CPU" not in vae["cpu"]["note"]
    vae_bytes = 4 * vae["cpu"]["params"]  # fp32 weights
    assert plans["cpu"]["breakdown"]["weights"] - plans["cuda"]["breakdown"]["weights"] == vae_bytes
    # without the cache the steps encode their clips, and the VAE stays on the device
    uncached = _plan_json(*_sets(tiny_run), "--set", "train.ldm.objective.cache=false", "--stage", "ldm",
                          "--no-measure", "--device", "cuda")["stages"][0]
    assert uncached["breakdown"]["weights"] == plans["cpu"]["breakdown"]["weights"]


@pytest.mark.slow
def test_the_estimate_is_within_30_percent_of_a_measured_training_run(tiny_run, tmp_path):
    """The stage trained for real (two steps, at a batch of 6 the plan extrapolates to from its
    steps at 1 and 2), every tensor it holds counted as it lives."""
    from tta_core.memory import measured_bytes

    args, root = tiny_run
    shutil.copytree(root / "run", tmp_path / "run")
    sets = [*_sets(tiny_run), "--set", "train.ldm.batch_size=6"]
    estimate = _plan_json(*sets, "--stage", "ldm", "--no-measure")["stages"][0]["estimated_peak_bytes"]
    train = [QUICKSTART, "train", "--stage", "ldm", "--fresh", "--skip-memory-check", "--max-steps", "2", *sets,
             "--run-dir", str(tmp_path / "run"), "--no-progress"]
    codes = []
    measured = measured_bytes(lambda: codes.append(main(train)))
    assert codes == [0]
    assert abs(estimate - measured) <= 0.3 * measured, (estimate, measured)


def test_a_step_that_needs_its_data_runs_for_real_and_agrees_with_the_fake_count(planned, tiny_run, monkeypatch):
    """The plan counts a step on fake tensors; an objective that reads a tensor's value
    (``.item()``) cannot run there, so its step runs for real at batch 1 and 2, and the
    report says so. Both ways count the same step (the real one after an unmeasured first call,
    so without what a first call caches: the null encoding, the schedule's tables)."""
    from tta_core.training.latent_diffusion import LatentDiffusion

    fake = next(s for s in planned["stages"] if s["name"] == "ldm")
    assert any("fake tensors" in note for note in fake["notes"])
    losses = LatentDiffusion.losses

    def reading(self, batch, step, generator):
        out = losses(self, batch, step, generator)
        if float(out["main"]) < 0:  # a value read back, as a logger or a branch on the data does
            raise AssertionError
        return out

    monkeypatch.setattr(LatentDiffusion, "losses", reading)
    real = _plan_json(*_sets(tiny_run), "--stage", "ldm", "--no-measure")["stages"][0]
    assert any("ran for real at batch 1 and 2" in note for note in real["notes"])
    assert abs(real["estimated_peak_bytes"] - fake["estimated_peak_bytes"]) <= 0.15 * fake["estimated_peak_bytes"]


def test_plans_for_several_limits_build_and_count_each_stage_once(planned, tiny_run, monkeypatch):
    from tta_core import planning
    from tta_core.discovery import get_registry
    from tta_core.recipe import load_recipe

    builds, trials = [], []
    build, trial = planning._Components._build, planning._StagePlanner._run_trial
    monkeypatch.setattr(planning._Components, "_build",
                        lambda self, name, node: builds.append((name, node.get("gradient_checkpointing"))) or
                        build(self, name, node))
    monkeypatch.setattr(planning._StagePlanner, "_run_trial", lambda self, s, timed: trials.append(s) or trial(self, s, timed))
    recipe = load_recipe(QUICKSTART, _sets(tiny_run)[1::2])
    limit = _limit(planned)
    small, large = planning.plan_limits(recipe, registry=get_registry(), limits=[limit, "10GB"], stage="ldm",
                                        measure=False)
    assert (small.memory_limit, large.memory_limit) == (limit, 10**9 * 10)
    assert small.stages[0].fits is False and small.stages[0].suggestions and large.stages[0].fits is True
    assert small.stages[0].estimated_peak_bytes == large.stages[0].estimated_peak_bytes
    assert len(builds) == len(set(builds))  # built once, and once more with checkpointing for the small limit
    assert len(trials) == len({(t.precision, t.checkpointing) for t in trials})


def test_an_unknown_stage_is_named_with_the_stages_there_are(capsys):
    assert main([QUICKSTART, "plan", "--stage", "lmd"]) == 2
    err = capsys.readouterr().err
    assert "no stage named 'lmd'" in err and "stages: vae, ldm" in err


@pytest.mark.parametrize("text", ["24", "lots", "24XB", "-3GB", "0GB"])
def test_a_memory_size_without_a_unit_or_number_is_refused_with_an_example(text, capsys):
    assert main([QUICKSTART, "plan", f"--memory={text}"]) == 2
    assert "e.g. --memory 24GB" in capsys.readouterr().err


def test_memory_sizes_read_decimal_and_binary_units():
    from tta_core.planning import parse_memory

    assert parse_memory("24GB") == 24 * 10**9 and parse_memory("24 GiB") == 24 * 2**30
    assert parse_memory("512MB") == 512 * 10**6 and parse_memory("1.5gb") == 1_500_000_000


@pytest.mark.slow
def test_a_pretrained_source_not_on_this_machine_is_built_with_random_weights_or_named_as_not_built(tiny_run):
    """Nothing is downloaded: a hub id is built with random weights where the factory can, and
    named as not built where it cannot, without failing the plan."""
    from tta_core.discovery import get_plugins
    from tta_core.planning import plan_recipe
    from tta_core.recipe import load_recipe, signature_of

    recipe = load_recipe(QUICKSTART, [*_sets(tiny_run)[1::2],
                                      "components.text={type: t5, pretrained: google/flan-t5-large}",
                                      "components.unet.cross_attention_dim=1024", "components.unet.pooled_dim=1024"])
    registry = get_plugins().registry
    plan = plan_recipe(recipe, registry=registry, stage="ldm", measure=False)
    text = next(c for c in plan.stages[0].components if c.name == "text")
    params, _, _ = signature_of(registry.get("conditioner", "t5").load())
    if "random_weights" in params:
        assert text.random_weights and text.params > 200_000_000
        assert "google/flan-t5-large not found locally" in text.note
        assert plan.stages[0].estimated_peak_bytes is not None
    else:
        assert text.params is None and "not built" in text.note and "random_weights" in text.note
        assert plan.stages[0].estimated_peak_bytes is None and "not estimated" in plan.stages[0].notes[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart", "diffae_birds_tiny"])
def test_the_cpu_sized_shipped_recipes_are_planned_at_their_real_size(name, monkeypatch):
    """Every stage is reported: estimated, or with a note naming the part that could not be
    built. The real-size recipes (audioldm_*, amphion_tta, diffae_birds) take minutes a stage
    on a CPU: bench/bench_real_size.py plans each and measures its real step."""
    from tta_core.recipe import load_recipe

    monkeypatch.chdir(REPO)
    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([f"recipes/{name}.yaml", "plan", "--no-measure", "--device", "cuda", "--json"]) == 0
    plan = json.loads(out.getvalue())
    assert [s["name"] for s in plan["stages"]] == [s["name"] for s in recipe.get("train")]
    for part in [*plan["stages"], plan["sampling"]]:
        unbuilt = [c["name"] for c in part["components"] if c["params"] is None]
        if part["estimated_peak_bytes"] is None:
            assert part["notes"] and part["notes"][0].startswith("not estimated")
        else:
            assert part["estimated_peak_bytes"] > 0
        for name_ in unbuilt:
            assert any(name_ in note for note in part["notes"]) or part["estimated_peak_bytes"] is not None
