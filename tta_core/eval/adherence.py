"""Prompt adherence: does a generated clip sound like the label its prompt names?

A small acoustic classifier is fitted on *real* clips of a labelled dataset (the synthetic
training set; never on generated audio) and then labels generated clips. Its features are
hand-made from the recipe's log-mel, so it needs no weights:

- the mean and the spread over time of each mel band (timbre, pitch region, noisiness);
- the slope of the spectral centroid over time (rising vs falling sweeps) and its correlation
  with time, both weighted by each frame's power: a sweep that starts after a stretch of
  near-silence is measured where it sounds, not pulled down by the noise floor before it;
- the loudness envelope: its slope (decays), spread, and modulation spectrum (click trains);
- spectral flatness (noise vs tones).

The classifier is multinomial logistic regression (torch, full-batch L-BFGS) on standardised
features. Accuracy on held-out real clips is reported too: it is the ceiling the generated
clips are measured against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch


def features(mel: torch.Tensor) -> torch.Tensor:
    """log-mel [B, 1, T, F] -> features [B, D]."""
    x = mel[:, 0].float()  # [B, T, F]
    b, t, f = x.shape
    mean = x.mean(1)
    spread = x.std(1)
    power = torch.exp(x)
    bins = torch.arange(f, dtype=x.dtype, device=x.device)
    centroid = (power * bins).sum(-1) / power.sum(-1).clamp(min=1e-8)  # [B, T]
    time = torch.linspace(-1, 1, t, device=x.device)
    loud = torch.logsumexp(x, dim=-1)  # [B, T]
    w = torch.softmax(loud, dim=1)  # each frame's share of the clip's power
    dt = time - (w * time).sum(1, keepdim=True)
    dc = centroid - (w * centroid).sum(1, keepdim=True)
    cov = (w * dt * dc).sum(1, keepdim=True)
    var_t = (w * dt**2).sum(1, keepdim=True).clamp(min=1e-4)
    var_c = (w * dc**2).sum(1, keepdim=True).clamp(min=1e-4)
    slope, corr = cov / var_t, cov / (var_t * var_c).sqrt()
    loud_slope = ((loud - loud.mean(1, keepdim=True)) * time).mean(1, keepdim=True) / (time**2).mean()
    env = loud - loud.mean(1, keepdim=True)
    modulation = torch.fft.rfft(env, dim=1).abs()[:, 1:17] / t  # rhythms up to ~8 per clip-length
    flatness = (x.mean(-1) - torch.log(power.mean(-1).clamp(min=1e-8))).mean(1, keepdim=True)
    return torch.cat([mean, spread, slope / f, corr, loud_slope, env.std(1, keepdim=True), modulation, flatness], dim=1)


@dataclass
class AdherenceClassifier:
    labels: list[str]
    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    @classmethod
    def fit(cls, feats: torch.Tensor, labels: Sequence[str], l2: float = 1e-3, iters: int = 200) -> "AdherenceClassifier":
        names = sorted(set(labels))
        y = torch.tensor([names.index(l) for l in labels])
        mean, std = feats.mean(0), feats.std(0).clamp(min=1e-6)
        z = ((feats - mean) / std).double()
        w = torch.zeros(z.shape[1], len(names), dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(len(names), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, bias], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(z @ w + bias, y) + l2 * (w**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return cls(names, mean, std, w.detach().float(), bias.detach().float())

    def predict(self, feats: torch.Tensor) -> list[str]:
        logits = ((feats - self.mean) / self.std) @ self.weight + self.bias
        return [self.labels[i] for i in logits.argmax(1).tolist()]


@dataclass
class AdherenceReport:
    per_label: dict[str, float]
    counts: dict[str, int]
    overall: float
    reference_accuracy: float
    n: int
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"{'label':<16} {'accuracy':>8}  n"]
        for label in sorted(self.per_label):
            out.append(f"{label:<16} {self.per_label[label]:>8.2f}  {self.counts[label]}")
        out.append(f"{'overall':<16} {self.overall:>8.2f}  {self.n}   (chance {1 / max(1, len(self.per_label)):.3f}; "
                   f"the classifier scores {self.reference_accuracy:.2f} on held-out real clips)")
        return out

    def to_dict(self) -> dict:
        return {"per_label": self.per_label, "counts": self.counts, "overall": self.overall,
                "reference_accuracy": self.reference_accuracy, "n": self.n, "confusion": self.confusion}


def score(classifier: AdherenceClassifier, feats: torch.Tensor, labels: Sequence[str],
          reference_accuracy: float) -> AdherenceReport:
    predicted = classifier.predict(feats)
    per, counts, confusion = {}, {}, {}
    for label in sorted(set(labels)):
        idx = [i for i, l in enumerate(labels) if l == label]
        hits = sum(predicted[i] == label for i in idx)
        per[label], counts[label] = hits / len(idx), len(idx)
        confusion[label] = {p: sum(predicted[i] == p for i in idx) for p in sorted(set(predicted[i] for i in idx))}
    overall = sum(p == l for p, l in zip(predicted, labels)) / max(1, len(labels))
    return AdherenceReport(per, counts, overall, reference_accuracy, len(labels), confusion)


def split_holdout(n: int, fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, int(math.floor(n * fraction)))
    return order[cut:], order[:cut]
