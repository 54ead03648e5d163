"""Signal building blocks (tones, coloured noise, impacts, gates) and the factory around a machine.

Every function takes its random numbers from the generator it is given, in a fixed order, so a
clip's samples depend only on its own stream.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import scipy.fft

from asd.synthetic.designs import SAMPLE_RATE, TWO_PI


@functools.lru_cache(maxsize=16)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(time in s (n,), rfft frequencies in Hz (n//2+1,), their log2), float32."""
    t = (np.arange(n) / SAMPLE_RATE).astype(np.float32)
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE).astype(np.float32)
    f[0] = f[1]  # no log(0) in the shapes below
    return t, f, np.log2(f)


def _db(x: float) -> float:
    return float(10.0 ** (x / 20.0))


_HOLD = 64  # samples over which a drifting speed is held constant


def _drift(n: int, r: np.random.Generator, sd: float, points: int = 12) -> np.ndarray:
    """Slow random variation around 1 (n,): a speed that wanders a little."""
    ctrl = 1.0 + r.normal(0.0, sd, points)
    # interpolate coarsely, then hold: the wander is far slower than SAMPLE_RATE / _HOLD
    coarse = np.interp(np.arange(0, n + _HOLD, _HOLD), np.linspace(0, n - 1, points), ctrl)
    return np.repeat(coarse.astype(np.float32), _HOLD)[:n]


def _cycles(freq: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """Running phase (n,) uint32 of a frequency track in Hz, from a random start, in steps of
    2**-32 cycle: a phase accumulator, whose integer sums wrap around once per cycle and build
    up no rounding error over the clip."""
    step = (freq * np.float32(2.0**32 / SAMPLE_RATE)).astype(np.uint32)
    held = step.reshape(-1, _HOLD) if step.size % _HOLD == 0 else None
    if held is not None and (held == held[:, :1]).all():  # held over blocks, as _drift makes it
        per = held[:, 0]  # (blocks,) the step within each block
        first = np.cumsum(per * np.uint32(_HOLD), dtype=np.uint32) - per * np.uint32(_HOLD)
        acc = (first[:, None] + per[:, None] * np.arange(1, _HOLD + 1, dtype=np.uint32)).ravel()
    else:
        acc = np.cumsum(step, dtype=np.uint32)
    acc += np.uint32(r.uniform(0, 1) * 2**32)
    return acc


def _phase(freq: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """Running phase in radians (n,), float32, wrapped into [0, 2 pi)."""
    wrapped = _cycles(freq, r).astype(np.float32)
    wrapped *= np.float32(TWO_PI / 2**32)
    return wrapped


_TABLE_BITS = 14  # 2**14 samples per period of the wavetable in _tones


def _tones(
    freq: np.ndarray, amps: Sequence[float], r: np.random.Generator, spread_db: float = 1.5
) -> np.ndarray:
    """Harmonics k*freq (k = 1..len(amps), amplitude about amps[k-1], random phases): (n,).

    Each harmonic's level varies by ``spread_db`` (standard deviation) from clip to clip.

    One period is built by an inverse FFT and read at the nearest entry (a wavetable), so the
    cost does not grow with the number of harmonics; those above 0.45 fs are left out. The
    table is fine enough that the phase error stays far below the background noise.
    """
    size = 2**_TABLE_BITS
    top = float(freq.max())
    spec = np.zeros(size // 2 + 1, np.complex128)
    for k, a in enumerate(amps, start=1):
        if k * top > 0.45 * SAMPLE_RATE:
            break
        a *= 10.0 ** (r.normal(0.0, spread_db) / 20.0)
        spec[k] = a * np.exp(1j * (r.uniform(0, TWO_PI) - np.pi / 2)) * (size / 2)
    table = scipy.fft.irfft(spec, size).astype(np.float32)  # sum a_k sin(k x + phi_k)
    return np.take(table, _cycles(freq, r) >> np.uint32(32 - _TABLE_BITS))


def _tilt(lf: np.ndarray, slope_db_oct: float, ref: float = 1000.0) -> np.ndarray:
    """Spectral tilt in dB per octave around ``ref``; lf = log2 of the frequencies."""
    return np.exp2((lf - np.float32(np.log2(ref))) * np.float32(slope_db_oct / 6.0206))


def _peak(lf: np.ndarray, fc: float, width_oct: float, gain_db: float) -> np.ndarray:
    """A smooth resonance: gain_db at fc, a Gaussian in log-frequency."""
    z = (lf - np.float32(np.log2(fc))) * np.float32(1.0 / width_oct)
    return np.exp2(np.float32(gain_db / 6.0206) * np.exp(np.float32(-0.5) * z * z))


def _band(lf: np.ndarray, fc: float, width_oct: float) -> np.ndarray:
    z = (lf - np.float32(np.log2(fc))) * np.float32(1.0 / width_oct)
    return np.exp(np.float32(-0.5) * z * z)


def _noise_spec(shape: np.ndarray, r: np.random.Generator, n: int) -> np.ndarray:
    """Complex spectrum of random noise with amplitude response ``shape``, about unit RMS.

    Real and imaginary parts are uniform integers scaled to unit variance rather than Gaussian
    (cheaper to draw); every time sample, and every short-time spectrum bin, sums many of
    them and is Gaussian all the same.
    """
    m = shape.shape[0]
    power = 4.0 * float(np.dot(shape, shape)) / n**2  # expected, by Parseval (real signal)
    parts = r.integers(-32767, 32768, (m, 2), dtype=np.int16)  # (m, 2) real, imaginary
    scale = shape * np.float32(1.0 / (_INT16_SD * np.sqrt(power + 1e-20)))
    spec = parts * scale[:, None]  # (m, 2) float32
    spec[0] = 0
    return spec.view(np.complex64)[:, 0]


_INT16_SD = float(np.sqrt((65535.0**2 - 1.0) / 12.0))  # of integers uniform in +-32767


def _noise(shape: np.ndarray, r: np.random.Generator, n: int) -> np.ndarray:
    return scipy.fft.irfft(_noise_spec(shape, r, n), n)  # float32, as the spectrum is complex64


def _kernel(
    freqs: Sequence[float], decay_s: float, r: np.random.Generator, length_s: float = 0.04
) -> np.ndarray:
    """An impact: decaying partials at ``freqs`` with a short noise burst, peak 1."""
    t = np.arange(int(length_s * SAMPLE_RATE)) / SAMPLE_RATE
    env = np.exp(-t / decay_s)
    k = sum(np.sin(TWO_PI * fr * t + r.uniform(0, TWO_PI)) / (i + 1) for i, fr in enumerate(freqs))
    k = k * env + 0.3 * r.standard_normal(t.size) * np.exp(-t / (decay_s / 4))
    return (k / np.abs(k).max()).astype(np.float32)


def _impacts(n: int, times: np.ndarray, amps: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Place ``kernel`` at ``times`` (s) with ``amps``: (n,); overlaps add up."""
    pos = np.round(np.asarray(times) * SAMPLE_RATE).astype(np.int64)
    keep = (pos >= 0) & (pos < n)
    pos, amps = pos[keep], np.asarray(amps, np.float32)[keep]
    index = (pos[:, None] + np.arange(kernel.size)).ravel()  # (impacts * kernel,)
    weights = (amps[:, None] * kernel[None, :]).ravel()
    return np.bincount(index, weights, minlength=n + kernel.size)[:n].astype(np.float32)


def _periodic(rate: float, duration: float, r: np.random.Generator, jitter: float) -> np.ndarray:
    """Event times (s) at ``rate`` Hz from a random start, each shifted by jitter/rate * N(0, 1)."""
    k = np.arange(int(duration * rate) + 2)
    return (k + r.uniform(0, 1)) / rate + r.normal(0, jitter / rate, k.size)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.float32(np.sqrt(np.dot(x, x) / x.size) + 1e-12)


def _gate(n: int, starts: np.ndarray, ends: np.ndarray, ramp_s: float = 0.005) -> np.ndarray:
    """1 inside [start, end) intervals (s), 0 outside, with linear ramps: (n,)."""

    def count(times):
        pos = np.clip(np.round(np.asarray(times) * SAMPLE_RATE).astype(np.int64), 0, n)
        return np.bincount(pos, minlength=n + 1)

    g = np.clip(np.cumsum(count(starts) - count(ends))[:n], 0, 1)  # (n,) integers 0 or 1
    w = max(1, int(ramp_s * SAMPLE_RATE))
    c = np.concatenate([[0], np.cumsum(g)])  # integer sums: exact
    smooth = (c[w:] - c[:-w]).astype(np.float32) * np.float32(1.0 / w)
    return np.concatenate([smooth, g[len(smooth) :].astype(np.float32)])


def _bursts(n: int, r: np.random.Generator, cover: float, mean_s: float) -> np.ndarray:
    """Random on/off gate covering about ``cover`` of the clip in bursts of ``mean_s``: (n,)."""
    duration = n / SAMPLE_RATE
    count = max(1, int(round(cover * duration / mean_s)))
    starts = np.sort(r.uniform(0, duration, count))
    return _gate(n, starts, starts + r.uniform(0.5, 1.5, count) * mean_s, ramp_s=0.02)


def _bearing(n: int, f_rot: float, d: SimpleNamespace, r: np.random.Generator) -> np.ndarray:
    """A faint train of high-frequency impulses at the outer-race rate, modulated per turn."""
    times = _periodic(d.bpfo * f_rot, n / SAMPLE_RATE, r, 0.03)
    amps = np.abs(1 + 0.3 * r.standard_normal(times.size)) * (
        1 + 0.5 * np.sin(TWO_PI * f_rot * times)
    )
    kernel = _kernel([d.bearing_fc, 1.37 * d.bearing_fc], 0.0012, r, length_s=0.01)
    return _unit(_impacts(n, times, amps, kernel))


AMBIENCE_RATE = 0.3  # factory events per second, in every clip (Poisson)
AMBIENCE_DB = (-24.0, -10.0)  # an event's RMS over its span, relative to the machine


def _ambience(n: int, r: np.random.Generator) -> np.ndarray:
    """The factory around the machine (n,): events at random times, the same for every clip.

    The real recordings were mixed with noise recorded in factories, which is not stationary:
    distant metal clanks, compressed-air hiss, reversing beepers, passing vehicles. Each clip
    gets a Poisson number of such events (``AMBIENCE_RATE``), each of random kind, place and
    level (``AMBIENCE_DB``), whatever its section, domain or condition, normal or anomalous.
    """
    out = np.zeros(n, np.float32)
    for start, event in _ambience_events(n, r):
        out[start : start + len(event)] += event
    return out


def _ambience_events(n: int, r: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """(first sample, samples at their level) of each factory event of a clip of n samples.

    An event's noise is drawn only for the part of it that falls inside the clip.
    """
    events = []
    for _ in range(int(r.poisson(AMBIENCE_RATE * n / SAMPLE_RATE))):
        kind = int(r.integers(4))
        start = int(r.integers(n))
        if kind == 0:  # clank: a struck metal part somewhere else
            f1 = r.uniform(150.0, 1500.0)
            event = _kernel([f1, 2.76 * f1, 5.40 * f1], r.uniform(0.03, 0.12), r, length_s=0.4)
        elif kind == 1:  # compressed-air hiss
            length = min(n, int(r.uniform(0.2, 1.0) * SAMPLE_RATE))
            fc = r.uniform(2000.0, 6000.0)
            noise = _short_noise(
                min(length, n - start), r, lambda size, fc=fc: _band(_grid(size)[2], fc, 0.5)
            )
            ramp = np.arange(len(noise), dtype=np.float32)
            event = noise * np.minimum(1.0, ramp / 160.0) * np.exp(ramp / np.float32(-0.5 * length))
        elif kind == 2:  # reversing beeper: a few pulses of a tone with its third harmonic
            f0, pulses = r.uniform(1000.0, 2500.0), int(r.integers(2, 6))
            length = min(n - start, int(0.5 * pulses * SAMPLE_RATE))
            t = np.arange(length, dtype=np.float32) / np.float32(SAMPLE_RATE)
            on = (np.floor(t / 0.25) % 2 == 0).astype(np.float32)
            event = on * (
                np.sin(np.float32(TWO_PI * f0) * t) + 0.3 * np.sin(np.float32(TWO_PI * 3 * f0) * t)
            )
        else:  # a vehicle passing: low rumble swelling and fading over seconds
            length = min(n, int(r.uniform(2.0, 4.0) * SAMPLE_RATE))
            noise = _short_noise(min(length, n - start), r, _rumble_shape)
            ramp = np.arange(len(noise), dtype=np.float32)
            event = noise * np.sin(ramp * np.float32(np.pi / length)) ** 2
        event = np.asarray(event, np.float32)[: n - start]
        events.append((start, _db(r.uniform(*AMBIENCE_DB)) * _unit(event)))
    return events


@functools.lru_cache(maxsize=16)
def _rumble_shape(size: int) -> np.ndarray:
    """The spectrum of a passing vehicle's rumble on the rfft grid of ``size`` samples."""
    lf = _grid(size)[2]
    return _tilt(lf, -9.0, ref=100.0) * _band(lf, 120.0, 1.5)


def _short_noise(length: int, r: np.random.Generator, shape) -> np.ndarray:
    """``length`` samples of noise coloured by ``shape(size)``, an amplitude response on the
    rfft grid of ``size`` samples: the next power of two, so that few FFT sizes occur."""
    size = max(2, 1 << (length - 1).bit_length())
    return _noise(shape(size), r, size)[:length]
