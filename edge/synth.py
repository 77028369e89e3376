"""Synthetic pump-like machines with injectable faults (numpy only).

Used by the simulator, the tests and the default model, so that nothing depends on a data set
a user does not have. One machine has six sensors driven by one shared operating state (the
load): vibration, motor current, outlet pressure, temperature (a lagged response to load),
volume flow and supply voltage. Correlations between channels are what the detectors learn;
faults break them in the ways real sensors and pumps fail.

Everything is seeded: the same seed and faults give the same array, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

FaultKind = Literal["spike", "drift", "stuck", "noise", "decorrelate"]
FAULT_KINDS: tuple[FaultKind, ...] = ("spike", "drift", "stuck", "noise", "decorrelate")

# name, unit, value at zero load, gain per unit load, noise standard deviation
_CHANNELS: tuple[tuple[str, str, float, float, float], ...] = (
    ("vibration", "mm/s", 1.2, 2.0, 0.08),
    ("current", "A", 8.0, 14.0, 0.25),
    ("pressure", "bar", 1.5, 4.0, 0.06),
    ("temperature", "degC", 38.0, 22.0, 0.15),
    ("flow", "m3/h", 4.0, 26.0, 0.35),
    ("voltage", "V", 231.0, -4.0, 0.6),
)
CHANNELS: tuple[tuple[str, str], ...] = tuple((name, unit) for name, unit, *_ in _CHANNELS)
CHANNEL_NAMES: tuple[str, ...] = tuple(name for name, _ in CHANNELS)
SAMPLE_PERIOD_S = 1.0


@dataclass(frozen=True)
class Fault:
    """One injected fault on one channel over ``[start, start + duration)`` samples.

    ``magnitude`` scales the fault in units of the channel's load gain (``decorrelate``
    and ``stuck`` ignore it).
    """

    kind: FaultKind
    channel: str
    start: int
    duration: int
    magnitude: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind {self.kind!r} is not one of {', '.join(FAULT_KINDS)}")
        if self.channel not in CHANNEL_NAMES:
            raise ValueError(f"fault channel {self.channel!r} is not one of {', '.join(CHANNEL_NAMES)}")
        if self.start < 0 or self.duration < 1:
            raise ValueError(f"fault window start={self.start} duration={self.duration} must be >= 0 and >= 1")


def load_profile(n_steps: int, rng: np.random.Generator) -> np.ndarray:
    """Operating state in [0, 1]: a base level, a slow duty cycle and an AR(1) wander."""
    t = np.arange(n_steps)
    base = rng.uniform(0.35, 0.65)
    period = rng.uniform(600, 1800)
    cycle = 0.18 * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    wander = np.empty(n_steps)
    acc = 0.0
    steps = rng.normal(0, 0.012, n_steps)
    for i in range(n_steps):
        acc = 0.995 * acc + steps[i]
        wander[i] = acc
    load: np.ndarray = np.clip(base + cycle + wander, 0.0, 1.0)
    return load


def simulate(n_steps: int, *, seed: int, faults: Sequence[Fault] = (), load_offset: float = 0.0, noise_scale: float = 1.0,
             drift_per_h: float | Sequence[float] = 0.0, load: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Readings ``(n_steps, 6)`` float64 in :data:`CHANNEL_NAMES` order and a bool label per step.

    A step is labelled anomalous while any fault is active on it. A machine of its own:
    ``load_offset`` moves its operating point (the load, 0-1 for the default machines, is offset
    by it and may leave that range; every channel follows along its own load line),
    ``noise_scale`` multiplies every channel's noise, and ``drift_per_h`` moves each channel's
    level slowly (one number for every channel or one per channel, in the channel's load gains per
    hour of samples). Faults are injected after all three. The defaults draw the same random
    numbers as without them: the same seed gives the same array as before they existed. ``load``
    (``n_steps`` values) is an operating state to follow instead of one drawn from the seed, so that
    machines of one site can share their duty (each still has its own noise and offset).
    """
    rng = np.random.default_rng(seed)
    load = (load_profile(n_steps, rng) if load is None else np.asarray(load, dtype=np.float64)[:n_steps]) + load_offset
    lagged = _lag(load, 0.02)
    values = np.empty((n_steps, len(_CHANNELS)))
    for j, (name, _unit, offset, gain, sd) in enumerate(_CHANNELS):
        drive = lagged if name == "temperature" else load
        values[:, j] = offset + gain * drive + rng.normal(0, sd * noise_scale, n_steps)
    drift = np.broadcast_to(np.asarray(drift_per_h, dtype=np.float64), (len(_CHANNELS),))
    if drift.any():
        hours = np.arange(n_steps) * (SAMPLE_PERIOD_S / 3600.0)
        values += np.outer(hours, drift * np.abs([gain for *_, gain, _sd in _CHANNELS]))
    labels = np.zeros(n_steps, dtype=bool)
    for fault in faults:
        _inject(values, fault, rng, n_steps)
        labels[fault.start: fault.start + fault.duration] = True
    return values, labels


def random_faults(n_steps: int, *, seed: int, count: int, kinds: Sequence[FaultKind] = FAULT_KINDS,
                  min_duration: int = 30, max_duration: int = 120, margin: int = 200) -> list[Fault]:
    """``count`` non-overlapping faults of random kind and channel, at least ``margin`` steps apart."""
    rng = np.random.default_rng(seed)
    slot = n_steps // max(count, 1)
    if slot < max_duration + margin:
        raise ValueError(f"{count} faults of up to {max_duration} steps need more than {n_steps} steps")
    faults = []
    for k in range(count):
        duration = int(rng.integers(min_duration, max_duration + 1))
        start = k * slot + margin + int(rng.integers(0, slot - duration - margin + 1))
        faults.append(Fault(kind=kinds[int(rng.integers(len(kinds)))], channel=CHANNEL_NAMES[int(rng.integers(len(CHANNEL_NAMES)))],
                            start=start, duration=duration, magnitude=float(rng.uniform(0.6, 1.0))))
    return faults


def _lag(x: np.ndarray, alpha: float) -> np.ndarray:
    out = np.empty_like(x)
    acc = x[0]
    for i, v in enumerate(x):
        acc += alpha * (v - acc)
        out[i] = acc
    return out


def _inject(values: np.ndarray, fault: Fault, rng: np.random.Generator, n_steps: int) -> None:
    j = CHANNEL_NAMES.index(fault.channel)
    _name, _unit, offset, gain, sd = _CHANNELS[j]
    lo, hi = fault.start, min(fault.start + fault.duration, n_steps)
    if lo >= hi:
        return
    span = hi - lo
    scale = abs(gain) * fault.magnitude
    seg = values[lo:hi, j]
    if fault.kind == "spike":
        hits = rng.random(span) < 0.25
        hits[span // 2] = True
        seg += hits * rng.choice([-1.0, 1.0], span) * scale * 0.8
    elif fault.kind == "drift":
        seg += np.linspace(0, 0.6 * scale, span)
    elif fault.kind == "stuck":
        seg[:] = seg[0]
    elif fault.kind == "noise":
        seg += rng.normal(0, max(8 * sd, 0.15 * scale), span)
    else:  # decorrelate: the channel follows a load of its own
        other = load_profile(span, rng)
        seg[:] = offset + gain * (1.0 - other) + rng.normal(0, sd, span)
