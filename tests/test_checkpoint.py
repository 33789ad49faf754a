import os
import pickle

import pytest
import torch

from tta_core import checkpoint as ckpt
from tta_core.errors import CheckpointError


def model_state(seed):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}


def save(root, step, seed):
    return ckpt.save_checkpoint(
        root, step,
        weights={"model": model_state(seed), "ema": model_state(seed + 100)},
        state={"epoch": 1, "loss": 0.5},
        tensors={"optimizer": {"exp_avg": torch.ones(3) * seed}, "rng": torch.get_rng_state()},
    )


def test_round_trip(tmp_path):
    save(tmp_path, 10, seed=1)
    c = ckpt.latest_checkpoint(tmp_path)
    assert c.step == 10 and c.state["loss"] == 0.5 and c.weight_names() == ["ema", "model"]
    assert torch.equal(c.weights("model")["w"], model_state(1)["w"])
    assert torch.equal(c.tensors()["optimizer"]["exp_avg"], torch.ones(3))
    assert (tmp_path / "latest").read_text().strip() == "step-00000010"


def test_shared_and_non_contiguous_tensors_are_saved(tmp_path):
    w = torch.randn(4, 4)
    ckpt.save_weights(tmp_path / "m.safetensors", {"a": w, "tied": w, "t": w.t(), "view": w[1]})
    loaded = ckpt.load_weights(tmp_path / "m.safetensors")
    assert torch.equal(loaded["tied"], w) and torch.equal(loaded["t"], w.t()) and torch.equal(loaded["view"], w[1])


def test_interrupted_write_keeps_the_previous_checkpoint_selected(tmp_path, monkeypatch):
    save(tmp_path, 10, seed=1)
    real = ckpt.save_weights
    calls = []

    def crash_on_second(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, *a, **k)

    monkeypatch.setattr(ckpt, "save_weights", crash_on_second)
    with pytest.raises(OSError, match="No space left"):
        save(tmp_path, 20, seed=2)
    c = ckpt.latest_checkpoint(tmp_path)
    assert c.step == 10
    assert torch.equal(c.weights("model")["w"], model_state(1)["w"])
    assert not (tmp_path / "step-00000020").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_a_half_written_folder_from_a_killed_process_is_never_selected(tmp_path):
    save(tmp_path, 10, seed=1)
    # what a SIGKILL during a write leaves: a temporary folder with part of the files
    tmp = tmp_path / ".tmp-step-00000020-999"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"\x00" * 10)
    # and a marker that points nowhere, and a step folder without its state.json
    (tmp_path / "step-00000030").mkdir()
    assert ckpt.latest_checkpoint(tmp_path).step == 10
    (tmp_path / "latest").write_text("step-00000040\n")
    assert ckpt.latest_checkpoint(tmp_path).step == 10
    ckpt.clean_temporaries(tmp_path)
    assert not tmp.exists()


def test_a_crash_before_the_marker_is_updated_keeps_the_old_selection(tmp_path, monkeypatch):
    save(tmp_path, 10, seed=1)
    real = ckpt.atomic_write

    def fail_marker(path, data):
        if os.path.basename(path) == "latest":
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(ckpt, "atomic_write", fail_marker)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 20, seed=2)
    assert (tmp_path / "latest").read_text().strip() == "step-00000010"
    assert ckpt.latest_checkpoint(tmp_path).step == 10


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.ones(2), "payload": Evil(str(marker))}, path)
    with pytest.raises(CheckpointError) as err:
        ckpt.torch_load(path)
    assert "refusing to load" in str(err.value) and "arbitrary code" in str(err.value)
    assert not marker.exists()
    # the same through a checkpoint folder's state.pt
    save(tmp_path / "run", 1, seed=1)
    state_pt = tmp_path / "run" / "step-00000001" / "state.pt"
    with open(state_pt, "wb") as f:
        pickle.dump({"x": Evil(str(marker))}, f)
    with pytest.raises(CheckpointError):
        ckpt.latest_checkpoint(tmp_path / "run").tensors()
    assert not marker.exists()


def test_missing_weights_is_a_clear_error(tmp_path):
    save(tmp_path, 1, seed=1)
    with pytest.raises(CheckpointError, match="weights not found"):
        ckpt.latest_checkpoint(tmp_path).weights("vae")


def test_a_network_built_empty_takes_the_weights_it_is_given_and_nothing_else():
    import torch

    from tta_core.checkpoint import empty_parameters, load_state
    from tta_core.errors import CheckpointError

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(2, 4, 3)
            self.norm = torch.nn.BatchNorm1d(4)  # running statistics: buffers
            self.register_buffer("window", torch.hann_window(8), persistent=False)

    torch.manual_seed(0)
    trained = Net()
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    with empty_parameters():
        net = Net()
    assert all(p.is_meta for p in net.parameters())  # no memory, no initialisation
    assert not any(b.is_meta for b in net.buffers()) and torch.equal(net.window, torch.hann_window(8))
    given = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}  # in another dtype
    load_state(net, given, "net.safetensors")
    assert not given  # moved out of the dict, one tensor at a time
    for k, v in net.state_dict().items():
        assert v.dtype == state[k].dtype and torch.equal(v, state[k].half().to(v.dtype) if v.is_floating_point() else state[k])

    with empty_parameters():
        partial = Net()
    short = {k: v for k, v in state.items() if k != "conv.bias"}
    with pytest.raises(CheckpointError, match="missing: conv.bias"):
        load_state(partial, short, "net.safetensors")
    # outside the block, modules are built as usual
    assert not any(p.is_meta for p in Net().parameters())


def test_weights_files_are_read_by_safetensors_with_their_large_tensors_on_aligned_offsets(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = {"conv.weight": torch.randn(16, 8, 3), "conv.bias": torch.randn(5), "steps": torch.arange(3),
             "half": torch.randn(7).half(), "bf": torch.randn(32, 2).bfloat16(), "flag": torch.tensor([True]),
             "none": torch.zeros(0), "big": torch.randn(64, 64)}
    path = tmp_path / "w.safetensors"
    ckpt.save_weights(path, state, {"kind": "unet"})
    read = load_file(str(path))  # the library's own reader
    assert set(read) == set(state) and all(torch.equal(read[k], v) and read[k].dtype == v.dtype for k, v in state.items())
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"kind": "unet"}
    mapped = ckpt.load_weights(path)
    for name, t in state.items():
        if t.numel() and t.numel() * t.element_size() % ckpt.ALIGNMENT == 0:
            assert mapped[name].data_ptr() % ckpt.ALIGNMENT == 0, name


def test_a_network_built_empty_takes_a_files_aligned_tensors_without_copying_and_never_writes_the_file(tmp_path):
    import hashlib

    from tta_core.checkpoint import empty_parameters, load_state, load_weights

    def make():
        return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 3),
                                   torch.nn.Linear(3, 5))

    torch.manual_seed(0)
    trained = make()
    path = tmp_path / "net.safetensors"
    ckpt.save_weights(path, trained.state_dict())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with empty_parameters():
        net = make()
    state = load_weights(path)
    at = {k: v.data_ptr() for k, v in state.items()}
    load_state(net, state, str(path))
    for k, v in trained.state_dict().items():
        assert torch.equal(net.state_dict()[k], v)
    # the weights whose size is a multiple of the alignment are the file's own tensors (nothing
    # allocated for them); the last layer's 60-byte weight follows odd-sized biases in the
    # file, off the boundary: it is copied into an aligned allocation
    assert net[0].weight.data_ptr() == at["0.weight"] and net[2].weight.data_ptr() == at["2.weight"]
    assert at["3.weight"] % ckpt.ALIGNMENT and net[3].weight.data_ptr() != at["3.weight"]
    assert all(p.data_ptr() % ckpt.ALIGNMENT == 0 for p in net.parameters())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # written in place: the process's own copy of the page
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert torch.equal(load_weights(path)["0.weight"], trained[0].weight.detach())
