"""Memory estimates before a run: the estimate against the peak a real run measures, how it
grows with the input, what it costs, and what the machine says it can give."""

import resource

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from tta_core import memory
from tta_core.interfaces import Conditioning
from tta_core.memory import Spec, available_bytes, format_bytes, peak_bytes
from tta_core.plugin import build_component


def real_peak(fn, *args) -> int:
    """The most bytes the CPU allocator held at once while ``fn`` ran, above what it held
    before: allocation and free events of torch's profiler, summed in time order."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(*args)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for event in events:
        held += event.nbytes()
        peak = max(peak, held)
    return peak


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB


def within_twice(estimate, real):
    return estimate is not None and real / 2 <= estimate <= real * 2


class Attention(torch.nn.Module):
    """Self-attention written out, so its [L, L] weights are a tensor of their own."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.qkv = torch.nn.Linear(width, 3 * width)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1) @ v


def conv_stack():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv1d(8, 32, 3, padding=1), torch.nn.SiLU(),
                               torch.nn.Conv1d(32, 32, 3, padding=1), torch.nn.SiLU(),
                               torch.nn.Conv1d(32, 8, 3, padding=1))


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return build_component("denoiser", {
        "type": "unet2d", "in_channels": 4, "channels": [16, 32], "layers_per_block": 1, "cross_attention_dim": 8,
        "norm_groups": 8, "head_dim": 8, "attention_levels": [False, True]})


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return build_component("autoencoder", {
        "type": "kl_vae", "latent_channels": 4, "channels": [8, 16], "layers_per_block": 1, "norm_groups": 4,
        "mid_attention": False})


COND = Conditioning(tokens=torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(0)),
                    mask=torch.ones(1, 5, dtype=torch.bool))


def test_a_linear_stack_is_estimated_exactly():
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(4)])
    x = torch.randn(1024, 256)
    act = 1024 * 256 * 4  # one layer's output, float32
    with torch.no_grad():
        # a layer's input and output are alive at once; x was there before and the weights do not count
        assert peak_bytes(net, x) == 2 * act == real_peak(net, x)
        # an input to be made counts: it has to exist while the network runs
        assert peak_bytes(net, Spec((1024, 256))) == 3 * act
        assert peak_bytes(lambda batch: net(batch["x"][0]), {"x": [Spec((1024, 256))]}) == 3 * act


def test_a_training_step_estimate_is_near_the_real_one_and_leaves_the_gradients_alone():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))
    x = torch.randn(2048, 256)

    def step(batch):
        net(batch).square().mean().backward()

    estimate = peak_bytes(step, x)
    assert all(p.grad is None for p in net.parameters())  # no fake gradient left on the real model
    real = real_peak(step, x)
    assert within_twice(estimate, real), (estimate, real)
    kept = [p.grad.clone() for p in net.parameters()]
    assert peak_bytes(step, x) is not None
    assert all(type(p.grad) is torch.Tensor and torch.equal(p.grad, g) for p, g in zip(net.parameters(), kept))


def test_estimates_grow_linearly_for_convolutions_and_quadratically_for_attention():
    conv, attention = conv_stack(), Attention()
    with torch.no_grad():
        for net, shape, growth in ((conv, lambda n: (4, 8, n), 2), (attention, lambda n: (1, n, 16), 4)):
            small, large = (peak_bytes(net, torch.randn(shape(n))) for n in (512, 1024))
            real_small, real_large = (real_peak(net, torch.randn(shape(n))) for n in (512, 1024))
            assert within_twice(small, real_small) and within_twice(large, real_large), (small, real_small)
            assert large / small == pytest.approx(growth, rel=0.1)
            assert real_large / real_small == pytest.approx(growth, rel=0.1)


@pytest.mark.slow
def test_unet2d_denoiser_estimate_is_near_the_real_peak(unet):
    t = torch.full((1,), 500.0)
    estimates, reals = [], []
    with torch.no_grad():
        for frames in (32, 64):
            x = torch.randn(1, 4, frames, 16)
            estimates.append(peak_bytes(unet, x, t, COND))
            reals.append(real_peak(unet, x, t, COND))
            assert within_twice(estimates[-1], reals[-1]), (frames, estimates[-1], reals[-1])
    # sampling takes the fused attention kernel, which holds no positions x positions matrix:
    # twice the frames, twice the activations (the real peak also holds what does not grow)
    assert estimates[1] / estimates[0] == pytest.approx(2, rel=0.1) and 1.2 < reals[1] / reals[0] < 2.2

    def train_step(x):
        unet(x, t, COND).square().mean().backward()

    x = torch.randn(1, 4, 32, 16)
    estimate = peak_bytes(train_step, x)
    unet.zero_grad(set_to_none=True)
    real = real_peak(train_step, x)
    unet.zero_grad(set_to_none=True)
    assert within_twice(estimate, real), (estimate, real)


def test_kl_vae_decode_estimate_is_near_the_real_peak_and_linear(vae):
    estimates = []
    with torch.no_grad():
        for frames in (128, 256):
            z = torch.randn(1, 4, frames, 16)
            estimates.append(peak_bytes(vae.decode, z))
            real = real_peak(vae.decode, z)
            assert within_twice(estimates[-1], real), (frames, estimates[-1], real)
    assert estimates[1] / estimates[0] == pytest.approx(2, rel=0.1)


def test_a_thousand_times_longer_input_is_estimated_at_once_without_allocating_it():
    net = conv_stack()
    with torch.no_grad():
        small = peak_bytes(net, Spec((4, 8, 1000)))
        rss, max_rss = rss_bytes(), max_rss_bytes()
        large = peak_bytes(net, Spec((4, 8, 1_000_000)))
    assert large == pytest.approx(1000 * small, rel=0.01)
    assert large > 1e9  # had it been allocated, the process would have grown by a GB
    assert rss_bytes() - rss < 100e6 and max_rss_bytes() - max_rss < 100e6


def test_a_unet_at_100_000_frames_is_estimated_without_allocating_it(unet):
    t = Spec((1,))
    with torch.no_grad():
        small = peak_bytes(unet, Spec((1, 4, 64, 16)), t, COND)
        rss, max_rss = rss_bytes(), max_rss_bytes()
        huge = peak_bytes(unet, Spec((1, 4, 100_000, 16)), t, COND)
    assert huge > 1000 * small and huge > 1e9  # gigabytes of activations over 100 000 frames
    assert rss_bytes() - rss < 100e6 and max_rss_bytes() - max_rss < 100e6


@pytest.mark.parametrize("fn", [
    lambda x: torch.zeros(int(x.sum().item())),  # a size read from the data
    lambda x: x[x.nonzero(as_tuple=True)],
    lambda x: x * 2 if x.mean() > 0 else x,
    lambda x: x.numpy(),
], ids=["item", "nonzero", "branch", "numpy"])
def test_an_estimate_that_needs_the_data_is_unavailable_not_an_error(fn):
    assert peak_bytes(fn, torch.ones(10)) is None
    assert peak_bytes(fn, Spec((10,))) is None


def test_an_estimate_leaves_the_random_state_alone():
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    state, generator_state = torch.get_rng_state(), generator.get_state()

    def noisy(x):
        return torch.nn.functional.dropout(x + torch.randn(x.shape, generator=generator), 0.5) * torch.randn_like(x)

    assert peak_bytes(noisy, Spec((1000,))) > 0
    # the sampling that follows an estimate draws the same noise for the same seed
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(generator.get_state(), generator_state)


def test_available_bytes_on_this_machine():
    assert isinstance(available_bytes("cpu"), int) and available_bytes("cpu") > 0
    assert available_bytes("meta") is None
    if not torch.cuda.is_available():
        assert available_bytes("cuda") is None


@pytest.fixture
def fake_machine(tmp_path, monkeypatch):
    """A /proc and a /sys/fs/cgroup of files in tmp_path: 8 GB available and no cgroup limit
    yet; the process sits in /batch/job (cgroup v1 memory) and /job.slice (cgroup v2)."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    8000000 kB\n")
    (tmp_path / "self_cgroup").write_text("5:cpu,cpuacct:/elsewhere\n4:memory:/batch/job\n0::/job.slice\n")
    monkeypatch.setattr(memory, "MEMINFO", meminfo)
    monkeypatch.setattr(memory, "SELF_CGROUP", tmp_path / "self_cgroup")
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path / "cgroup")
    monkeypatch.setattr(memory, "CGROUP_V1_ROOT", tmp_path / "cgroup_v1")
    return tmp_path


def limit(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text + "\n")


def test_available_bytes_is_capped_by_a_cgroup_v2_limit(fake_machine):
    assert available_bytes("cpu") == 8_000_000 * 1024  # no cgroup files: MemAvailable
    job = fake_machine / "cgroup" / "job.slice"
    limit(job, memory_max="2000000000", memory_current="1500000000",
          memory_stat="anon 1000000000\nfile 500000000\ninactive_file 250000000")
    # the limit less what is held; cache the kernel can drop is not held
    assert available_bytes("cpu") == 2_000_000_000 - (1_500_000_000 - 250_000_000)
    limit(job, memory_max="max")
    assert available_bytes("cpu") == 8_000_000 * 1024
    limit(fake_machine / "cgroup", memory_max="1000000000", memory_current="900000000")  # a parent's limit holds too
    assert available_bytes("cpu") == 100_000_000


def test_available_bytes_is_capped_by_a_cgroup_v1_limit(fake_machine):
    job = fake_machine / "cgroup_v1" / "batch" / "job"
    limit(job, memory_limit_in_bytes="1000000000", memory_usage_in_bytes="400000000")
    assert available_bytes("cpu") == 600_000_000
    limit(job, memory_limit_in_bytes="9223372036854771712")  # v1's "no limit"
    assert available_bytes("cpu") == 8_000_000 * 1024
    (fake_machine / "meminfo").unlink()
    assert available_bytes("cpu") is None


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (512, "512 B"), (1000, "1.0 kB"), (512_000_000, "512 MB"), (3_200_000_000, "3.2 GB"),
    (999_700_000, "1.0 GB"), (81_900_000_000_000, "82 TB"),
])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_measured_bytes_counts_a_real_run_as_the_estimate_counts_a_fake_one():
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(4)])
    x = torch.randn(1024, 256)
    with torch.no_grad():
        assert memory.measured_bytes(net, x) == peak_bytes(net, x) == 2 * 1024 * 256 * 4


class CachingProcess:
    """A component that fills a table cache on its first call, as processes and vocoders do."""

    def __init__(self):
        self.tables = {}
        self.weight = torch.nn.Linear(8, 8)

    def __call__(self, x):
        if x.device not in self.tables:
            self.tables[x.device] = torch.linspace(0, 1, 8, device=x.device)
        self.last_shape = x.shape
        return self.weight(x) * self.tables[x.device]


def test_an_estimate_inside_unchanged_leaves_no_fake_tensor_behind():
    part = CachingProcess()
    with torch.no_grad(), memory.unchanged(part):
        assert peak_bytes(part, Spec((4, 8))) > 0
    assert part.tables == {} and not hasattr(part, "last_shape")
    with torch.no_grad():
        out = part(torch.ones(4, 8))  # a real call after the estimate works on real tensors
    assert torch.isfinite(out).all() and out.sum().item() != 0
    # without it, the cache keeps a fake tensor and the real call fails on it
    spoiled = CachingProcess()
    with torch.no_grad():
        peak_bytes(spoiled, Spec((4, 8)))
        with pytest.raises(Exception):
            spoiled(torch.ones(4, 8)).sum().item()


def _train_step(part, reads_data=False):
    def step(x):
        out = part(x).square().mean()
        if reads_data and out.item() < 0:  # a branch on the data, as a dropout decision or a scale
            out = -out
        out.backward()
    return step


@pytest.mark.parametrize("reads_data", [False, True])
def test_step_peaks_counts_a_training_step_on_fake_tensors_or_runs_it_for_real_and_leaves_the_part_as_it_was(
        reads_data):
    torch.manual_seed(0)
    part = CachingProcess()
    step = _train_step(part, reads_data)
    rng = torch.get_rng_state()
    peaks, method = memory.step_peaks(step, lambda n: torch.randn(n * 64, 8), (1, 16), (1, 2), keep=(part,))
    assert method == ("real" if reads_data else "fake")
    assert sorted(peaks) == ([1, 2] if reads_data else [1, 16])
    per_item = (peaks[max(peaks)] - peaks[1]) / (max(peaks) - 1)
    assert per_item > 0  # the activations grow with the batch
    assert part.tables == {} and not hasattr(part, "last_shape")  # what the trial cached is gone
    assert part.weight.weight.grad is None and torch.equal(torch.get_rng_state(), rng)
    # the fake count and a real one agree on the same step
    real = {n: memory.measured_bytes(_train_step(CachingProcess()), torch.randn(n * 64, 8)) for n in (1, 16)}
    if not reads_data:
        assert peaks == real


def test_peak_at_reads_a_counted_size_and_draws_the_line_between_or_beyond_the_others():
    peaks = {1: 100, 4: 160}
    assert memory.peak_at(peaks, 4) == 160 and memory.peak_at(peaks, 2) == 120  # 20 per item
    assert memory.peak_at(peaks, 10) == 280 and memory.peak_at({1: 100}, 8) == 100
    assert memory.peak_at({1: 100, 2: 90}, 8) == 100  # a count that falls with the batch is taken as flat
