"""A synthetic data set in the exact DCASE 2021 Task 2 layout, for users without the real data.

``python -m asd.synthetic [ROOT] [--config C] [options]`` (``make synth``) or ``generate(root)``
writes 16 kHz mono 10 s PCM16 WAV files::

    ROOT/dev_data/<machine>/train/section_00_source_train_normal_0000_<attributes>.wav
    ROOT/dev_data/<machine>/{source,target}_test/section_00_source_test_<normal|anomaly>_0000.wav
    ROOT/eval_data/<machine>/train/section_03_...      (the "additional training" sections)
    ROOT/eval_data/<machine>/{source,target}_test/section_03_source_test_0000.wav   (no label)
    ROOT/eval_data/ground_truth/ground_truth_<machine>_section_03_<domain>_test.csv  (file,0|1)
    ROOT/synthetic.json                                (the generation settings)

The ground-truth files have the official DCASE 2021 evaluator's names and rows (see asd.data).

The sounds. Every (machine type, section) is its own "machine", designed once from a fixed
seed: harmonic stacks at its own fundamentals (rotation, blade pass, gear mesh, motor), its own
resonances and noise colours, amplitude modulation at the shaft rate, and impulsive trains
(valve open/close clicks in a timing pattern, slider stroke-end impacts, rail-joint clacks).
The sections of a machine type are variants of one design, as in the real data set (one kind
of machine, other units and conditions): each continuous design value lies ``SECTION_SPREAD``
of the way from the type's value towards a section's own draw, and counts (blades, teeth,
vanes) are the type's or a neighbour. So the sections differ, but not so grossly that a
classifier could tell them apart without listening to the machine's detail.
The attribute part of a training name holds the operating condition that shapes the sound
(speed, load, car model, valve pattern, microphone), so a class has several normal modes.
Normal clips also vary at random: phase, speed and its slow drift, the level of each
component and harmonic, resonance frequencies, background level and colour, gain.
Around every clip the factory goes on, as in the real recordings, which were mixed with noise
recorded in factories: a few events at random times and levels (distant metal clanks,
compressed-air hiss, reversing beepers, passing vehicles; ``_ambience``), drawn alike for every
section, domain and condition, normal or anomalous, so a clip's sound is not stationary even
when its machine is.
The target domain of a section is shifted in one of three ways (fixed per section): another
speed (all frequencies scale), louder and differently coloured background noise with factory
hum, or another microphone position (spectral tilt and resonance).

The faults (one per anomalous clip, severity drawn uniformly from subtle to clear):

- fan: imbalance (deeper amplitude modulation at the rotation rate plus a 1x tone),
  bearing (faint high-frequency impulse train), blade rub (intermittent friction bursts once
  per revolution), clogging (aerodynamic noise hump shifted down and louder);
- gearbox: tooth crack (one impact per shaft revolution), wear (stronger shaft-rate sidebands
  and second mesh harmonic), misalignment (mesh modulated at twice the shaft rate), bearing;
- pump: cavitation (random faint crackle), leak (narrow-band hiss), impeller damage
  (shaft-rate subharmonic and pulsation), clogging (pipe resonance shifted, flow noise down);
- slider: rail damage (a click at the same stroke position every pass), dry rail (louder and
  brighter friction), squeal (an intermittent narrow tone while moving), loose belt
  (motor tone wobbling in frequency);
- valve: leak (hiss while closed), bounce (a second, weaker click after closing),
  irregular timing (events shifted, some missing), contamination (click resonance detuned
  and damped);
- ToyCar: bent shaft (deeper wheel-rate modulation), chipped gear (a click per gear
  revolution), flat tyre (a thump per wheel revolution), bearing;
- ToyTrain: wheel flat (a faint click per wheel revolution), scraping (random friction
  bursts), bad rail joint (clack timing irregular, some missing), motor (an extra partial).

Clips are independent: each has its own random stream derived from (seed, its name), so the
output is identical for a seed whatever the number of workers.

Difficulty (``python -m bench.synthetic_difficulty``): a Gaussian on each clip's mean log-mel
vector scores about 0.56 AUC (harmonic mean), below the challenge's autoencoder baseline on the
real data (0.62); adding per-band spread and peaks over time does not help (about 0.52): the
factory events swamp them, although several faults change only the temporal structure
(modulation, clicks, timing). Without the events (format 2 of this generator) the spread gave
most of those faults away.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Optional, Sequence

import numpy as np
import scipy.fft
import soundfile as sf
from scipy.signal import oaconvolve

from asd.data import DataError, csv_name, ground_truth_dir
from asd.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MACHINES = ("fan", "gearbox", "pump", "slider", "ToyCar", "ToyTrain", "valve")
DEV_SECTIONS = ("00", "01", "02")
EVAL_SECTIONS = ("03", "04", "05")
SHIFTS = ("speed", "noise", "channel")
FAULTS = {
    "fan": ("imbalance", "bearing", "rub", "clog"),
    "gearbox": ("tooth_crack", "wear", "misalignment", "bearing"),
    "pump": ("cavitation", "leak", "impeller", "clog"),
    "slider": ("rail_damage", "dry", "squeal", "loose_belt"),
    "valve": ("leak", "bounce", "timing", "contamination"),
    "ToyCar": ("shaft", "gear_chip", "tyre", "bearing"),
    "ToyTrain": ("wheel_flat", "scrape", "joint", "motor"),
}
SECTION_SPREAD = 0.35  # how far a section's design strays from its machine type's (0..1)
MARKER = "synthetic.json"
FORMAT = 3  # bump when the sounds change, so stale data sets are regenerated
TWO_PI = 2.0 * np.pi


# ---------------------------------------------------------------- randomness, designs

def _key(*parts: object) -> int:
    """A stable 64-bit number for a tuple of names (Python's hash() is salted per process)."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(_key(*parts))


@functools.lru_cache(maxsize=None)
def design(machine: str, section: str) -> SimpleNamespace:
    """The fixed character of one (machine type, section): frequencies, colours, conditions.

    It does not depend on the generation seed, so clips generated with another seed are new
    recordings of the same machines.
    """
    r = _rng("design", machine, section)
    base = _rng("design", machine)  # the machine type's character, shared by its sections

    def u(lo: float, hi: float, size: Optional[int] = None):
        """A section's value: the type's base value moved SECTION_SPREAD of the way towards
        the section's own draw, so sections are variants of one kind of machine."""
        b, own = base.uniform(lo, hi, size), r.uniform(lo, hi, size)
        return b + SECTION_SPREAD * (own - b)

    def integer(lo: int, hi: int) -> int:
        """The type's base count, or a neighbour of it for some sections."""
        return int(np.clip(base.integers(lo, hi) + r.integers(-1, 2), lo, hi - 1))

    shift = SHIFTS[(_key(machine) + int(section)) % len(SHIFTS)]
    d = SimpleNamespace(
        machine=machine, section=section, shift=shift,
        target_speed=float(r.choice([0.72, 1.35])),
        mic=[(u(-2.0, 0.5), u(600, 3000), u(2.0, 6.0)),     # (tilt dB/oct, resonance Hz, gain dB)
             (u(-5.0, -2.5), u(1500, 5000), u(6.0, 10.0))],  # the other microphone position
        bg_slope=u(-3.0, -1.0), bg_db=u(-20.0, -14.0),       # background relative to the machine
        bg_target_slope=u(-6.0, -4.0), bg_target_db=u(-10.0, -6.0), hum=u(48.0, 62.0),
        level_db=u(-24.0, -20.0),
    )
    if machine == "fan":
        d.f_rot = u(14.0, 26.0)
        d.blades = integer(5, 10)
        d.bpf_amps = 10 ** (-u(0, 12, 6) / 20) * np.array([1, .6, .4, .3, .2, .15])
        d.slope, d.hump_fc, d.hump_db = u(-4.0, -2.0), u(600, 2500), u(5.0, 10.0)
        d.am_depth, d.tone_db = u(0.03, 0.08), u(-14.0, -8.0)
        d.bpfo, d.bearing_fc, d.rub_fc = u(3.05, 5.2), u(3000, 6000), u(1500, 4000)
    elif machine == "gearbox":
        d.f_shaft = u(8.0, 15.0)
        d.teeth = integer(17, 42)
        d.mesh_amps = np.array([1.0, u(0.3, 0.6), u(0.1, 0.3), u(0.05, 0.15)])
        d.sideband_db = u(-32.0, -26.0)
        d.casing_fc, d.slope, d.noise_db = u(1000, 3000), u(-5.0, -3.0), u(-16.0, -10.0)
        d.arm = int(r.choice([25, 50]))
        d.volts = (1000, 1500, 2000)
        d.bpfo, d.bearing_fc = u(3.05, 5.2), u(3000, 6000)
    elif machine == "pump":
        d.f_shaft = u(20.0, 40.0)
        d.vanes = integer(5, 8)
        d.motor_amps = 10 ** (-u(0, 15, 8) / 20) * np.array([.5, 1, .3, .5, .2, .3, .1, .1])
        d.vp_db, d.motor_db = u(-12.0, -6.0), u(-14.0, -8.0)
        d.pipe_fc, d.slope, d.am_depth = u(200, 1200), u(-6.0, -4.0), u(0.04, 0.1)
        d.leak_fc, d.crackle_fc = u(2000, 6000), u(4000, 7000)
    elif machine == "slider":
        d.vel0, d.stroke_mm = u(400, 700), u(150, 300)
        d.friction_fc, d.whine_per_vel = u(600, 1500), u(0.6, 1.2)  # Hz per mm/s
        d.click_fc, d.friction_db, d.click_db = u(800, 2000), u(-6.0, 0.0), u(-6.0, 0.0)
        d.dwell, d.squeal_fc, d.damage_pos = u(0.05, 0.2), u(1500, 3500), u(0.3, 0.7)
    elif machine == "valve":
        patterns = r.permutation(10)
        d.patterns_source = tuple(int(p) for p in np.sort(patterns[:2]))
        d.pattern_target = int(patterns[2])
        d.open_fc, d.close_fc = u(2000, 5000), u(1500, 4000)
        d.hiss_fc, d.hiss_db, d.pump_db = u(1000, 4000), u(-16.0, -10.0), u(-26.0, -18.0)
        d.pump_f = u(25.0, 45.0)
    elif machine in ("ToyCar", "ToyTrain"):
        letters = r.permutation(list("ABCDE"))[:3]
        d.models = tuple(f"{c}{int(r.integers(1, 3))}" for c in letters)
        d.model_fc = {m: u(500, 3000) for m in d.models}      # body resonance per model
        d.model_odd = {m: u(0.2, 1.0) for m in d.models}      # weight of even motor harmonics
        if machine == "ToyCar":
            d.speeds = (28, 31, 34, 37, 40)
            d.hz_per_unit, d.gear, d.wheel_div = u(5.0, 9.0), u(0.2, 0.4), u(15.0, 25.0)
        else:
            d.speeds = (6, 7, 8, 9, 10)
            d.hz_per_unit, d.joint_m, d.wheel_div = u(20.0, 35.0), u(0.8, 1.6), u(20.0, 40.0)
        d.noise_fc, d.slope, d.motor_db = u(300, 1500), u(-5.0, -3.0), u(-8.0, -2.0)
        d.bpfo, d.bearing_fc = u(3.05, 5.2), u(3000, 6000)
    else:
        raise DataError(f"unknown machine type {machine!r}; expected one of {MACHINES}")
    return d


def _condition(d: SimpleNamespace, domain: str, r: np.random.Generator) -> dict:
    """One operating condition: physical factors plus the attribute text of the file name."""
    target = domain == "target"
    speed_shift = target and d.shift == "speed"
    c = {"speed": 1.0, "load": 1.0, "mic": int(target and d.shift == "channel"),
         "noise": int(target and d.shift == "noise")}
    m = d.machine
    if m == "fan":
        k = int(r.integers(1, 4))
        if speed_shift:
            k = 4 if d.target_speed > 1 else 0
        c["speed"] = {0: 0.72, 1: 0.85, 2: 1.0, 3: 1.15, 4: 1.35}[k]
        c["load"] = c["speed"] ** 2
        c["attributes"] = f"strength_{k}_{'factory' if c['noise'] else 'ambient'}"
    elif m == "gearbox":
        mv = int(r.choice(d.volts))
        if speed_shift:
            mv = 2700 if d.target_speed > 1 else 700
        wt = int(r.choice([0, 50, 100, 150]))
        c["speed"], c["load"] = mv / 1500, 1.0 + wt / 150
        c["attributes"] = f"{wt}_g_{d.arm}_mm_{mv}_mV_{'noise' if c['noise'] else 'none'}"
    elif m == "pump":
        q = int(r.choice([40, 60, 80]))
        if speed_shift:
            q = 110 if d.target_speed > 1 else 30
        h = int(r.choice([5, 10]))
        c["speed"], c["load"] = q / 60, h / 7.5
        c["attributes"] = f"flow_{q}_head_{h}"
    elif m == "slider":
        v = int(round(d.vel0 * r.choice([0.85, 1.0, 1.15]) / 10) * 10)
        if speed_shift:
            v = int(round(d.vel0 * d.target_speed / 10) * 10)
        a = float(r.choice([0.05, 0.11, 0.2, 0.3]))
        c["speed"], c["load"], c["vel"] = v / d.vel0, 0.5 + 2 * a, v
        c["attributes"] = f"vel_{v}_ac_{a:.2f}"
    elif m == "valve":
        p = int(r.choice(d.patterns_source))
        if speed_shift:
            p = d.pattern_target
        c["pattern"] = p
        c["attributes"] = f"pat_{p:02d}"
    else:  # ToyCar, ToyTrain
        model = str(r.choice(d.models))
        s = int(r.choice(d.speeds[1:4]))
        if speed_shift:
            s = d.speeds[4] if d.target_speed > 1 else d.speeds[0]
        c["model"], c["speed"] = model, s / d.speeds[2]
        unit = "V" if m == "ToyCar" else ""
        c["attributes"] = f"{model}Spd{s}{unit}Mic{1 + c['mic']}"
    return c


# ---------------------------------------------------------------- signal building blocks

@functools.lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(time in s (n,), rfft frequencies in Hz (n//2+1,), their log2), float32."""
    t = (np.arange(n) / SAMPLE_RATE).astype(np.float32)
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE).astype(np.float32)
    f[0] = f[1]  # no log(0) in the shapes below
    return t, f, np.log2(f)


def _db(x: float) -> float:
    return float(10.0 ** (x / 20.0))


def _drift(n: int, r: np.random.Generator, sd: float, points: int = 12) -> np.ndarray:
    """Slow random variation around 1 (n,): a speed that wanders a little."""
    ctrl = 1.0 + r.normal(0.0, sd, points)
    step = 64  # interpolate coarsely, then hold: the wander is far slower than 250 Hz
    coarse = np.interp(np.arange(0, n + step, step), np.linspace(0, n - 1, points), ctrl)
    return np.repeat(coarse.astype(np.float32), step)[:n]


def _cycles(freq: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """Running phase in cycles (n,), float64, of an instantaneous frequency track in Hz."""
    return np.cumsum(freq.astype(np.float64)) * (1.0 / SAMPLE_RATE) + r.uniform(0, 1)


def _phase(freq: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """Running phase in radians (n,), float64."""
    return _cycles(freq, r) * TWO_PI


_TABLE = 4096  # samples per period of the wavetable in _tones


def _tones(freq: np.ndarray, amps: Sequence[float], r: np.random.Generator,
           spread_db: float = 1.5) -> np.ndarray:
    """Harmonics k*freq (k = 1..len(amps), amplitude about amps[k-1], random phases): (n,).

    Each harmonic's level varies by ``spread_db`` (standard deviation) from clip to clip.

    One period is built by an inverse FFT and read with linear interpolation (a wavetable),
    so the cost does not grow with the number of harmonics; those above 0.45 fs are left out.
    """
    top = float(freq.max())
    spec = np.zeros(_TABLE // 2 + 1, np.complex128)
    for k, a in enumerate(amps, start=1):
        if k * top > 0.45 * SAMPLE_RATE:
            break
        a *= 10.0 ** (r.normal(0.0, spread_db) / 20.0)
        spec[k] = a * np.exp(1j * (r.uniform(0, TWO_PI) - np.pi / 2)) * (_TABLE / 2)
    table = scipy.fft.irfft(spec, _TABLE).astype(np.float32)  # sum a_k sin(k x + phi_k)
    table = np.append(table, table[0])
    cyc = _cycles(freq, r)
    pos = (cyc - np.floor(cyc)) * _TABLE
    i = np.minimum(pos.astype(np.int32), _TABLE - 1)
    lo = table[i]
    return lo + (pos - i).astype(np.float32) * (table[i + 1] - lo)


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
    """Complex spectrum of Gaussian noise with amplitude response ``shape``, about unit RMS."""
    m = shape.shape[0]
    spec = r.standard_normal(2 * m, dtype=np.float32).view(np.complex64) * shape
    spec[0] = 0
    power = 4.0 * float(np.dot(shape, shape)) / n ** 2  # expected, by Parseval (real signal)
    return spec * np.float32(1.0 / np.sqrt(power + 1e-20))


def _noise(shape: np.ndarray, r: np.random.Generator, n: int) -> np.ndarray:
    return scipy.fft.irfft(_noise_spec(shape, r, n), n).astype(np.float32)


def _kernel(freqs: Sequence[float], decay_s: float, r: np.random.Generator,
            length_s: float = 0.04) -> np.ndarray:
    """An impact: decaying partials at ``freqs`` with a short noise burst, peak 1."""
    t = np.arange(int(length_s * SAMPLE_RATE)) / SAMPLE_RATE
    env = np.exp(-t / decay_s)
    k = sum(np.sin(TWO_PI * fr * t + r.uniform(0, TWO_PI)) / (i + 1)
            for i, fr in enumerate(freqs))
    k = k * env + 0.3 * r.standard_normal(t.size) * np.exp(-t / (decay_s / 4))
    return (k / np.abs(k).max()).astype(np.float32)


def _impacts(n: int, times: np.ndarray, amps: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Place ``kernel`` at ``times`` (s) with ``amps``: (n,)."""
    pos = np.round(np.asarray(times) * SAMPLE_RATE).astype(np.int64)
    keep = (pos >= 0) & (pos < n)
    imp = np.zeros(n, np.float32)
    np.add.at(imp, pos[keep], np.asarray(amps, np.float32)[keep])
    return oaconvolve(imp, kernel)[:n].astype(np.float32)


def _periodic(rate: float, duration: float, r: np.random.Generator, jitter: float) -> np.ndarray:
    """Event times (s) at ``rate`` Hz from a random start, each shifted by jitter/rate * N(0, 1)."""
    k = np.arange(int(duration * rate) + 2)
    return (k + r.uniform(0, 1)) / rate + r.normal(0, jitter / rate, k.size)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.float32(np.sqrt(np.mean(x * x)) + 1e-12)


def _gate(n: int, starts: np.ndarray, ends: np.ndarray, ramp_s: float = 0.005) -> np.ndarray:
    """1 inside [start, end) intervals (s), 0 outside, with linear ramps: (n,)."""
    edge = np.zeros(n + 1, np.float32)
    for times, sign in ((starts, 1.0), (ends, -1.0)):
        pos = np.clip(np.round(np.asarray(times) * SAMPLE_RATE).astype(np.int64), 0, n)
        np.add.at(edge, pos, sign)
    g = np.clip(np.cumsum(edge)[:n], 0.0, 1.0)
    w = max(1, int(ramp_s * SAMPLE_RATE))
    c = np.concatenate([[0.0], np.cumsum(g, dtype=np.float64)])
    smooth = (c[w:] - c[:-w]) / w
    return np.concatenate([smooth, g[len(smooth):]]).astype(np.float32)


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
        1 + 0.5 * np.sin(TWO_PI * f_rot * times))
    kernel = _kernel([d.bearing_fc, 1.37 * d.bearing_fc], 0.0012, r, length_s=0.01)
    return _unit(_impacts(n, times, amps, kernel))


# ---------------------------------------------------------------- the machines
#
# Each takes (design d, condition c, fault name or None, severity in [0, 1], rng r, samples n)
# and returns the machine sound (n,). Normal clips vary at random around the design (speed,
# component levels, resonance frequencies, harmonic levels); a fault's strength goes from
# barely there (severity 0) to clear (severity 1) along the range written beside it.

def _mix(lo: float, hi: float, sev: float) -> float:
    return lo + (hi - lo) * sev


def _vary(r: np.random.Generator, sd_db: float = 1.0) -> float:
    """A component's level varies from clip to clip."""
    return _db(r.normal(0.0, sd_db))


def _near(r: np.random.Generator, value: float, rel: float = 0.02) -> float:
    """A frequency varies from clip to clip."""
    return value * (1.0 + r.normal(0.0, rel))


def _fan(d, c, fault, sev, r, n):
    t, _, f = _grid(n)
    f_rot = _near(r, d.f_rot * c["speed"], 0.01) * _drift(n, r, 0.004)
    rot_phase = _phase(f_rot, r)
    hump_fc = _near(r, d.hump_fc * (0.9 + 0.1 * c["speed"]), 0.04)
    hump_db, depth = d.hump_db + r.normal(0, 0.7), d.am_depth * _near(r, 1.0, 0.15)
    if fault == "clog":
        hump_fc *= 1 - _mix(0.03, 0.14, sev)
        hump_db += _mix(0.3, 2.5, sev)
    elif fault == "imbalance":
        depth += _mix(0.05, 0.3, sev)
    air = _noise(_tilt(f, d.slope + r.normal(0, 0.3)) * _peak(f, hump_fc, 0.8, hump_db), r, n)
    x = air * (1 + depth * np.sin(rot_phase)).astype(np.float32)
    x += _db(d.tone_db) * _vary(r) * _tones(d.blades * f_rot, d.bpf_amps, r)
    if fault == "imbalance":
        x += _db(_mix(-26, -10, sev)) * _tones(f_rot, [1.0, 0.5, 0.25], r)
    elif fault == "bearing":
        x += _db(_mix(-32, -16, sev)) * _bearing(n, float(f_rot.mean()), d, r)
    elif fault == "rub":
        per_turn = (np.sin(rot_phase) > 0.8).astype(np.float32)
        rub = _noise(_band(f, d.rub_fc, 0.25), r, n) * per_turn * _bursts(n, r, 0.5, 1.0)
        x += _db(_mix(-28, -12, sev)) * _unit(rub)
    return x * np.float32(c["load"] ** 0.5)


def _gearbox(d, c, fault, sev, r, n):
    t, _, f = _grid(n)
    f_s = _near(r, d.f_shaft * c["speed"], 0.01) * _drift(n, r, 0.003)
    mesh = d.teeth * f_s
    amps = d.mesh_amps * (0.7 + 0.3 * c["load"])
    side_db = d.sideband_db + 2.0 * c["load"] + r.normal(0, 1.5)
    if fault == "wear":
        side_db += _mix(3, 10, sev)
        amps = amps * np.array([1, _db(_mix(1.5, 5, sev)), 1, 1])
    x = _tones(mesh, amps, r)
    shaft_phase = _phase(f_s, r)
    mod = 1 + np.float32(2 * _db(side_db)) * np.cos(shaft_phase).astype(np.float32)  # sidebands
    if fault == "misalignment":
        mod += np.float32(_mix(0.05, 0.25, sev)) * np.sin(2 * shaft_phase).astype(np.float32)
    x *= mod
    casing = _tilt(f, d.slope + r.normal(0, 0.3)) * _peak(f, _near(r, d.casing_fc), 0.6, 8)
    x += _db(d.noise_db) * _vary(r) * c["load"] * _noise(casing, r, n)
    x += _db(-26) * _vary(r, 2) * _tones(np.full(n, 2 * d.hum, np.float32), [1, .3], r)  # motor
    if fault == "tooth_crack":
        times = _periodic(float(f_s.mean()), n / SAMPLE_RATE, r, 0.002)
        kernel = _kernel([d.casing_fc, float(mesh.mean()) * 2], 0.003, r)
        x += _db(_mix(-32, -16, sev)) * _unit(_impacts(n, times, np.ones(times.size), kernel))
    elif fault == "bearing":
        x += _db(_mix(-32, -16, sev)) * _bearing(n, float(f_s.mean()), d, r)
    return x


def _pump(d, c, fault, sev, r, n):
    t, _, f = _grid(n)
    f_s = _near(r, d.f_shaft * c["speed"], 0.01) * _drift(n, r, 0.004)
    shaft_phase = _phase(f_s, r)
    pipe_fc, flow_db = _near(r, d.pipe_fc, 0.04), r.normal(0, 1)
    depth = d.am_depth * _near(r, 1.0, 0.2)
    if fault == "clog":
        pipe_fc *= 1 - _mix(0.04, 0.15, sev)
        flow_db -= _mix(0.7, 3.0, sev)
    elif fault == "impeller":
        depth += _mix(0.05, 0.3, sev)
    flow = _noise(_tilt(f, d.slope + r.normal(0, 0.3)) * _peak(f, pipe_fc, 0.5, 10), r, n)
    x = _db(flow_db) * c["load"] * flow * (1 + depth * np.sin(shaft_phase)).astype(np.float32)
    x += _db(d.vp_db) * _vary(r) * _tones(d.vanes * f_s, [1, .5, .25], r)
    hum = np.full(n, d.hum, np.float32) * _drift(n, r, 0.0005)
    x += _db(d.motor_db) * _vary(r) * _tones(hum, d.motor_amps, r)
    if fault == "impeller":
        x += _db(_mix(-28, -14, sev)) * _tones(f_s, [1.0, 0.4], r)
    elif fault == "cavitation":
        rate = r.uniform(30, 150)
        times = np.sort(r.uniform(0, n / SAMPLE_RATE, int(rate * n / SAMPLE_RATE)))
        kernel = _kernel([d.crackle_fc, 1.6 * d.crackle_fc], 0.0006, r, length_s=0.004)
        crackle = _impacts(n, times, r.exponential(1.0, times.size), kernel)
        x += _db(_mix(-32, -16, sev)) * _unit(crackle)
    elif fault == "leak":
        x += _db(_mix(-34, -18, sev)) * _noise(_band(f, d.leak_fc, 0.15), r, n)
    return x


def _slider(d, c, fault, sev, r, n):
    t, _, f = _grid(n)
    v = _near(r, d.vel0 * c["speed"], 0.01)  # mm/s
    move = d.stroke_mm / v
    period = 2 * (move + d.dwell)
    # position along one period: out, dwell, back, dwell -> the motion gate and the impacts
    u = (t / period + r.uniform(0, 1)) % 1.0
    a = move / period
    moving = ((u < a) | ((u >= 0.5) & (u < 0.5 + a))).astype(np.float32)
    moving = _gate(n, *_edges(moving), ramp_s=0.03)
    whine_f = np.full(n, d.whine_per_vel * v, np.float32) * _drift(n, r, 0.003)
    if fault == "loose_belt":
        wob = 1 + _mix(0.008, 0.04, sev) * np.sin(TWO_PI * r.uniform(2, 6) * t
                                                  + r.uniform(0, TWO_PI))
        whine_f = whine_f * wob.astype(np.float32)
    fr_fc = _near(r, d.friction_fc * (0.8 + 0.2 * c["speed"]), 0.04)
    fr_db = d.friction_db + r.normal(0, 1.5)
    if fault == "dry":
        fr_fc *= 1 + _mix(0.03, 0.18, sev)
        fr_db += _mix(0.7, 3.5, sev)
    friction = _noise(_band(f, fr_fc, 0.9) * _tilt(f, -2.0), r, n)
    whine = 0.5 * _vary(r) * _tones(whine_f, [1, .4, .2], r)
    x = (_db(fr_db) * friction + whine) * moving
    x += _db(-30) * _noise(_tilt(f, -4.0), r, n)  # the idle motor drive
    offset = (1 - u[0]) * period % period  # time of the first period start
    starts = offset + period * np.arange(-1, int(n / SAMPLE_RATE / period) + 2)
    ends = np.concatenate([starts + move, starts + 0.5 * period + move])
    kernel = _kernel([_near(r, d.click_fc), 2.3 * d.click_fc], 0.006, r)
    amps = c["load"] * np.abs(1 + 0.15 * r.standard_normal(ends.size))
    x += _db(d.click_db) * 2 * _impacts(n, np.sort(ends), amps, kernel)
    if fault == "rail_damage":
        hits = np.concatenate([starts + d.damage_pos * move,
                               starts + 0.5 * period + (1 - d.damage_pos) * move])
        k2 = _kernel([2.7 * d.click_fc, 4100.0], 0.002, r)
        x += (_db(d.click_db + _mix(-22, -8, sev)) * 2
              * _impacts(n, np.sort(hits), np.ones(hits.size), k2))
    elif fault == "squeal":
        sq_f = np.full(n, d.squeal_fc, np.float32) * _drift(n, r, 0.01)
        x += _db(_mix(-34, -18, sev)) * _tones(sq_f, [1.0], r) * moving * _bursts(n, r, 0.5, 0.8)
    return x


def _edges(gate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start times, end times) in s of the 1-runs of a 0/1 gate."""
    diff = np.diff(np.concatenate([[0.0], gate, [0.0]]))
    return np.flatnonzero(diff > 0) / SAMPLE_RATE, np.flatnonzero(diff < 0) / SAMPLE_RATE


def _valve_events(pattern: int, duration: float, r: np.random.Generator):
    """(open times, close times) of a pattern: a fixed cycle of one to three pulses."""
    pr = _rng("valve-pattern", pattern)
    pulses = int(pr.integers(1, 4))
    cycle = pr.uniform(0.8, 2.5)
    opens = np.sort(pr.uniform(0, cycle * 0.7, pulses))
    lengths = pr.uniform(0.08, 0.3, pulses)
    start = -r.uniform(0, cycle)
    k = np.arange(int(duration / cycle) + 3)[:, None]
    o = (start + k * cycle + opens[None, :]).ravel()
    cl = np.maximum(o + np.tile(lengths, k.shape[0]), o + 0.03)
    jitter = r.normal(0, 0.004, (2, o.size))
    return o + jitter[0], cl + jitter[1]


def _valve(d, c, fault, sev, r, n):
    t, _, f = _grid(n)
    duration = n / SAMPLE_RATE
    opens, closes = _valve_events(c["pattern"], duration, r)
    if fault == "timing":
        spread = _mix(0.03, 0.12, sev)
        opens = opens + r.normal(0, spread, opens.size)
        closes = np.maximum(closes + r.normal(0, spread, closes.size), opens + 0.03)
        keep = r.uniform(size=opens.size) > _mix(0.1, 0.3, sev)
        opens, closes = opens[keep], closes[keep]
    open_fc, close_fc, decay = _near(r, d.open_fc), _near(r, d.close_fc), 0.004
    if fault == "contamination":
        factor = 1 + r.choice([-1, 1]) * _mix(0.04, 0.15, sev)
        open_fc, close_fc, decay = open_fc * factor, close_fc * factor, decay * (1 - 0.4 * sev)
    k_open = _kernel([open_fc, 1.9 * open_fc], decay, r)
    k_close = _kernel([close_fc, 2.6 * close_fc, 0.45 * close_fc], decay * 1.5, r)
    x = 0.6 * _impacts(n, opens, np.abs(1 + 0.1 * r.standard_normal(opens.size)), k_open)
    x += _impacts(n, closes, np.abs(1 + 0.1 * r.standard_normal(closes.size)), k_close)
    if fault == "bounce":
        every = r.uniform(size=closes.size) < 0.5 + 0.5 * sev
        later = closes[every] + r.uniform(0.012, 0.04, every.sum())
        x += _mix(0.15, 0.5, sev) * _impacts(n, later, np.ones(later.size), k_close)
    flowing = _gate(n, opens, closes, ramp_s=0.01)
    if fault == "leak":
        flowing = np.maximum(flowing, np.float32(_db(_mix(-34, -20, sev))))
    hiss = _noise(_band(f, _near(r, d.hiss_fc, 0.04), 0.6), r, n)
    x += _db(d.hiss_db) * 4 * _vary(r) * hiss * flowing
    pump = np.full(n, d.pump_f, np.float32) * _drift(n, r, 0.002)
    x += _db(d.pump_db) * 4 * _vary(r, 2) * _tones(pump, [1, .7, .5, .3, .2], r)
    return x


def _toy(d, c, fault, sev, r, n):
    t, _, f = _grid(n)
    model = c["model"]
    base = d.hz_per_unit * c["speed"] * (28 if d.machine == "ToyCar" else 8)
    motor_f = _near(r, base, 0.01) * _drift(n, r, 0.006)
    even = d.model_odd[model]
    amps = [1, even, .6, .5 * even, .4, .3 * even, .25, .2 * even]
    x = _db(d.motor_db) * _vary(r) * _tones(motor_f, amps, r)
    wheel_f = motor_f / d.wheel_div
    wheel_phase = _phase(wheel_f, r)
    depth = 0.1 * _near(r, 1.0, 0.2)
    if fault == "shaft":
        depth += _mix(0.08, 0.4, sev)
    body = _near(r, d.model_fc[model])
    shape = (_tilt(f, d.slope + r.normal(0, 0.3)) * _peak(f, _near(r, d.noise_fc, 0.04), 0.7, 8)
             * _peak(f, body, 0.3, 6))
    x += _noise(shape, r, n) * (1 + depth * np.sin(wheel_phase)).astype(np.float32)
    rev = float(wheel_f.mean())
    duration = n / SAMPLE_RATE
    if d.machine == "ToyCar":
        x += _db(-10) * _vary(r) * _tones(motor_f * d.gear, [1.0, 0.3], r)  # gear whine
    else:  # rail-joint clacks: pairs (two bogies) every joint
        joint_period = d.joint_m / c["speed"]
        joints = _periodic(1 / joint_period, duration, r, 0.01)
        if fault == "joint":
            joints = joints + r.normal(0, _mix(0.04, 0.15, sev) * joint_period, joints.size)
            joints = joints[r.uniform(size=joints.size) > _mix(0.15, 0.4, sev)]
        times = np.concatenate([joints, joints + 0.25 * joint_period])
        kernel = _kernel([body, 1.8 * body, 350.0], 0.008, r)
        x += 1.5 * _impacts(n, times, np.abs(1 + 0.1 * r.standard_normal(times.size)), kernel)
    if fault == "gear_chip":
        times = _periodic(float((motor_f * d.gear).mean()) / 8, duration, r, 0.01)
        k = _kernel([2500.0, 3700.0], 0.002, r, length_s=0.01)
        x += _db(_mix(-30, -14, sev)) * _unit(_impacts(n, times, np.ones(times.size), k))
    elif fault == "tyre":
        times = _periodic(rev, duration, r, 0.01)
        k = _kernel([180.0, 260.0], 0.01, r)
        x += _db(_mix(-24, -10, sev)) * _unit(_impacts(n, times, np.ones(times.size), k))
    elif fault == "bearing":
        x += _db(_mix(-32, -16, sev)) * _bearing(n, rev * 4, d, r)
    elif fault == "wheel_flat":
        times = _periodic(rev * 2, duration, r, 0.01)
        k = _kernel([1200.0, 3100.0], 0.003, r)
        x += _db(_mix(-28, -14, sev)) * _unit(_impacts(n, times, np.ones(times.size), k))
    elif fault == "scrape":
        sc = _noise(_band(f, r.uniform(2000, 5000), 0.3), r, n) * _bursts(n, r, 0.3, 0.4)
        x += _db(_mix(-26, -12, sev)) * _unit(sc)
    elif fault == "motor":
        x += _db(d.motor_db + _mix(-28, -12, sev)) * _tones(motor_f * 1.5, [1.0], r)
    return x


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
        out[start:start + len(event)] += event
    return out


def _ambience_events(n: int, r: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """(first sample, samples at their level) of each factory event of a clip of n samples."""
    _, _, lf = _grid(n)
    events = []
    for _ in range(int(r.poisson(AMBIENCE_RATE * n / SAMPLE_RATE))):
        kind = int(r.integers(4))
        start = int(r.integers(n))
        if kind == 0:  # clank: a struck metal part somewhere else
            f1 = r.uniform(150.0, 1500.0)
            event = _kernel([f1, 2.76 * f1, 5.40 * f1], r.uniform(0.03, 0.12), r, length_s=0.4)
        elif kind == 1:  # compressed-air hiss
            length = min(n, int(r.uniform(0.2, 1.0) * SAMPLE_RATE))
            noise = _noise(_band(lf, r.uniform(2000.0, 6000.0), 0.5), r, n)[:length]
            env = np.minimum(1.0, np.arange(length) / 160.0) * np.exp(
                -np.arange(length) / (0.5 * length))
            event = noise * env.astype(np.float32)
        elif kind == 2:  # reversing beeper: a few pulses of a tone with its third harmonic
            f0, pulses = r.uniform(1000.0, 2500.0), int(r.integers(2, 6))
            length = min(n, int(0.5 * pulses * SAMPLE_RATE))
            t = np.arange(length) / SAMPLE_RATE
            on = (np.floor(t / 0.25) % 2 == 0).astype(np.float32)
            event = on * (np.sin(TWO_PI * f0 * t) + 0.3 * np.sin(TWO_PI * 3 * f0 * t))
        else:  # a vehicle passing: low rumble swelling and fading over seconds
            length = min(n, int(r.uniform(2.0, 4.0) * SAMPLE_RATE))
            noise = _noise(_tilt(lf, -9.0, ref=100.0) * _band(lf, 120.0, 1.5), r, n)[:length]
            event = noise * np.sin(np.pi * np.arange(length) / length).astype(np.float32) ** 2
        event = np.asarray(event, np.float32)[:n - start]
        events.append((start, _db(r.uniform(*AMBIENCE_DB)) * _unit(event)))
    return events


_MACHINE_SOUND = {"fan": _fan, "gearbox": _gearbox, "pump": _pump, "slider": _slider,
                  "valve": _valve, "ToyCar": _toy, "ToyTrain": _toy}


def synthesize(machine: str, section: str, condition: dict, fault: Optional[str],
               severity: float, rng: np.random.Generator, duration: float = 10.0) -> np.ndarray:
    """One clip (samples,) float32 in [-1, 1]: machine sound, microphone, background, gain."""
    d = design(machine, section)
    n = int(round(duration * SAMPLE_RATE))
    _, _, f = _grid(n)
    x = _MACHINE_SOUND[machine](d, condition, fault, severity, rng, n)
    x = _unit(x)
    slope, fc, gain = d.mic[condition["mic"]]
    spec = scipy.fft.rfft(x) * (_tilt(f, slope) * _peak(f, fc, 0.5, gain))
    spec *= np.float32(1.0 / np.sqrt(2.0 * np.sum(np.abs(spec) ** 2) / n ** 2))  # unit RMS again
    if condition["noise"]:
        bg_shape = _tilt(f, d.bg_target_slope) * (1 + 4 * _band(f, d.hum, 0.02)
                                                  + 2 * _band(f, 3 * d.hum, 0.02))
        bg_db = d.bg_target_db
    else:
        bg_shape, bg_db = _tilt(f, d.bg_slope + rng.normal(0, 0.3)), d.bg_db
    spec += _db(bg_db + rng.uniform(-3, 3)) * _noise_spec(bg_shape, rng, n)
    level = _db(d.level_db + rng.uniform(-2, 2)) * (1 if condition["mic"] == 0 else _db(-4))
    y = scipy.fft.irfft(spec, n).astype(np.float32)
    y += _ambience(n, np.random.default_rng(rng.integers(2 ** 63)))  # its own stream
    y *= np.float32(level)
    peak = float(np.abs(y).max())
    if peak > 0.99:
        y *= np.float32(0.99 / peak)
    return y


# ---------------------------------------------------------------- the data set

@dataclass(frozen=True)
class Clip:
    """One file to write: where, what it is, and the operating condition and fault it sounds."""

    relpath: str  # dev_data/fan/train/section_00_source_train_normal_0000_strength_1_ambient.wav
    dataset: str
    machine: str
    section: str
    domain: str
    anomaly: bool
    condition: dict
    fault: Optional[str]
    severity: float
    seed: int


def plan(*, machines: Sequence[str] = MACHINES, dev_sections: Sequence[str] = DEV_SECTIONS,
         eval_sections: Sequence[str] = EVAL_SECTIONS, n_source: int = 100, n_target: int = 3,
         n_test: int = 40, seed: int = 0) -> list[Clip]:
    """Every clip of the data set with its name, condition and fault, in file order."""
    clips = []
    for dataset, sections in (("dev_data", dev_sections), ("eval_data", eval_sections)):
        for machine in machines:
            for section in sections:
                clips += _section_clips(dataset, machine, section, n_source, n_target, n_test, seed)
    return clips


def _section_clips(dataset, machine, section, n_source, n_target, n_test, seed) -> list[Clip]:
    d = design(machine, section)
    out = []

    def add(folder: str, domain: str, anomaly: bool, index: int, name: str) -> None:
        """One clip; ``{a}`` in ``name`` becomes the attribute text of its condition."""
        key = (seed, dataset, machine, section, domain, folder, anomaly, index)
        r = _rng("condition", *key)
        cond = _condition(d, domain, r)
        fault = str(r.choice(FAULTS[machine])) if anomaly else None
        severity = float(r.uniform()) if anomaly else 0.0
        name = name.format(a=cond["attributes"])
        out.append(Clip(f"{dataset}/{machine}/{folder}/{name}", dataset, machine, section,
                        domain, anomaly, cond, fault, severity, _key("audio", *key)))

    for domain, count in (("source", n_source), ("target", n_target)):
        for i in range(count):
            name = f"section_{section}_{domain}_train_normal_{i:04d}_{{a}}.wav"
            add("train", domain, False, i, name)
    n_anomaly = n_test // 2
    for domain in ("source", "target"):
        folder, head = f"{domain}_test", f"section_{section}_{domain}_test"
        labels = [False] * (n_test - n_anomaly) + [True] * n_anomaly
        if dataset == "eval_data":  # unlabelled names: labels shuffled behind the numbers
            order = _rng("order", seed, machine, section, domain).permutation(n_test)
            for i in range(n_test):
                add(folder, domain, labels[order[i]], i, f"{head}_{i:04d}.wav")
        else:
            counters = {False: 0, True: 0}
            for anomaly in labels:
                i = counters[anomaly]
                counters[anomaly] += 1
                word = "anomaly" if anomaly else "normal"
                add(folder, domain, anomaly, i, f"{head}_{word}_{i:04d}.wav")
    return out


def render(clip: Clip, duration: float = 10.0) -> np.ndarray:
    """The clip's samples as int16 (samples,)."""
    y = synthesize(clip.machine, clip.section, clip.condition, clip.fault, clip.severity,
                   np.random.default_rng(clip.seed), duration)
    return np.clip(np.round(y * 32767.0), -32768, 32767).astype(np.int16)


def _write(root: Path, clip: Clip, duration: float) -> None:
    data = render(clip, duration)
    with atomic_path(root / clip.relpath) as tmp:
        sf.write(tmp, data, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def _write_many(args: tuple[str, list[Clip], float]) -> int:
    root, clips, duration = args
    for clip in clips:
        _write(Path(root), clip, duration)
    return len(clips)


def write_ground_truth(root: Path, clips: Iterable[Clip]) -> list[Path]:
    """Write the evaluator's ``ground_truth_<machine>_section_XX_<domain>_test.csv`` files."""
    groups: dict[tuple[str, str, str], list[tuple[str, int]]] = {}
    for c in clips:
        if c.dataset == "eval_data" and "/train/" not in c.relpath:
            name = c.relpath.rsplit("/", 1)[1]
            groups.setdefault((c.machine, c.section, c.domain), []).append((name, int(c.anomaly)))
    paths = []
    for (machine, section, domain), rows in sorted(groups.items()):
        path = ground_truth_dir(root) / csv_name("ground_truth", machine, section, domain)
        atomic_write_text(path, "".join(f"{name},{y}\n" for name, y in sorted(rows)))
        paths.append(path)
    return paths


def _check_settings(machines, dev_sections, eval_sections, n_source, n_target, n_test, duration):
    for m in machines:
        if m not in MACHINES:
            raise ValueError(f"unknown machine type {m!r}; expected some of {', '.join(MACHINES)}")
    for s in (*dev_sections, *eval_sections):
        if not (isinstance(s, str) and len(s) == 2 and s.isdigit()):
            raise ValueError(f"section {s!r}: expected two digits such as '00'")
    both = set(dev_sections) & set(eval_sections)
    if both:
        raise ValueError(f"sections {sorted(both)} are both development and evaluation sections")
    if not machines or not (dev_sections or eval_sections):
        raise ValueError("expected at least one machine type and one section")
    if n_source < 1 or n_target < 0 or n_test < 0:
        raise ValueError(f"expected n_source >= 1, n_target >= 0, n_test >= 0; "
                         f"got {n_source}, {n_target}, {n_test}")
    if not 0.5 <= duration <= 60:
        raise ValueError(f"duration {duration} s: expected 0.5 to 60 s")


def generate(root: str | Path, *, machines: Sequence[str] = MACHINES,
             dev_sections: Sequence[str] = DEV_SECTIONS,
             eval_sections: Sequence[str] = EVAL_SECTIONS, n_source: int = 100,
             n_target: int = 3, n_test: int = 40, duration: float = 10.0, seed: int = 0,
             workers: int = 1, progress: bool = False) -> Path:
    """Write the synthetic data set into ``root`` and return it.

    ``n_test`` clips per section and domain, half of them anomalous. A root that already holds
    the same settings is left as it is; one with other settings written here is replaced; a
    root holding any other data set is refused (DataError), so real data is never mixed in.
    """
    machines, dev_sections = tuple(machines), tuple(dev_sections)
    eval_sections = tuple(eval_sections)
    _check_settings(machines, dev_sections, eval_sections, n_source, n_target, n_test, duration)
    root = Path(root)
    settings = {"format": FORMAT, "machines": list(machines), "dev_sections": list(dev_sections),
                "eval_sections": list(eval_sections), "n_source": n_source,
                "n_target": n_target, "n_test": n_test, "duration": duration, "seed": seed}
    clips = plan(machines=machines, dev_sections=dev_sections, eval_sections=eval_sections,
                 n_source=n_source, n_target=n_target, n_test=n_test, seed=seed)
    marker = root / MARKER
    if marker.is_file():
        old = json.loads(marker.read_text())
        if (old.get("settings") == settings and old.get("complete")
                and all((root / c.relpath).is_file() for c in clips)):
            log.info("%s already holds this synthetic data set", root)
            return root
        for name in ("dev_data", "eval_data"):  # ours (the marker says so): start afresh
            shutil.rmtree(root / name, ignore_errors=True)
    elif any((root / name).exists() for name in ("dev_data", "eval_data")):
        raise DataError(f"{root} already holds dev_data/ or eval_data/ that asd.synthetic did not "
                        f"write (no {MARKER}); choose an empty folder for the synthetic data")
    atomic_write_text(marker, json.dumps({"settings": settings, "complete": False}, indent=1))
    jobs = [(str(root), clips[i:i + 16], duration) for i in range(0, len(clips), 16)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(clips), unit="clip", desc="synthetic data")
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for done in pool.map(_write_many, jobs):
                if bar is not None:
                    bar.update(done)
    else:
        for job in jobs:
            done = _write_many(job)
            if bar is not None:
                bar.update(done)
    if bar is not None:
        bar.close()
    write_ground_truth(root, clips)
    atomic_write_text(marker, json.dumps({"settings": settings, "complete": True}, indent=1))
    log.info("wrote %d clips into %s", len(clips), root)
    return root


# ---------------------------------------------------------------- command line

def _names(text: str) -> tuple[str, ...]:
    return tuple(p for p in text.replace(" ", ",").split(",") if p)


def main(argv: list[str] | None = None) -> int:
    from asd.index import resolve_root

    p = argparse.ArgumentParser(prog="python -m asd.synthetic",
                                description="Write the synthetic DCASE 2021 Task 2 data set.")
    p.add_argument("args", nargs="*", metavar="[ROOT] [key.sub=value]",
                   help="output folder (default: data.root of the config) and config overrides")
    p.add_argument("--config", default=None, help="config file (default: config.yml)")
    p.add_argument("--machines", type=_names, default=MACHINES,
                   help="comma-separated machine types")
    p.add_argument("--sections-dev", type=_names, default=DEV_SECTIONS,
                   help="development sections, comma-separated ('' for none)")
    p.add_argument("--sections-eval", type=_names, default=EVAL_SECTIONS,
                   help="evaluation sections, comma-separated ('' for none)")
    p.add_argument("--n-source", type=int, default=100, help="source training clips per section")
    p.add_argument("--n-target", type=int, default=3, help="target training clips per section")
    p.add_argument("--n-test", type=int, default=40,
                   help="test clips per section and domain (half anomalous)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per clip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="processes writing clips (default: the cores, at most 8)")
    ns = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        root = resolve_root(ns.args, ns.config)
        generate(root, machines=ns.machines, dev_sections=ns.sections_dev,
                 eval_sections=ns.sections_eval, n_source=ns.n_source, n_target=ns.n_target,
                 n_test=ns.n_test, duration=ns.duration, seed=ns.seed, workers=ns.workers,
                 progress=True)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
