"""One source of truth: the stage and audio schemas are their dataclasses, one precision list,
the recipe's audio settings and run directory read one way by every verb, and commands listed
as data by modules that never import the CLI."""

import ast
import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from audio_fixtures import tone, write_jsonl, write_wav
from tta_core import cli
from tta_core.cli import main
from tta_core.data.config import AudioConfig, MelConfig
from tta_core.precision import PRECISIONS
from tta_core.recipe import Range, load_recipe, sections, stage_fields, validate
from tta_core.registry import Entry, Origin, Registry
from tta_core.training import stage as stage_module
from tta_core.training.stage import EMAConfig, OptimizerConfig, ScheduleConfig, StageConfig

REPO = Path(__file__).resolve().parents[1]
COMMANDS_DIR = REPO / "tta_core" / "commands"


def _objective(lr_scale: float = 1.0):
    return ("objective", lr_scale)


@pytest.fixture
def registry():
    reg = Registry()
    reg.add(Entry("objective", "fit", _objective, Origin("testplugin", "tta-test", "0.0")))
    return reg


def issues(tmp_path, registry, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return [str(i) for i in validate(load_recipe(path), registry)]


# -- the schemas are the dataclasses ------------------------------------------------------------


def test_the_validator_knows_exactly_the_fields_of_the_dataclasses_that_read_the_recipe():
    names = lambda cls: [f.name for f in dataclasses.fields(cls)]  # noqa: E731
    stage = stage_fields()
    assert list(stage) == names(StageConfig)
    assert list(stage["optimizer"]) == names(OptimizerConfig)
    assert list(typing.get_args(stage["optimizers"])[1]) == names(OptimizerConfig)
    assert list(stage["lr_schedule"]) == names(ScheduleConfig)
    assert list(stage["ema"]) == names(EMAConfig) and stage["ema"].nullable
    audio = sections()["audio"]
    assert list(audio) == names(AudioConfig) and list(audio["mel"]) == names(MelConfig)


def test_a_field_added_to_the_stage_dataclass_is_validated_with_its_range(tmp_path, registry, monkeypatch):
    recipe = "train:\n  - {name: a, objective: {type: fit}, warmup_batches: %s}\n"
    before = issues(tmp_path, registry, recipe % 3)
    assert any("unknown key 'warmup_batches' in 'train.a'" in i for i in before)
    grown = dataclasses.make_dataclass("StageConfig", [("warmup_batches", typing.Annotated[int, Range(min=1)], 1)],
                                       bases=(StageConfig,), frozen=True)
    monkeypatch.setattr(stage_module, "StageConfig", grown)
    stage_fields.cache_clear()
    try:
        assert issues(tmp_path, registry, recipe % 3) == []
        assert issues(tmp_path, registry, recipe % 0) == [
            f"{tmp_path / 'r.yaml'}:2: 'train.a.warmup_batches': must be at least 1, got integer 0"]
    finally:
        monkeypatch.undo()
        stage_fields.cache_clear()


def test_stage_settings_keep_their_ranges_and_ema_null_turns_ema_off(tmp_path, registry):
    stage = "train:\n  - {name: a, objective: {type: fit}, %s}\n"
    assert issues(tmp_path, registry, stage % "ema: null") == []
    assert issues(tmp_path, registry, stage % "ema: {beta: 0.99}, optimizers: {main: {lr: 0.1}}") == []
    [problem] = issues(tmp_path, registry, stage % "optimizers: {main: {lr: 0.1, betaz: [0.9, 0.9]}}")
    assert "unknown key 'betaz' in 'train.a.optimizers.main'; did you mean 'betas'?" in problem
    [problem] = issues(tmp_path, registry, stage % "optimizers: {main: {lr: 0}}")
    assert problem.endswith("'train.a.optimizers.main.lr': must be greater than 0, got integer 0")
    [problem] = issues(tmp_path, registry, stage % "milestones: [10, 0]")
    assert problem.endswith("'train.a.milestones[1]': must be at least 1, got integer 0")
    [problem] = issues(tmp_path, registry, "audio: {channels: 0}\n")
    assert problem.endswith("'audio.channels': must be at least 1, got integer 0")


# -- one precision list -----------------------------------------------------------------------


def test_the_recipe_and_the_train_command_take_the_one_precision_list(tmp_path, registry, capsys):
    choices = ", ".join(map(repr, PRECISIONS))
    [problem] = issues(tmp_path, registry, "train:\n  - {name: a, objective: {type: fit}, precision: half}\n")
    assert problem.endswith(f"'train.a.precision': expected one of {choices}, got string 'half'")
    path = tmp_path / "t.yaml"
    path.write_text("name: t\n")
    assert main([str(path), "train", "--precision", "half"]) == 2
    assert f"argument --precision: invalid choice: 'half' (choose from {choices})" in capsys.readouterr().err


def test_no_module_of_tta_core_writes_its_own_precision_list():
    """The names bf16/fp16 side by side, as a list, tuple, set or mapping keys, appear only in
    tta_core/precision.py (a new precision is added there, and everything follows)."""
    found = []
    for path in sorted((REPO / "tta_core").rglob("*.py")):
        if path.name == "precision.py" and path.parent.name == "tta_core":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            items = node.elts if isinstance(node, (ast.List, ast.Tuple, ast.Set)) else \
                node.keys if isinstance(node, ast.Dict) else []
            words = {i.value for i in items if isinstance(i, ast.Constant)}
            if {"bf16", "fp16"} <= words:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert found == []


# -- the recipe's audio settings and run directory --------------------------------------------


def test_recipe_audio_is_built_once_and_follows_changes_to_its_section(tmp_path):
    path = tmp_path / "sub" / "r.yaml"
    path.parent.mkdir()
    path.write_text("name: r\naudio: {sample_rate: 8000, duration: 1.0, mel: {fmax: 4000}}\n")
    recipe = load_recipe(path)
    assert recipe.audio == AudioConfig.from_mapping({"sample_rate": 8000, "duration": 1.0, "mel": {"fmax": 4000}})
    assert recipe.audio is recipe.audio
    recipe.data["audio"]["duration"] = 2.0
    assert recipe.audio.duration == 2.0 and recipe.audio.num_samples == 16000
    assert recipe.run_dir == Path("runs/r")
    assert load_recipe(path, ["run_dir=here"]).run_dir == path.parent / "here"  # beside the recipe file
    assert load_recipe(path, [f"run_dir={tmp_path / 'abs'}"]).run_dir == tmp_path / "abs"


MEL_PLUGIN = '''
from pathlib import Path

import torch
from tta_core.plugin import hookimpl, Imported, training_dataset
from tta_core.recipe import load_recipe


class MelNet(torch.nn.Module):
    def __init__(self, n_mels: int = 64):
        super().__init__()
        self.lin = torch.nn.Linear(n_mels, 1)

    def forward(self, mel):
        return self.lin(mel)


class MelFit:
    """Fits the net to the mels of data.train; says which mel cache the stage read."""

    def __init__(self, report: str):
        self.report = Path(report)

    def setup(self, ctx):
        self.net = ctx.components["net"]

    def train_dataset(self, ctx):
        dataset = training_dataset(ctx)
        self.report.write_text(str(dataset.cache.dir) if dataset.cache is not None else "no cache")
        return dataset

    def collate(self, items):
        return {"mel": torch.stack([item["mel"] for item in items if item is not None])}

    def parameter_groups(self, ctx):
        return {"main": list(self.net.parameters())}

    def losses(self, batch, step, generator):
        return {"main": self.net(batch["mel"]).pow(2).mean()}


class ToyImporter:
    """a torch file holding the state dict of the toy mel net"""

    def __call__(self, sources, *, out, recipe, overrides, registry):
        state = torch.load(sources[0], weights_only=True)
        return Imported(recipe=load_recipe(recipe, overrides), weights={"net": state}, sources={"net": str(sources[0])})


@hookimpl
def tta_register(register):
    register("denoiser", "toy_mel_net", MelNet)
    register("objective", "toy_mel_fit", MelFit)
    register("importer", "toy_mel_weights", ToyImporter)
'''


@pytest.mark.slow  # imports, prepares and trains a step
def test_prepare_fills_the_mel_cache_that_train_reads_for_an_imported_run(tmp_path, fake_dists, monkeypatch, capsys):
    """An imported run's recipe says ``run_dir: .``: prepare caches there (not in runs/<name>),
    and training reads that cache."""
    import torch

    fake_dists("tta-mel-toy", "1.0", {"meltoy": MEL_PLUGIN})
    monkeypatch.chdir(tmp_path)  # where runs/<name> would go
    rows = []
    for i in range(4):
        write_wav(tmp_path / "data" / f"c{i}.wav", tone(1.0, freq=300 + 200 * i, seed=i))
        rows.append({"id": f"c{i}", "audio": str(tmp_path / "data" / f"c{i}.wav"), "caption": f"clip {i}"})
    manifest = write_jsonl(tmp_path / "data" / "manifest.jsonl", rows)
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(f"""name: meltoy
audio: {{sample_rate: 16000, duration: 0.5}}
data:
  train: {{type: jsonl, manifest: {manifest}}}
components:
  net: {{type: toy_mel_net}}
train:
  - {{name: fit, objective: {{type: toy_mel_fit, report: {tmp_path / 'used.txt'}}}, trains: [net], max_steps: 1,
     batch_size: 2, log_every: 1}}
""")
    torch.save({f"lin.{k}": v for k, v in torch.nn.Linear(64, 1).state_dict().items()}, tmp_path / "net.pt")
    run = tmp_path / "imported"
    assert main(["import", "toy_mel_weights", str(tmp_path / "net.pt"), "--out", str(run),
                 "--recipe", str(recipe)]) == 0

    assert main([str(run / "recipe.yaml"), "prepare", "--workers", "0"]) == 0
    assert "4 computed, 0 reused" in capsys.readouterr().out
    caches = list((run / "cache").glob("mel-*"))
    assert len(caches) == 1 and not (tmp_path / "runs").exists()

    assert main([str(run / "recipe.yaml"), "train", "--no-progress"]) == 0
    assert (tmp_path / "used.txt").read_text() == str(caches[0])
    assert (run / "fit" / "checkpoints" / "step-00000001").is_dir()
    assert not (tmp_path / "runs").exists()


# -- commands as data, no import cycle ----------------------------------------------------------


def _command_modules() -> list[str]:
    return sorted(p.stem for p in COMMANDS_DIR.glob("*.py") if p.stem not in ("__init__", "base"))


@pytest.mark.slow  # a fresh interpreter per module
@pytest.mark.parametrize("module", _command_modules())
def test_a_command_module_imports_on_its_own_without_the_cli(module):
    code = (f"import sys, tta_core.commands.{module} as m\n"
            "assert m.COMMANDS and all(c.name and c.help and callable(c.run) for c in m.COMMANDS), m.COMMANDS\n"
            "assert 'tta_core.cli' not in sys.modules, 'the module imported tta_core.cli'\n"
            "assert 'torch' not in sys.modules, 'the module imported torch'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr


def test_no_command_module_imports_the_cli_and_the_cli_lists_every_one():
    for path in COMMANDS_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                names = [a.name for a in node.names]
                assert target not in ("..cli", "tta_core.cli") and not (target == ".." and "cli" in names), \
                    f"{path.name}:{node.lineno} imports the CLI"
            elif isinstance(node, ast.Import):
                assert "tta_core.cli" not in [a.name for a in node.names], f"{path.name}:{node.lineno}"
    listed = sorted(m.__name__.rsplit(".", 1)[1] for m in cli.COMMAND_MODULES)
    assert listed == _command_modules()  # a new module that is not listed would add no command
    for module in cli.COMMAND_MODULES:
        for cmd in module.COMMANDS:
            table = cli.VERBS if isinstance(cmd, cli.Verb) else cli.COMMANDS
            assert table[cmd.name] is cmd


def test_a_command_name_given_twice_is_an_error_naming_both_modules():
    import types

    from tta_core.commands import data

    twin = types.ModuleType("tta_core.commands.twin")
    twin.COMMANDS = [cli.Verb("prepare", "another prepare", lambda args: 0)]
    with pytest.raises(RuntimeError, match="verb 'prepare' is defined by both tta_core.commands.data and "
                                           "tta_core.commands.twin"):
        cli._tables((data, twin))
