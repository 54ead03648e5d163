"""The machine sounds and their faults, and one whole clip (``synthesize``).

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

Each machine function takes (design d, condition c, fault name or None, severity in [0, 1],
rng r, samples n) and returns the machine sound (n,). Normal clips vary at random around the
design (speed, component levels, resonance frequencies, harmonic levels); a fault's strength
goes from barely there (severity 0) to clear (severity 1) along the range written beside it.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from asd.synthetic.designs import SAMPLE_RATE, TWO_PI, _rng, design
from asd.synthetic.sources import (
    _ambience,
    _band,
    _bearing,
    _bursts,
    _db,
    _drift,
    _gate,
    _grid,
    _impacts,
    _kernel,
    _noise,
    _noise_spec,
    _peak,
    _periodic,
    _phase,
    _tilt,
    _tones,
    _unit,
)


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
    x = air * (1 + depth * np.sin(rot_phase))
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
    mod = 1 + np.float32(2 * _db(side_db)) * np.cos(shaft_phase)  # sidebands
    if fault == "misalignment":
        mod += np.float32(_mix(0.05, 0.25, sev)) * np.sin(2 * shaft_phase)
    x *= mod
    casing = _tilt(f, d.slope + r.normal(0, 0.3)) * _peak(f, _near(r, d.casing_fc), 0.6, 8)
    x += _db(d.noise_db) * _vary(r) * c["load"] * _noise(casing, r, n)
    x += _db(-26) * _vary(r, 2) * _tones(np.full(n, 2 * d.hum, np.float32), [1, 0.3], r)  # motor
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
    x = _db(flow_db) * c["load"] * flow * (1 + depth * np.sin(shaft_phase))
    x += _db(d.vp_db) * _vary(r) * _tones(d.vanes * f_s, [1, 0.5, 0.25], r)
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
    # one period: out, dwell, back, dwell; the strokes start at these times (s)
    offset = (1 - r.uniform(0, 1)) * period % period  # time of the first period start
    starts = offset + period * np.arange(-1, int(n / SAMPLE_RATE / period) + 2)
    strokes = np.concatenate([starts, starts + 0.5 * period])
    moving = _gate(n, strokes, strokes + move, ramp_s=0.03)
    whine_f = np.full(n, d.whine_per_vel * v, np.float32) * _drift(n, r, 0.003)
    if fault == "loose_belt":
        wob = 1 + _mix(0.008, 0.04, sev) * np.sin(
            TWO_PI * r.uniform(2, 6) * t + r.uniform(0, TWO_PI)
        )
        whine_f = whine_f * wob.astype(np.float32)
    fr_fc = _near(r, d.friction_fc * (0.8 + 0.2 * c["speed"]), 0.04)
    fr_db = d.friction_db + r.normal(0, 1.5)
    if fault == "dry":
        fr_fc *= 1 + _mix(0.03, 0.18, sev)
        fr_db += _mix(0.7, 3.5, sev)
    friction = _noise(_band(f, fr_fc, 0.9) * _tilt(f, -2.0), r, n)
    whine = 0.5 * _vary(r) * _tones(whine_f, [1, 0.4, 0.2], r)
    x = (_db(fr_db) * friction + whine) * moving
    x += _db(-30) * _noise(_tilt(f, -4.0), r, n)  # the idle motor drive
    ends = strokes + move
    kernel = _kernel([_near(r, d.click_fc), 2.3 * d.click_fc], 0.006, r)
    amps = c["load"] * np.abs(1 + 0.15 * r.standard_normal(ends.size))
    x += _db(d.click_db) * 2 * _impacts(n, np.sort(ends), amps, kernel)
    if fault == "rail_damage":
        hits = np.concatenate(
            [starts + d.damage_pos * move, starts + 0.5 * period + (1 - d.damage_pos) * move]
        )
        k2 = _kernel([2.7 * d.click_fc, 4100.0], 0.002, r)
        x += (
            _db(d.click_db + _mix(-22, -8, sev))
            * 2
            * _impacts(n, np.sort(hits), np.ones(hits.size), k2)
        )
    elif fault == "squeal":
        sq_f = np.full(n, d.squeal_fc, np.float32) * _drift(n, r, 0.01)
        x += _db(_mix(-34, -18, sev)) * _tones(sq_f, [1.0], r) * moving * _bursts(n, r, 0.5, 0.8)
    return x


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
    x += _db(d.pump_db) * 4 * _vary(r, 2) * _tones(pump, [1, 0.7, 0.5, 0.3, 0.2], r)
    return x


def _toy(d, c, fault, sev, r, n):
    t, _, f = _grid(n)
    model = c["model"]
    base = d.hz_per_unit * c["speed"] * (28 if d.machine == "ToyCar" else 8)
    motor_f = _near(r, base, 0.01) * _drift(n, r, 0.006)
    even = d.model_odd[model]
    amps = [1, even, 0.6, 0.5 * even, 0.4, 0.3 * even, 0.25, 0.2 * even]
    x = _db(d.motor_db) * _vary(r) * _tones(motor_f, amps, r)
    wheel_f = motor_f / d.wheel_div
    wheel_phase = _phase(wheel_f, r)
    depth = 0.1 * _near(r, 1.0, 0.2)
    if fault == "shaft":
        depth += _mix(0.08, 0.4, sev)
    body = _near(r, d.model_fc[model])
    shape = (
        _tilt(f, d.slope + r.normal(0, 0.3))
        * _peak(f, _near(r, d.noise_fc, 0.04), 0.7, 8)
        * _peak(f, body, 0.3, 6)
    )
    x += _noise(shape, r, n) * (1 + depth * np.sin(wheel_phase))
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


_MACHINE_SOUND = {
    "fan": _fan,
    "gearbox": _gearbox,
    "pump": _pump,
    "slider": _slider,
    "valve": _valve,
    "ToyCar": _toy,
    "ToyTrain": _toy,
}


def synthesize(
    machine: str,
    section: str,
    condition: dict,
    fault: str | None,
    severity: float,
    rng: np.random.Generator,
    duration: float = 10.0,
) -> np.ndarray:
    """One clip (samples,) float32 in [-1, 1]: machine sound, microphone, background, gain."""
    d = design(machine, section)
    n = int(round(duration * SAMPLE_RATE))
    _, _, f = _grid(n)
    x = _MACHINE_SOUND[machine](d, condition, fault, severity, rng, n)
    x = _unit(x)
    slope, fc, gain = d.mic[condition["mic"]]
    spec = scipy.fft.rfft(x) * (_tilt(f, slope) * _peak(f, fc, 0.5, gain))
    spec *= np.float32(1.0 / np.sqrt(2.0 * np.vdot(spec, spec).real / n**2))  # unit RMS again
    if condition["noise"]:
        bg_shape = _tilt(f, d.bg_target_slope) * (
            1 + 4 * _band(f, d.hum, 0.02) + 2 * _band(f, 3 * d.hum, 0.02)
        )
        bg_db = d.bg_target_db
    else:
        bg_shape, bg_db = _tilt(f, d.bg_slope + rng.normal(0, 0.3)), d.bg_db
    spec += _db(bg_db + rng.uniform(-3, 3)) * _noise_spec(bg_shape, rng, n)
    level = _db(d.level_db + rng.uniform(-2, 2)) * (1 if condition["mic"] == 0 else _db(-4))
    y = scipy.fft.irfft(spec, n).astype(np.float32, copy=False)
    y += _ambience(n, np.random.default_rng(rng.integers(2**63)))  # its own stream
    y *= np.float32(level)
    peak = float(np.abs(y).max())
    if peak > 0.99:
        y *= np.float32(0.99 / peak)
    return y
