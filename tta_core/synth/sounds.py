"""Simple kinds of sound, each clearly its own on a 64-band log-mel at 16 kHz: the eight of the
default set (:data:`LABELS`) and more a set may choose (:data:`EXTRA_LABELS`: a two-tone siren,
water drips, gusts of wind), for fine-tuning on sounds a model has not heard.

What tells them apart on a mel (a classifier checks prompt adherence on these later): where
the energy sits (hum < 1 kHz, buzz harmonics up to 7.5 kHz, beep a single line at 1.5-3 kHz,
noise everywhere), how it moves (chirps sweep up or down), and how it evolves in time
(ticking is a column per click, a pluck decays). Pitch, level, timing and a faint noise floor
are random per clip, so a model must learn the kind, not one clip.
"""

from __future__ import annotations

import numpy as np

from .dsp import fades, finish, oscillator, sweep

CAPTIONS: dict[str, tuple[str, ...]] = {
    "low_hum": ("a low steady hum", "a deep electrical hum", "the constant drone of a low hum",
                "a low-pitched humming sound", "a quiet machine hum"),
    "high_beep": ("a high-pitched beep", "short high beeps", "an electronic beeping sound",
                  "a series of high beeps", "a shrill beeping tone"),
    "rising_chirp": ("a rising chirp", "a tone sweeping upward in pitch", "an upward frequency sweep",
                     "a whistle that rises in pitch"),
    "falling_chirp": ("a falling chirp", "a tone sweeping downward in pitch", "a downward frequency sweep",
                      "a whistle that falls in pitch"),
    "noise": ("white noise", "a steady hiss", "broadband static", "the hiss of radio static"),
    "ticking": ("a clock ticking", "steady ticking clicks", "a regular series of clicks", "rhythmic ticking"),
    "pluck": ("a plucked string", "a single guitar-like pluck", "a string being plucked and ringing out",
              "a decaying plucked note"),
    "buzz": ("a harsh electric buzz", "a low buzzing sound", "a raspy buzzing tone", "the buzz of a sawtooth wave"),
}
LABELS = tuple(CAPTIONS)  # the default set

CAPTIONS.update({
    "siren": ("a two-tone siren", "an emergency siren alternating between two notes",
              "a siren going high and low", "the hi-lo wail of a two-tone siren"),
    "drips": ("water dripping", "drops of water falling into a puddle", "a slow drip of water",
              "water drips plinking one by one"),
    "wail": ("a wailing siren", "a siren sweeping up and down", "the rising and falling wail of a siren",
             "an ambulance siren wailing"),
    "bounce": ("a bouncing ball", "a ball bouncing to a stop", "a ping pong ball bouncing",
               "quickening bounces of a ball"),
    "wind": ("wind blowing", "gusts of wind", "the whoosh of wind rising and falling", "a howling wind"),
})
EXTRA_LABELS = tuple(k for k in CAPTIONS if k not in LABELS)
ALL_LABELS = LABELS + EXTRA_LABELS


def low_hum(rng, n, sr):
    f0 = rng.uniform(100, 250)
    amps = np.array([1.0, 0.5, 0.25, 0.12]) * rng.uniform(0.7, 1.3, 4)
    wave = sum(a * oscillator(f0 * (k + 1), n, sr, rng.uniform(0, 2 * np.pi)) for k, a in enumerate(amps))
    wobble = 1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * np.arange(n) / sr)  # mains-hum waver
    return wave * wobble * fades(n, sr, 0.05, 0.05), {"pitch_hz": f0}


def high_beep(rng, n, sr):
    f = rng.uniform(1500, 3000)
    count = int(rng.integers(2, 6))
    length = rng.uniform(0.08, 0.25)
    env = np.zeros(n)
    slot = n / count
    for i in range(count):
        start = int(i * slot + rng.uniform(0, max(slot - length * sr, 1)))
        m = min(int(length * sr), n - start)
        env[start:start + m] = fades(m, sr, 0.005, 0.005)
    return (oscillator(f, n, sr) + 0.1 * oscillator(2 * f, n, sr)) * env, {"pitch_hz": f, "beeps": count}


def _chirp(rng, n, sr, up):
    lo, hi = rng.uniform(200, 600), rng.uniform(2500, 6000)
    m = int(n * rng.uniform(0.6, 0.95))
    start = int(rng.integers(0, n - m + 1))
    f = sweep(lo, hi, m, sr) if up else sweep(hi, lo, m, sr)
    wave = np.zeros(n)
    wave[start:start + m] = oscillator(f, m, sr) * fades(m, sr, 0.02, 0.02)
    return wave, {"start_hz": float(f[0]), "end_hz": float(f[-1])}


def rising_chirp(rng, n, sr):
    return _chirp(rng, n, sr, up=True)


def falling_chirp(rng, n, sr):
    return _chirp(rng, n, sr, up=False)


def noise(rng, n, sr):
    tilt = rng.uniform(-0.5, 0.5)  # a gentle spectral tilt, so not every hiss is the same
    x = rng.standard_normal(n + 1)
    return (x[1:] + tilt * x[:-1]) * fades(n, sr, 0.02, 0.02), {"tilt": tilt}


def ticking(rng, n, sr):
    rate = rng.uniform(2, 8)
    ring = rng.uniform(2000, 4000)
    click_n = int(0.006 * sr)
    t = np.arange(click_n) / sr
    click = (rng.standard_normal(click_n) * 0.5 + np.sin(2 * np.pi * ring * t)) * np.exp(-t / 0.0015)
    wave = np.zeros(n)
    first = rng.uniform(0, 1 / rate)
    for k in range(int(n / sr * rate) + 1):
        start = int((first + k / rate) * sr)
        if start + click_n > n:
            break
        wave[start:start + click_n] += click
    return wave, {"rate_hz": rate}


def pluck(rng, n, sr):
    """Karplus-Strong: a noise burst circulating in a delay line of one period, averaged."""
    f0 = rng.uniform(110, 440)
    period = int(round(sr / f0))
    decay = rng.uniform(0.994, 0.999)
    start = int(rng.uniform(0, 0.15) * n)
    m = n - start
    y = np.zeros(m)
    y[:period] = rng.uniform(-1, 1, period)
    y[period] = decay * y[0]
    for s in range(period + 1, m, period):  # each block depends only on the previous period
        e = min(s + period, m)
        y[s:e] = decay * 0.5 * (y[s - period:e - period] + y[s - period - 1:e - period - 1])
    wave = np.zeros(n)
    wave[start:] = y
    return wave * fades(n, sr, 0.0, 0.02), {"pitch_hz": sr / period}


def buzz(rng, n, sr):
    f0 = rng.uniform(80, 300)
    square = bool(rng.integers(2))
    ks = range(1, int(min(7500, sr / 2 - 100) / f0) + 1, 2 if square else 1)  # band-limited
    wave = sum(oscillator(f0 * k, n, sr) / k for k in ks)
    return wave * fades(n, sr, 0.03, 0.03), {"pitch_hz": f0, "shape": "square" if square else "sawtooth"}


def siren(rng, n, sr):
    """Two steady tones (a fourth to a fifth apart, 500-1100 Hz) taking turns every 0.25-0.6 s,
    with two harmonics: a pair of alternating lines in the mid band, never silent."""
    low = rng.uniform(500, 800)
    high = low * rng.uniform(1.33, 1.5)
    half = int(rng.uniform(0.25, 0.6) * sr)
    which = ((np.arange(n) + int(rng.integers(0, 2 * half))) // half) % 2
    freq = np.where(which == 0, low, high)
    wave = sum(oscillator(k * freq, n, sr) / k ** 1.5 for k in (1, 2, 3))
    return wave * fades(n, sr, 0.03, 0.03), {"low_hz": low, "high_hz": high, "period_s": 2 * half / sr}


def drips(rng, n, sr):
    """Water drops: short tones gliding upward (a bubble's resonance as it closes, 600 Hz to
    2.5 kHz in 20-60 ms) with a fast decay, at irregular times: sparse rising blips."""
    wave = np.zeros(n)
    count = max(2, int(n / sr * rng.uniform(2.5, 5)))
    for start in np.sort(rng.uniform(0, max(n - int(0.08 * sr), 1), count)).astype(int):
        m = min(int(rng.uniform(0.02, 0.06) * sr), n - start)
        f0 = rng.uniform(600, 1200)
        glide = sweep(f0, f0 * rng.uniform(1.8, 2.5), m, sr)
        t = np.arange(m) / sr
        env = np.exp(-t / (m / sr / 4)) * fades(m, sr, 0.002, 0.0)  # a soft onset: a blip, not a click
        wave[start:start + m] += oscillator(glide, m, sr) * env * rng.uniform(0.5, 1.0)
    return wave, {"drops": count}


def wail(rng, n, sr):
    """A wailing siren: one tone (with two harmonics) sweeping smoothly up and down between
    about 600 Hz and 1.6 kHz, 0.8-1.6 s a cycle: a slow pitch wave, never silent."""
    lo, hi = rng.uniform(500, 750), rng.uniform(1300, 1700)
    period = rng.uniform(0.8, 1.6)
    t = np.arange(n) / sr
    freq = lo + (hi - lo) * 0.5 * (1 - np.cos(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)))
    wave = sum(oscillator(k * freq, n, sr) / k ** 1.5 for k in (1, 2, 3))
    return wave * fades(n, sr, 0.03, 0.03), {"low_hz": lo, "high_hz": hi, "period_s": period}


def bounce(rng, n, sr):
    """A ball bouncing to a stop: low knocks (a 150-400 Hz damped tone with a click), each
    softer and sooner than the last (intervals shrinking by 0.6-0.8 each bounce)."""
    wave = np.zeros(n)
    gap, start, amp = rng.uniform(0.3, 0.5), rng.uniform(0.0, 0.15), 1.0
    shrink, f0 = rng.uniform(0.6, 0.8), rng.uniform(150, 400)
    m = int(0.05 * sr)
    t = np.arange(m) / sr
    knock = (np.sin(2 * np.pi * f0 * t) + 0.3 * rng.standard_normal(m) * np.exp(-t / 0.002)) * np.exp(-t / 0.012)
    bounces = 0
    while gap > 0.02:
        i = int(start * sr)
        if i + m > n:
            break
        wave[i:i + m] += amp * knock
        bounces += 1
        start += gap
        gap *= shrink
        amp *= 0.85
    return wave, {"pitch_hz": f0, "bounces": bounces}


def wind(rng, n, sr):
    """Gusts of wind: noise in one band (centred at 300-800 Hz, about an octave wide; the
    hiss of ``noise`` is flat to 8 kHz) swelling and fading 0.3-0.8 times a second."""
    centre = rng.uniform(300, 800)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    spectrum *= np.exp(-0.5 * (np.log2(np.maximum(f, 1.0) / centre) / rng.uniform(0.35, 0.55)) ** 2)
    band = np.fft.irfft(spectrum, n)
    rate = rng.uniform(0.3, 0.8)
    swell = 0.55 + 0.45 * np.sin(2 * np.pi * rate * np.arange(n) / sr + rng.uniform(0, 2 * np.pi))
    return band / (np.abs(band).max() + 1e-9) * swell * fades(n, sr, 0.05, 0.05), {"centre_hz": centre, "gust_hz": rate}


GENERATORS = {name: globals()[name] for name in ALL_LABELS}


def make(index: int, seed: int, n: int, sr: int, labels: tuple[str, ...] = LABELS) -> tuple[np.ndarray, dict]:
    """Clip ``index`` of the set for ``seed`` over ``labels``: (float32 wave [n], manifest fields)."""
    rng = np.random.default_rng([seed, index])
    label = labels[index % len(labels)]  # balanced: every run of len(labels) clips has each label once
    wave, params = GENERATORS[label](rng, n, sr)
    wave, level = finish(wave, rng)
    caption = CAPTIONS[label][int(rng.integers(len(CAPTIONS[label])))]
    return wave, {"caption": caption, "label": label, "peak": level, **params}
