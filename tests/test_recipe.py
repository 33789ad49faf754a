import textwrap
from typing import Annotated
from pathlib import Path

import pytest

from tta_core.errors import RecipeError
from tta_core.recipe import Ref, build, check, load_recipe, validate
from tta_core.registry import Entry, Origin, Registry

REPO = Path(__file__).resolve().parents[1]


def tiny_vae(latent_channels: int = 8, channels: list[int] = (32, 64), lr: float = 1e-3, audio=None):
    return {"latent_channels": latent_channels, "channels": list(channels), "lr": lr, "audio": audio}


def tiny_text(width: int, layers: int = 2, freeze: bool = False):
    return ("text", width, layers)


def tiny_unet(cross_attention: Annotated[str | None, Ref("conditioner")] = None, dropout: float = 0.0):
    return ("unet", cross_attention)


def ddim(denoise=None, x=None, schedule=None, *, eta: float = 0.0, generator=None, callback=None):
    return x


def latent_diffusion(cfg_dropout: float = 0.1):
    return ("objective", cfg_dropout)


def jsonl(manifest: str, caption_key: str = "caption"):
    return ("dataset", manifest)


@pytest.fixture
def registry():
    reg = Registry()
    origin = Origin("testplugin", "tta-test", "0.0")
    for kind, name, fn in [
        ("autoencoder", "kl_vae", tiny_vae), ("conditioner", "t5", tiny_text),
        ("denoiser", "unet2d", tiny_unet), ("sampler", "ddim", ddim),
        ("objective", "latent_diffusion", latent_diffusion), ("dataset", "jsonl", jsonl),
        ("embedder", "t5", tiny_text),
    ]:
        reg.add(Entry(kind, name, fn, origin))
    return reg


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


GOOD = """
name: tiny
audio: {sample_rate: 16000}
data:
  train: {type: jsonl, manifest: data/manifest.jsonl}
components:
  vae: {type: kl_vae, latent_channels: 4, lr: 1e-4}
  text: {type: t5, width: 32}
  unet: {type: unet2d, cross_attention: text}
train:
  - name: ldm
    objective: {type: latent_diffusion, cfg_dropout: 0.2}
    trains: [unet, text]
    frozen: [vae]
    max_steps: 10
sample: {sampler: {type: ddim, eta: 0.0}, steps: 20, guidance: 3, conditioner: text}
"""


def test_a_good_recipe_validates_and_builds(tmp_path, registry):
    recipe = check(load_recipe(write(tmp_path, "r.yaml", GOOD)), registry)
    assert recipe.name == "tiny"
    vae = build(recipe.components["vae"], "autoencoder", registry, audio={"sample_rate": 16000})
    assert vae == {"latent_channels": 4, "channels": [32, 64], "lr": 1e-4, "audio": {"sample_rate": 16000}}


def test_exponent_floats_are_floats(tmp_path):
    recipe = load_recipe(write(tmp_path, "r.yaml", "components:\n  vae: {type: kl_vae, lr: 1e-4, big: 5E3, neg: -2.5e-3}\n"))
    vae = recipe.components["vae"]
    assert vae["lr"] == pytest.approx(1e-4) and isinstance(vae["lr"], float)
    assert vae["big"] == 5000.0 and isinstance(vae["big"], float)
    assert vae["neg"] == pytest.approx(-2.5e-3)


def issues_of(tmp_path, registry, text, name="r.yaml"):
    path = write(tmp_path, name, text)
    with pytest.raises(RecipeError) as err:
        check(load_recipe(path), registry)
    return [str(i) for i in err.value.issues], path


def test_unknown_type_reports_file_line_and_suggestion(tmp_path, registry):
    issues, path = issues_of(tmp_path, registry, "components:\n  vae:\n    type: kl_vea\n")
    (issue,) = issues
    assert issue.startswith(f"{path}:3: ")
    assert "unknown autoencoder / conditioner / denoiser / process / vocoder 'kl_vea'" in issue
    assert "Did you mean 'kl_vae'" in issue


def test_unknown_kwarg_wrong_type_all_reported_at_once(tmp_path, registry):
    issues, path = issues_of(tmp_path, registry, """
        components:
          vae: {type: kl_vae, latnet_channels: 4}
          text:
            type: t5
            width: thirty-two
            layers: 2.5
        sample: {sampler: {type: ddim}, steps: many}
        train:
          - {name: a, objective: {type: latent_diffusion}, trains: [unet]}
        """)
    text = "\n".join(issues)
    assert f"{path}:2: 'components.vae': autoencoder 'kl_vae' takes no argument 'latnet_channels'; did you mean 'latent_channels'?" in text
    assert f"{path}:5: 'components.text.width': expected an integer, got string 'thirty-two'" in text
    assert f"{path}:6: 'components.text.layers': expected an integer, got number 2.5" in text
    assert f"{path}:7: 'sample.steps': expected an integer" in text
    assert f"{path}:9: 'train.a.trains[0]': no component named 'unet'" in text
    assert len(issues) == 5


def test_missing_required_argument_and_injected_argument(tmp_path, registry):
    issues, path = issues_of(tmp_path, registry, "components:\n  text: {type: t5}\n  vae: {type: kl_vae, audio: {}}\n")
    assert f"{path}:2: 'components.text': conditioner 't5' needs the argument 'width'" in issues
    assert any("'components.vae.audio' is filled in by tta" in i for i in issues)


def test_malformed_yaml_reports_line(tmp_path, registry):
    issues, path = issues_of(tmp_path, registry, "components:\n  vae: {type: kl_vae\n  text: [1, 2\n")
    (issue,) = issues
    assert issue.startswith(f"{path}:") and "malformed YAML" in issue


def test_duplicate_key_reports_both_lines(tmp_path, registry):
    issues, path = issues_of(tmp_path, registry, "components:\n  vae: {type: kl_vae}\n  vae: {type: kl_vae}\n")
    assert issues == [f"{path}:3: duplicate key 'vae' (first at line 2); YAML would silently keep only the last one"]


def test_python_tag_is_refused_and_runs_nothing(tmp_path, registry):
    marker = tmp_path / "pwned"
    issues, path = issues_of(
        tmp_path, registry,
        f"components:\n  vae: !!python/object/apply:os.mkdir ['{marker}']\n",
    )
    (issue,) = issues
    assert issue.startswith(f"{path}:2: ") and "Python tag '!!python/object/apply:os.mkdir' is not allowed" in issue
    assert not marker.exists()


def test_import_paths_are_not_component_names(tmp_path, registry):
    issues, _ = issues_of(tmp_path, registry, "components:\n  vae: {type: mypkg.models.VAE}\n")
    assert "looks like an import path" in issues[0]


def test_ambiguous_kind_needs_kind_key(tmp_path, registry):
    # 't5' is both a conditioner and an embedder, but only conditioners are model kinds
    recipe = load_recipe(write(tmp_path, "r.yaml", "components:\n  text: {type: t5, width: 8}\n  e: {type: t5, width: 8, kind: embedder}\n"))
    assert validate(recipe, registry) == []
    issues, _ = issues_of(tmp_path, registry, "components:\n  e: {type: t5, width: 8, kind: embeder}\n", "s.yaml")
    assert "unknown kind 'embeder'; did you mean 'embedder'?" in issues[0]


def test_reference_to_a_component_of_the_wrong_kind(tmp_path, registry):
    issues, path = issues_of(tmp_path, registry, """
        components:
          vae: {type: kl_vae}
          unet: {type: unet2d, cross_attention: vae}
        """)
    assert issues == [f"{path}:3: 'components.unet.cross_attention': component 'vae' is an autoencoder, expected a conditioner"]


def test_unknown_section_and_stage_key(tmp_path, registry):
    issues, path = issues_of(tmp_path, registry, """
        componets: {}
        train:
          - {name: a, objective: {type: latent_diffusion}, max_step: 3}
        """)
    assert f"{path}:1: unknown section 'componets'; did you mean 'components'?" in issues[0]
    assert f"{path}:3: unknown key 'max_step' in 'train.a'; did you mean 'max_steps'?" in issues[1]


def test_base_inheritance_merges_deeply_replaces_lists_and_keeps_locations(tmp_path, registry):
    base = write(tmp_path, "base.yaml", GOOD)
    child = write(tmp_path, "child.yaml", """
        base: base.yaml
        name: child
        components:
          vae: {latent_channels: 2, channels: [8]}
          text: {type: t5, width: 4}
        sample: {steps: 5}
        """)
    recipe = check(load_recipe(child), registry)
    vae = recipe.components["vae"]
    assert vae["type"] == "kl_vae" and vae["latent_channels"] == 2 and vae["lr"] == 1e-4
    assert vae["channels"] == [8]  # lists are replaced, not merged
    assert recipe.get("sample")["sampler"]["type"] == "ddim" and recipe.get("sample")["steps"] == 5
    assert recipe.files == (child.resolve(), base.resolve())
    assert str(vae.loc_of("lr")).startswith(f"{base.resolve()}:")  # where the inherited value lives


def test_base_type_change_replaces_the_node(tmp_path, registry):
    write(tmp_path, "base.yaml", "components:\n  text: {type: t5, width: 4, layers: 3}\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\ncomponents:\n  text: {type: unet2d}\n")
    recipe = load_recipe(child)
    assert dict(recipe.components["text"]) == {"type": "unet2d"}


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_overrides_are_yaml_typed_and_address_stages_by_name(tmp_path, registry):
    path = write(tmp_path, "r.yaml", GOOD)
    recipe = load_recipe(path, ["components.vae.lr=2e-4", "train.ldm.max_steps=3", "sample.guidance=4.5",
                                "train.0.trains=[unet]", "name=renamed"])
    check(recipe, registry)
    assert recipe.components["vae"]["lr"] == 2e-4
    assert recipe.get("train")[0]["max_steps"] == 3 and recipe.get("train")[0]["trains"] == ["unet"]
    assert recipe.get("sample")["guidance"] == 4.5 and recipe.name == "renamed"


def test_override_errors_are_clear(tmp_path, registry):
    path = write(tmp_path, "r.yaml", GOOD)
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["train.vae.max_steps=3", "novalue", "name.x=1"])
    text = str(err.value)
    assert "--set train.vae.max_steps=3: 'train.vae': no item 'vae' in this list (indices 0-0, names ldm)" in text
    assert "--set novalue: an override is KEY.PATH=VALUE" in text
    assert "'name' is a str, it has no key 'x'" in text
    recipe = load_recipe(path, ["sample.steps=ten"])
    assert "--set sample.steps=ten: 'sample.steps': expected an integer" in str(validate(recipe, registry)[0])


def test_every_shipped_recipe_validates():
    from tta_core.discovery import get_registry

    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    registry = get_registry()
    problems = {p.name: [str(i) for i in validate(load_recipe(p), registry)] for p in recipes}
    assert {k: v for k, v in problems.items() if v} == {}
