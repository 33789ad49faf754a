"""The trainer on a toy objective: exact resume, EMA, faults, fine-tuning, run-dir layout."""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tta_core.checkpoint import latest_checkpoint, load_weights
from tta_core.cli import main
from tta_core.errors import UsageError
from tta_core.training.engine import Trainer

TOY = '''
import os, signal
import torch
from tta_core.plugin import hookimpl


class Net(torch.nn.Module):
    def __init__(self, width: int = 8, dropout: float = 0.1):
        super().__init__()
        self.lin = torch.nn.Linear(4, width)
        self.out = torch.nn.Linear(width, 1)
        self.drop = torch.nn.Dropout(dropout)

    def forward(self, x):
        return self.out(self.drop(torch.tanh(self.lin(x))))


class Points(torch.utils.data.Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x.sum(1, keepdim=True) > 0).float()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class Regression:
    def __init__(self, n_items: int = 37, noise: float = 0.1, nan_at: list[int] = (), kill_at: int = -1,
                 oom_at: int = -1):
        self.n_items, self.noise = n_items, noise
        self.nan_at, self.kill_at, self.oom_at = set(nan_at), kill_at, oom_at

    def setup(self, ctx):
        self.net = ctx.components["net"]

    def train_dataset(self, ctx):
        return Points(self.n_items)

    def parameter_groups(self, ctx):
        return {"main": list(self.net.parameters())}

    def losses(self, batch, step, generator):
        if step == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if step == self.oom_at:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        x = batch["x"] + self.noise * torch.randn(batch["x"].shape, generator=generator)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(self.net(x), batch["y"])
        if step in self.nan_at:
            loss = loss * float("nan")
        return {"main": loss, "log/mean_x": batch["x"].mean()}


@hookimpl
def tta_register(register):
    register("denoiser", "toy_net", Net)
    register("objective", "toy_regression", Regression)
'''

RECIPE = """
name: toy
components:
  net: {type: toy_net, width: 8}
train:
  - name: fit
    objective: {type: toy_regression}
    trains: [net]
    max_steps: 8
    batch_size: 4
    grad_accum: 2
    optimizer: {lr: 0.05}
    lr_schedule: {type: cosine, warmup_steps: 2}
    ema: {beta: 0.9, power: 1.0}
    checkpoint_every: 4
    keep_last: 10
    log_every: 1
"""


@pytest.fixture
def toy(tmp_path, fake_dists):
    fake_dists("tta-toy", "1.0", {"toy": TOY})
    path = tmp_path / "toy.yaml"
    path.write_text(RECIPE)
    return path


def train(recipe, run_dir, *extra):
    return main([str(recipe), "train", "--run-dir", str(run_dir), "--no-progress", *extra])


def losses(run_dir):
    return [json.loads(l)["main"] for l in (Path(run_dir) / "fit/logs/metrics.jsonl").read_text().splitlines()]


def final(run_dir):
    ckpt = latest_checkpoint(Path(run_dir) / "fit/checkpoints")
    return ckpt, ckpt.weights("net"), ckpt.weights("net.ema"), ckpt.tensors()


def test_resume_is_exact_with_accumulation(toy, tmp_path):
    assert train(toy, tmp_path / "full") == 0
    assert train(toy, tmp_path / "split", "--max-steps", "4") == 0
    assert train(toy, tmp_path / "split") == 0  # resumes by default
    a, b = final(tmp_path / "full"), final(tmp_path / "split")
    assert a[0].step == b[0].step == 8
    for key in a[1]:
        assert torch.equal(a[1][key], b[1][key]), key
        assert torch.equal(a[2][key], b[2][key]), key
    opt_a, opt_b = a[3]["optimizers"]["main"]["state"], b[3]["optimizers"]["main"]["state"]
    for i in opt_a:
        assert torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"])
    assert losses(tmp_path / "full") == losses(tmp_path / "split")
    assert len(losses(tmp_path / "full")) == 8


def test_ema_differs_from_raw_and_the_run_dir_layout(toy, tmp_path):
    assert train(toy, tmp_path / "run") == 0
    ckpt, raw, ema, _ = final(tmp_path / "run")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    stage = tmp_path / "run/fit"
    assert (stage / "recipe.resolved.yaml").exists()
    assert sorted(p.name for p in (stage / "checkpoints").iterdir() if p.name.startswith("step")) == \
        ["step-00000004", "step-00000008"]
    assert (stage / "checkpoints/latest").read_text().strip() == "step-00000008"
    assert any(p.name.startswith("events.out.tfevents") for p in (stage / "logs").iterdir())


def test_fresh_starts_over_and_keep_last_prunes(toy, tmp_path):
    assert train(toy, tmp_path / "run", "--set", "train.fit.checkpoint_every=2", "--set", "train.fit.keep_last=2",
                 "--set", "train.fit.milestones=[2]") == 0
    names = sorted(p.name for p in (tmp_path / "run/fit/checkpoints").iterdir() if p.name.startswith("step"))
    assert names == ["step-00000002", "step-00000006", "step-00000008"]
    assert train(toy, tmp_path / "run", "--fresh", "--max-steps", "3") == 0
    assert latest_checkpoint(tmp_path / "run/fit/checkpoints").step == 3


def test_sigterm_finishes_the_step_checkpoints_and_exits_143(toy, tmp_path):
    rc = train(toy, tmp_path / "run", "--set", "train.fit.objective.kill_at=2")
    assert rc == 143
    ckpt = latest_checkpoint(tmp_path / "run/fit/checkpoints")
    assert ckpt.step == 3  # the step that was running when the signal came, finished
    assert train(toy, tmp_path / "run") == 0  # and it resumes
    assert latest_checkpoint(tmp_path / "run/fit/checkpoints").step == 8


def test_non_finite_losses_are_skipped_counted_and_stop_the_run_when_repeated(toy, tmp_path, capsys):
    assert train(toy, tmp_path / "a", "--set", "train.fit.objective.nan_at=[3]") == 0
    ckpt = latest_checkpoint(tmp_path / "a/fit/checkpoints")
    assert ckpt.state["nonfinite_skipped"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt.weights("net").values())
    assert "1 non-finite steps skipped" in capsys.readouterr().out

    rc = train(toy, tmp_path / "b", "--set", "train.fit.objective.nan_at=[5,6,7]", "--set", "train.fit.max_nonfinite=3")
    assert rc == 1
    err = capsys.readouterr().err
    assert "3 non-finite losses in a row" in err and "step-00000004" in err
    assert latest_checkpoint(tmp_path / "b/fit/checkpoints").step == 4


def test_unwritable_run_dir_and_full_disk_fail_loudly_keeping_the_last_checkpoint(toy, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert train(toy, blocker / "run") == 1
    assert "is not writable" in capsys.readouterr().err

    assert train(toy, tmp_path / "run", "--max-steps", "4") == 0
    import tta_core.training.engine as engine

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine, "save_checkpoint", full)
    assert train(toy, tmp_path / "run") == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "step-00000004" in err
    assert latest_checkpoint(tmp_path / "run/fit/checkpoints").step == 4


def test_out_of_memory_says_which_batch_size_to_lower(toy, tmp_path, capsys):
    assert train(toy, tmp_path / "run", "--set", "train.fit.objective.oom_at=1") == 1
    assert "--set train.fit.batch_size=2" in capsys.readouterr().err


def test_init_from_strict_and_partial(toy, tmp_path, capsys):
    assert train(toy, tmp_path / "src", "--max-steps", "2") == 0
    src = latest_checkpoint(tmp_path / "src/fit/checkpoints")
    assert train(toy, tmp_path / "ft", "--init-from", str(tmp_path / "src"), "--max-steps", "0") == 0
    assert torch.equal(final(tmp_path / "ft")[1]["lin.weight"], src.weights("net")["lin.weight"])

    # a wider net: strict refuses with a readable diff, partial loads what fits
    args = ["--init-from", str(src.path), "--set", "components.net.width=16", "--max-steps", "0"]
    assert train(toy, tmp_path / "wide", *args) == 1
    err = capsys.readouterr().err
    assert "shape: lin.weight: model (16, 4), file (8, 4)" in err and "--allow-partial" in err
    assert train(toy, tmp_path / "wide2", *args, "--allow-partial") == 0
    out = capsys.readouterr().out
    assert "partial load" in out and "shape: out.weight" in out


def test_frozen_component_without_weights_names_the_stage_to_train(tmp_path, fake_dists, capsys):
    fake_dists("tta-toy", "1.0", {"toy": TOY})
    path = tmp_path / "two.yaml"
    path.write_text(RECIPE + """
  - name: second
    objective: {type: toy_regression}
    trains: []
    frozen: [net]
    max_steps: 1
""")
    assert main([str(path), "train", "--stage", "second", "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    assert f"train --stage fit" in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_total_batch(toy, tmp_path):
    """torchrun with 2 CPU processes (gloo): ranks end identical, and with the randomness
    switched off they end where one process with the same total batch ends."""
    site = str(next(p for p in sys.path if p.endswith("site") and "pytest" in p))
    script = tmp_path / "run_two.py"
    script.write_text(textwrap.dedent(f'''
        import os, sys, torch
        sys.path.insert(0, {site!r})
        from tta_core.discovery import load_plugins
        from tta_core.recipe import check, load_recipe
        from tta_core.training.engine import Trainer
        from tta_core.training.stage import parse_stage
        registry = load_plugins().registry
        recipe = check(load_recipe({str(toy)!r}, ["components.net.dropout=0.0", "train.fit.objective.noise=0.0"]),
                       registry)
        trainer = Trainer(recipe, registry, parse_stage(recipe.get("train")[0]), sys.argv[1], stage_order=["fit"],
                          device="cpu", progress=False)
        trainer.run_stage()
        rank = int(os.environ.get("RANK", 0))
        torch.save(trainer.last_components["net"].state_dict(), os.path.join(sys.argv[1], f"rank{{rank}}.pt"))
    '''))
    env = {**os.environ, "PYTHONPATH": site, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    out = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()), str(script),
                          str(tmp_path / "two")], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], capture_output=True, text=True,
                         timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    rank0 = torch.load(tmp_path / "two/rank0.pt")
    rank1 = torch.load(tmp_path / "two/rank1.pt")
    single = torch.load(tmp_path / "one/rank0.pt")
    saved = final(tmp_path / "two")[1]
    for key in single:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(saved[key], rank0[key]), key
        assert torch.allclose(rank0[key], single[key], atol=1e-5), key
    # only rank 0 wrote logs: one metrics line per step
    assert len(losses(tmp_path / "two")) == 8

    # the CLI under torchrun runs the same stage
    cli = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "tta_core.cli",
                          str(toy), "train", "--run-dir", str(tmp_path / "cli"), "--device", "cpu",
                          "--set", "components.net.dropout=0.0", "--set", "train.fit.objective.noise=0.0"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert cli.stdout.count("stage 'fit': step 8") == 2  # both ranks ran it
    via_cli = final(tmp_path / "cli")[1]
    assert all(torch.equal(via_cli[k], saved[k]) for k in saved)


def test_stages_with_different_precisions_run_in_one_invocation(toy, tmp_path):
    text = toy.read_text()
    second = text[text.index("  - name: fit"):].replace("name: fit", "name: again").replace("    max_steps: 8",
                                                                                           "    max_steps: 2")
    toy.write_text(text.replace("    max_steps: 8", "    max_steps: 2\n    precision: fp32")
                   + second.replace("    log_every: 1", "    log_every: 1\n    precision: bf16"))
    assert train(toy, tmp_path / "run") == 0
    assert latest_checkpoint(tmp_path / "run/again/checkpoints").step == 2


@pytest.mark.parametrize("native", [False, True])
def test_precision_auto_is_bf16_only_where_the_device_computes_it_natively(toy, tmp_path, monkeypatch, caplog, native):
    import tta_core.precision as precision

    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    seen = []
    real = Trainer._accelerator

    def spy(self):
        acc = real(self)
        seen.append(acc.mixed_precision)
        return acc

    monkeypatch.setattr(Trainer, "_accelerator", spy)
    with caplog.at_level(logging.INFO, logger="tta"):
        assert train(toy, tmp_path / "run", "--precision", "auto", "--max-steps", "1") == 0
    assert seen == ["bf16" if native else "no"]
    assert f"precision auto -> {'bf16' if native else 'fp32'}" in caplog.text


def test_bf16_on_a_cpu_without_native_bf16_warns_that_it_is_emulated(monkeypatch, caplog):
    import tta_core.precision as precision

    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    with caplog.at_level(logging.WARNING, logger="tta"):
        assert precision.resolve_precision("bf16", "cpu") == "bf16"  # the user's choice stands
    assert "emulated" in caplog.text
    with pytest.raises(UsageError, match="auto, fp32, bf16, fp16"):
        precision.resolve_precision("half", "cpu")


def test_training_off_a_terminal_reports_progress_as_plain_lines(toy, tmp_path, capsys):
    assert main([str(toy), "train", "--run-dir", str(tmp_path / "run"), "--max-steps", "3"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train fit")]
    assert lines[0] == "train fit: 0/3 steps (0%)"
    assert lines[-1].startswith("train fit: 3/3 steps (100%)") and "done in" in lines[-1] and "main " in lines[-1]
    assert not any("\r" in line for line in lines)
    capsys.readouterr()
    assert main([str(toy), "train", "--run-dir", str(tmp_path / "quiet"), "--max-steps", "3", "--no-progress"]) == 0
    assert "train fit" not in capsys.readouterr().err


def test_a_batch_estimated_beyond_free_memory_is_refused_before_training(toy, tmp_path, capsys, monkeypatch):
    import tta_core.memory

    monkeypatch.setattr(tta_core.memory, "available_bytes", lambda device: 1000)  # 1 kB free
    run = tmp_path / "run"
    assert main([str(toy), "train", "--run-dir", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "stage 'fit': a training step with batch_size 4 needs about" in err and "cpu memory has 1.0 kB free" in err
    assert "--set train.fit.batch_size=2" in err and "--skip-memory-check" in err
    assert not (run / "fit/checkpoints").exists()
    assert main([str(toy), "train", "--run-dir", str(run), "--no-progress", "--max-steps", "1",
                 "--skip-memory-check"]) == 0
    monkeypatch.undo()
    assert main([str(toy), "train", "--run-dir", str(tmp_path / "fits"), "--no-progress", "--max-steps", "1"]) == 0
