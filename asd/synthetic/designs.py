"""The machines' fixed designs and operating conditions, and the random streams behind them.

Every (machine type, section) is its own machine, designed once from a fixed seed. The
sections of a type are variants of one design, as in the real data set (one kind of machine,
other units and conditions): each continuous design value lies ``SECTION_SPREAD`` of the way
from the type's value towards a section's own draw, and counts (blades, teeth, vanes) are the
type's or a neighbour. The attribute part of a training name holds the operating condition
that shapes the sound (speed, load, car model, valve pattern, microphone), so a class has
several normal modes. The target domain of a section is shifted in one of three ways (fixed
per section): another speed, louder and differently coloured background noise with factory
hum, or another microphone position.
"""

from __future__ import annotations

import functools
import hashlib
from types import SimpleNamespace

import numpy as np

from asd.infra.data import DataError

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
FORMAT = 4  # bump when the sounds change, so stale data sets are regenerated
TWO_PI = 2.0 * np.pi


def _key(*parts: object) -> int:
    """A stable 64-bit number for a tuple of names (Python's hash() is salted per process)."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(_key(*parts))


@functools.cache
def design(machine: str, section: str) -> SimpleNamespace:
    """The fixed character of one (machine type, section): frequencies, colours, conditions.

    It does not depend on the generation seed, so clips generated with another seed are new
    recordings of the same machines.
    """
    r = _rng("design", machine, section)
    base = _rng("design", machine)  # the machine type's character, shared by its sections

    def u(lo: float, hi: float, size: int | None = None):
        """A section's value: the type's base value moved SECTION_SPREAD of the way towards
        the section's own draw, so sections are variants of one kind of machine."""
        b, own = base.uniform(lo, hi, size), r.uniform(lo, hi, size)
        return b + SECTION_SPREAD * (own - b)

    def integer(lo: int, hi: int) -> int:
        """The type's base count, or a neighbour of it for some sections."""
        return int(np.clip(base.integers(lo, hi) + r.integers(-1, 2), lo, hi - 1))

    shift = SHIFTS[(_key(machine) + int(section)) % len(SHIFTS)]
    d = SimpleNamespace(
        machine=machine,
        section=section,
        shift=shift,
        target_speed=float(r.choice([0.72, 1.35])),
        mic=[
            (u(-2.0, 0.5), u(600, 3000), u(2.0, 6.0)),  # (tilt dB/oct, resonance Hz, gain dB)
            (u(-5.0, -2.5), u(1500, 5000), u(6.0, 10.0)),
        ],  # the other microphone position
        bg_slope=u(-3.0, -1.0),
        bg_db=u(-20.0, -14.0),  # background relative to the machine
        bg_target_slope=u(-6.0, -4.0),
        bg_target_db=u(-10.0, -6.0),
        hum=u(48.0, 62.0),
        level_db=u(-24.0, -20.0),
    )
    if machine == "fan":
        d.f_rot = u(14.0, 26.0)
        d.blades = integer(5, 10)
        d.bpf_amps = 10 ** (-u(0, 12, 6) / 20) * np.array([1, 0.6, 0.4, 0.3, 0.2, 0.15])
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
        d.motor_amps = 10 ** (-u(0, 15, 8) / 20) * np.array([0.5, 1, 0.3, 0.5, 0.2, 0.3, 0.1, 0.1])
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
        d.model_fc = {m: u(500, 3000) for m in d.models}  # body resonance per model
        d.model_odd = {m: u(0.2, 1.0) for m in d.models}  # weight of even motor harmonics
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
    c = {
        "speed": 1.0,
        "load": 1.0,
        "mic": int(target and d.shift == "channel"),
        "noise": int(target and d.shift == "noise"),
    }
    kind = d.machine if d.machine in _CONDITIONS else "toy"  # ToyCar, ToyTrain
    _CONDITIONS[kind](d, c, target and d.shift == "speed", r)
    return c


def _fan_condition(d: SimpleNamespace, c: dict, speed_shift: bool, r: np.random.Generator):
    k = int(r.integers(1, 4))
    if speed_shift:
        k = 4 if d.target_speed > 1 else 0
    c["speed"] = {0: 0.72, 1: 0.85, 2: 1.0, 3: 1.15, 4: 1.35}[k]
    c["load"] = c["speed"] ** 2
    c["attributes"] = f"strength_{k}_{'factory' if c['noise'] else 'ambient'}"


def _gearbox_condition(d: SimpleNamespace, c: dict, speed_shift: bool, r: np.random.Generator):
    mv = int(r.choice(d.volts))
    if speed_shift:
        mv = 2700 if d.target_speed > 1 else 700
    wt = int(r.choice([0, 50, 100, 150]))
    c["speed"], c["load"] = mv / 1500, 1.0 + wt / 150
    c["attributes"] = f"{wt}_g_{d.arm}_mm_{mv}_mV_{'noise' if c['noise'] else 'none'}"


def _pump_condition(d: SimpleNamespace, c: dict, speed_shift: bool, r: np.random.Generator):
    q = int(r.choice([40, 60, 80]))
    if speed_shift:
        q = 110 if d.target_speed > 1 else 30
    h = int(r.choice([5, 10]))
    c["speed"], c["load"] = q / 60, h / 7.5
    c["attributes"] = f"flow_{q}_head_{h}"


def _slider_condition(d: SimpleNamespace, c: dict, speed_shift: bool, r: np.random.Generator):
    v = int(round(d.vel0 * r.choice([0.85, 1.0, 1.15]) / 10) * 10)
    if speed_shift:
        v = int(round(d.vel0 * d.target_speed / 10) * 10)
    a = float(r.choice([0.05, 0.11, 0.2, 0.3]))
    c["speed"], c["load"], c["vel"] = v / d.vel0, 0.5 + 2 * a, v
    c["attributes"] = f"vel_{v}_ac_{a:.2f}"


def _valve_condition(d: SimpleNamespace, c: dict, speed_shift: bool, r: np.random.Generator):
    p = int(r.choice(d.patterns_source))
    if speed_shift:
        p = d.pattern_target
    c["pattern"] = p
    c["attributes"] = f"pat_{p:02d}"


def _toy_condition(d: SimpleNamespace, c: dict, speed_shift: bool, r: np.random.Generator):
    model = str(r.choice(d.models))
    s = int(r.choice(d.speeds[1:4]))
    if speed_shift:
        s = d.speeds[4] if d.target_speed > 1 else d.speeds[0]
    c["model"], c["speed"] = model, s / d.speeds[2]
    unit = "V" if d.machine == "ToyCar" else ""
    c["attributes"] = f"{model}Spd{s}{unit}Mic{1 + c['mic']}"


# Each machine type's operating condition (the draws of a type in a fixed order: its clips
# must stay the same for a seed).
_CONDITIONS = {
    "fan": _fan_condition,
    "gearbox": _gearbox_condition,
    "pump": _pump_condition,
    "slider": _slider_condition,
    "valve": _valve_condition,
    "toy": _toy_condition,
}
