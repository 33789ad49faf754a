"""``check_process``: the Process contract of :mod:`tta_core.interfaces`, on exact inputs."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..interfaces import Conditioning
from ._common import _check_finite, _fail, devices

#: Levels with alpha below this are left out of the inversion checks: an epsilon target is
#: turned into x0 by dividing by alpha, so near the pure-noise end float32 rounding of x_t
#: is amplified without bound (a flow or v target has no such level).
MIN_ALPHA = 0.02

_FIELDS = ("x_t", "t", "target", "alpha", "sigma", "noise")


class _ScaleNet(torch.nn.Module):
    """The smallest trainable network: linear in x with one learnable scale."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.scale * x


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def _close_to(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    scale = max(1.0, float(b.abs().max()))
    return a.shape == b.shape and torch.allclose(a.double().cpu(), b.double().cpu(), rtol=tol, atol=tol * scale)


def check_process(process: Any, shape: Sequence[int] = (4, 2, 8), steps: Sequence[int] = (1, 10, 50)) -> None:
    """The Process contract on data of ``shape`` [B, ...]:

    - ``schedule(n)`` for each ``n`` in ``steps``: float32 [n+1, 2] (alpha, sigma), finite, from
      most to least noisy: the signal-to-noise ratio alpha^2 / sigma^2 strictly increases along
      the rows (sigma may be 0 only at the last row, alpha 0 only at the first; neither negative).
    - ``net_time`` maps every row of those schedules to a finite time, and a training pair's
      levels to the time the pair gives the network (training and sampling feed the network
      the same time for the same level).
    - ``training_pair(x0, generator=g)``: x_t, target and noise shaped like x0; t, alpha, sigma
      shaped [B]; all finite; ``x_t == alpha * x0 + sigma * noise`` per item; equal for equal
      generator seeds, different for different ones.
    - ``to_x0(target, x_t, alpha, sigma) == x0``: the network target inverts exactly, checked on
      the levels with alpha >= ``MIN_ALPHA`` (see there).
    - ``denoiser(net, cond)`` calls ``net`` with ``net_time(alpha, sigma)``, and with a network
      that outputs the training target it returns x0 (whatever the process does to the
      network's input, preconditioning included).
    - ``loss(net, x0, cond, generator=g)``: a finite scalar, the same for the same seed, with a
      gradient to the network's parameters.
    - On every other device of :func:`devices`: pairs, times and the loss stay on it.
    """
    x0 = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.3
    for n in steps:
        _check_schedule(process, n)
    pair = _check_pair(process, x0)
    _check_times(process, pair, steps)
    _check_inversion(process, shape)
    _check_denoiser(process, shape, steps)
    _check_loss(process, x0)
    for device in devices()[1:]:
        _check_device(process, x0, device)


def _check_schedule(process: Any, n: int) -> None:
    sched = process.schedule(n)
    if not isinstance(sched, torch.Tensor) or tuple(sched.shape) != (n + 1, 2):
        _fail(process, f"schedule({n}) must be a [{n + 1}, 2] tensor of (alpha, sigma), "
                       f"got {tuple(getattr(sched, 'shape', ()))}")
    if sched.dtype != torch.float32:
        _fail(process, f"schedule({n}) must be float32, got {sched.dtype}")
    _check_finite(process, f"schedule({n})", sched)
    alpha, sigma = sched[:, 0].double(), sched[:, 1].double()
    if bool((sigma < 0).any()) or bool((alpha < -1e-6).any()):
        _fail(process, f"schedule({n}) has a negative alpha or sigma: {sched.tolist()}")
    alpha = alpha.clamp(min=0)
    if n > 0 and bool((sigma[:-1] == 0).any()):
        _fail(process, f"schedule({n}) reaches sigma 0 before its last row")
    if bool((alpha[1:] <= 1e-6).any()):
        _fail(process, f"schedule({n}) has alpha 0 after its first row")
    snr = alpha**2 / sigma**2  # inf where sigma is 0 (the last row at most)
    bad = [i for i in range(1, n + 1) if not snr[i] > snr[i - 1]]
    if bad:
        i = bad[0]
        _fail(process, f"schedule({n}) is not ordered from most to least noisy: row {i} "
                       f"{sched[i].tolist()} is not less noisy than row {i - 1} {sched[i - 1].tolist()} "
                       f"(alpha^2/sigma^2 must strictly increase)")


def _pair(process: Any, x0: torch.Tensor, seed: int, device: str = "cpu") -> Any:
    pair = process.training_pair(x0, generator=torch.Generator(device).manual_seed(seed))
    missing = [f for f in _FIELDS if not isinstance(getattr(pair, f, None), torch.Tensor)]
    if missing:
        _fail(process, f"training_pair's result lacks the tensors {', '.join(missing)}")
    return pair


def _check_pair(process: Any, x0: torch.Tensor) -> Any:
    pair = _pair(process, x0, 0)
    b = x0.shape[0]
    for name in ("x_t", "target", "noise"):
        if tuple(getattr(pair, name).shape) != tuple(x0.shape):
            _fail(process, f"training_pair's {name} has shape {tuple(getattr(pair, name).shape)}, "
                           f"x0 has {tuple(x0.shape)}")
    for name in ("t", "alpha", "sigma"):
        if tuple(getattr(pair, name).shape) != (b,):
            _fail(process, f"training_pair's {name} must be one value per item [{b}], "
                           f"got {tuple(getattr(pair, name).shape)}")
    for name in _FIELDS:
        _check_finite(process, f"training_pair's {name}", getattr(pair, name))
    expected = _bcast(pair.alpha, x0) * x0 + _bcast(pair.sigma, x0) * pair.noise
    if not _close_to(pair.x_t, expected, 1e-5):
        _fail(process, "training_pair's x_t is not alpha * x0 + sigma * noise with its own alpha, sigma and noise")
    again = _pair(process, x0, 0)
    for name in _FIELDS:
        if not torch.equal(getattr(pair, name), getattr(again, name)):
            _fail(process, f"two training pairs with the same generator seed differ in {name}")
    if torch.equal(pair.x_t, _pair(process, x0, 1).x_t):
        _fail(process, "training pairs with different generator seeds are equal: the generator is not used")
    return pair


def _check_times(process: Any, pair: Any, steps: Sequence[int]) -> None:
    for n in steps:
        sched = process.schedule(n)
        t = process.net_time(sched[:, 0], sched[:, 1])
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n + 1,):
            _fail(process, f"net_time of schedule({n})'s rows gives {tuple(getattr(t, 'shape', ()))}, "
                           f"expected one time per row ({n + 1},)")
        _check_finite(process, f"net_time of schedule({n})'s rows", t)
    t = process.net_time(pair.alpha, pair.sigma)
    if not _close_to(t, pair.t, 1e-4):
        _fail(process, f"the network sees t = {pair.t.tolist()} in training but net_time of the same levels "
                       f"gives {t.tolist()}: sampling would feed it other times")


def _check_inversion(process: Any, shape: Sequence[int]) -> None:
    # many items, so that the drawn levels cover the process's range
    x0 = torch.randn(64, *shape[1:], generator=torch.Generator().manual_seed(2)) * 0.5 + 0.3
    pair = _pair(process, x0, 3)
    keep = pair.alpha >= MIN_ALPHA
    if not bool(keep.any()):
        _fail(process, f"every one of 64 training levels has alpha < {MIN_ALPHA}: nothing to check to_x0 on")
    est = process.to_x0(pair.target, pair.x_t, pair.alpha, pair.sigma)
    if tuple(est.shape) != tuple(x0.shape):
        _fail(process, f"to_x0 gives shape {tuple(est.shape)} for x {tuple(x0.shape)}")
    if not _close_to(est[keep], x0[keep], 1e-4):
        worst = int(((est - x0).flatten(1).abs().amax(1) * keep).argmax())
        _fail(process, f"to_x0 of a training pair's exact target is not its x0 (worst at alpha "
                       f"{float(pair.alpha[worst]):.4g}, sigma {float(pair.sigma[worst]):.4g}: off by "
                       f"{float((est[worst] - x0[worst]).abs().max()):.3g})")


def _check_denoiser(process: Any, shape: Sequence[int], steps: Sequence[int]) -> None:
    b = shape[0]
    cond = Conditioning(pooled=torch.zeros(b, 1))
    seen: list[torch.Tensor] = []

    def recording(x: torch.Tensor, t: torch.Tensor, c: Conditioning) -> torch.Tensor:
        seen.append(t)
        return torch.zeros_like(x)

    denoise = process.denoiser(recording, cond)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
    for n in steps:
        for alpha, sigma in process.schedule(n)[:-1]:  # the rows a sampler denoises at
            a, s = alpha.expand(b), sigma.expand(b)
            seen.clear()
            out = denoise(x, a, s)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(shape):
                _fail(process, f"denoise gives {tuple(getattr(out, 'shape', ()))} for x {tuple(shape)}")
            if len(seen) != 1:
                _fail(process, f"denoise called the network {len(seen)} times for one estimate")
            if not _close_to(seen[0].reshape(-1), process.net_time(a, s).reshape(-1), 1e-4):
                _fail(process, f"denoise at level ({float(alpha):.4g}, {float(sigma):.4g}) passes the network "
                               f"t = {seen[0].tolist()}, net_time gives {process.net_time(a, s).tolist()}")
    x0 = torch.randn(*shape, generator=torch.Generator().manual_seed(5)) * 0.5 + 0.3
    pair = _pair(process, x0, 6)
    oracle = process.denoiser(lambda x, t, c: pair.target, cond)
    keep = pair.alpha >= MIN_ALPHA
    est = oracle(pair.x_t, pair.alpha, pair.sigma)
    if bool(keep.any()) and not _close_to(est[keep], x0[keep], 1e-4):
        _fail(process, "denoise with a network that outputs the training target does not give x0: "
                       "training and sampling disagree on what the network predicts")


def _check_loss(process: Any, x0: torch.Tensor) -> None:
    net = _ScaleNet()
    cond = Conditioning(pooled=torch.zeros(x0.shape[0], 1))
    loss = process.loss(net, x0, cond, generator=torch.Generator().manual_seed(7))
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        _fail(process, f"loss must be a scalar tensor, got {tuple(getattr(loss, 'shape', ())) or type(loss).__name__}")
    _check_finite(process, "loss", loss)
    if not loss.requires_grad:
        _fail(process, "loss has no gradient to the network's parameters")
    loss.backward()
    if net.scale.grad is None or not torch.isfinite(net.scale.grad) or float(net.scale.grad) == 0:
        _fail(process, f"loss gives the network's parameter the gradient {net.scale.grad}")
    again = process.loss(net, x0, cond, generator=torch.Generator().manual_seed(7))
    if not torch.equal(loss.detach(), again.detach()):
        _fail(process, "loss differs between two calls with the same generator seed")


def _check_device(process: Any, x0: torch.Tensor, device: str) -> None:
    x = x0.to(device)
    pair = _pair(process, x, 0, device)
    for name in _FIELDS:
        if getattr(pair, name).device.type != torch.device(device).type:
            _fail(process, f"training_pair on {device} gives {name} on {getattr(pair, name).device}")
    expected = _bcast(pair.alpha, x) * x + _bcast(pair.sigma, x) * pair.noise
    if not _close_to(pair.x_t, expected, 1e-5):
        _fail(process, f"on {device}, x_t is not alpha * x0 + sigma * noise")
    t = process.net_time(pair.alpha, pair.sigma)
    if t.device.type != torch.device(device).type:
        _fail(process, f"net_time of levels on {device} gives times on {t.device}")
    net = _ScaleNet().to(device)
    loss = process.loss(net, x, Conditioning(pooled=torch.zeros(x.shape[0], 1, device=device)),
                        generator=torch.Generator(device).manual_seed(7))
    _check_finite(process, f"loss on {device}", loss)
