"""A simulated fleet for the acceptance test of the adaptive layer (``test_fleet_acceptance.py``).

Every device is an :func:`edge.synth.simulate` machine of its own: its operating point (the load
offset by up to +-25 % of its 0-1 range, so some run outside what the default model was trained on),
its noise (x0.75 to x1.5), a slow drift of every sensor's level (up to ``drift_per_h`` load gains an
hour either way, by default 0.005: 3 % of the channel's span over 6 h) and faults of every kind at
random times after its first hour. Three devices have a role: ``dev-00`` carries a two-hour stuck
flow sensor, ``dev-07`` is the one an operator rebaselines, and ``dev-30`` first appears mid-run.

Readings are stamped from ``t0`` (in the recent past: the agent drops readings stamped ahead of its
clock) one second apart, and published as one batch payload per device and ``batch_s`` seconds, in
time order across devices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.agent import Agent
from edge.contract import Reading, decode_event, encode_readings, readings_topic
from edge.synth import CHANNEL_NAMES, Fault, random_faults, simulate

HOUR_S = 3600
WINDOW = 32  # the default model's window and stride, in readings (1 Hz)
STRIDE = 8


@dataclass(frozen=True)
class Device:
    """One simulated device; ``faults`` start in its own steps (0 is its first reading)."""

    device_id: str
    seed: int
    first_s: int          # its first reading, in seconds after the fleet's t0
    steps: int
    load_offset: float
    noise_scale: float
    drift_per_h: tuple[float, ...]
    faults: tuple[Fault, ...] = ()
    values: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values, _ = simulate(self.steps, seed=self.seed, faults=self.faults, load_offset=self.load_offset,
                             noise_scale=self.noise_scale, drift_per_h=self.drift_per_h)
        object.__setattr__(self, "values", values)

    def spans(self, t0: float) -> list[tuple[float, float]]:
        """Each fault's first and last faulty reading's ``ts``."""
        return [(t0 + self.first_s + f.start, t0 + self.first_s + f.start + f.duration - 1) for f in self.faults]

    def windows_between(self, lo_s: int, hi_s: int) -> int:
        """Windows made of its readings stamped in ``[t0 + lo_s, t0 + hi_s)`` fed to fresh windows."""
        n = max(0, min(hi_s, self.first_s + self.steps) - max(lo_s, self.first_s))
        return 0 if n < WINDOW else (n - WINDOW) // STRIDE + 1


def build_fleet(hours: float, *, seed: int = 0, faults_per_device: int = 4, drift_per_h: float = 0.005) -> list[Device]:
    """30 devices for ``hours`` from t0, and ``dev-30`` from ``hours / 2 - 0.5`` to the end (see the module docstring)."""
    rng = np.random.default_rng(seed)
    steps = int(hours * HOUR_S)

    def device(i: int, first_s: int, n: int, faults: Sequence[Fault]) -> Device:
        drift = tuple(rng.uniform(-drift_per_h, drift_per_h, len(CHANNEL_NAMES)))
        return Device(f"dev-{i:02d}", seed=1000 + i, first_s=first_s, steps=n, load_offset=float(rng.uniform(-0.25, 0.25)),
                      noise_scale=float(rng.uniform(0.75, 1.5)), drift_per_h=drift, faults=tuple(faults))

    def after_first_hour(n: int, count: int, fault_seed: int) -> list[Fault]:
        """``count`` faults of 1-5 minutes, of random kinds and channels, after the first hour of ``n`` steps."""
        found = random_faults(n - HOUR_S, seed=fault_seed, count=count, min_duration=60, max_duration=300)
        return [Fault(f.kind, f.channel, f.start + HOUR_S, f.duration, f.magnitude) for f in found]

    fleet = []
    for i in range(30):
        if i == 0:  # a stuck flow sensor for two hours, across the restart at mid-run, and nothing else
            faults = [Fault("stuck", "flow", start=steps // 2 - 45 * 60, duration=2 * HOUR_S)]
        else:
            faults = after_first_hour(steps, faults_per_device, 2000 + i)
        fleet.append(device(i, 0, steps, faults))
    late_first = steps // 2 - HOUR_S // 2
    fleet.append(device(30, late_first, steps - late_first, after_first_hour(steps - late_first, 2, 2030)))
    return fleet


def payloads(fleet: Sequence[Device], t0: float, lo_s: int, hi_s: int, *, batch_s: int, prefix: str) -> list[tuple[str, bytes]]:
    """Every device's readings stamped in ``[t0 + lo_s, t0 + hi_s)``, one payload per device and
    ``batch_s`` seconds, in time order across devices (``lo_s`` and ``hi_s`` multiples of ``batch_s``)."""
    out = []
    for start in range(lo_s, hi_s, batch_s):
        for d in fleet:
            a, b = max(start, d.first_s) - d.first_s, min(start + batch_s, d.first_s + d.steps) - d.first_s
            if a >= b:
                continue
            base = t0 + d.first_s
            readings = [Reading(d.device_id, base + i, dict(zip(CHANNEL_NAMES, row, strict=True)))
                        for i, row in zip(range(a, b), d.values[a:b].tolist(), strict=True)]
            out.append((readings_topic(d.device_id, prefix), encode_readings(readings)))
    return out


@dataclass(frozen=True)
class Scoreboard:
    """One agent's events against the injected faults."""

    device_days: float
    events: int
    false_alarms: int          # events whose window holds no faulty reading
    faults: int
    caught: int                # faults with at least one event whose window holds one of its readings
    missed: tuple[str, ...] = ()  # "device kind/channel duration magnitude" of each fault not caught

    @property
    def false_alarms_per_device_day(self) -> float:
        return self.false_alarms / self.device_days

    @property
    def recall(self) -> float:
        return self.caught / self.faults if self.faults else 1.0


def event_windows(values: Iterable[bytes]) -> dict[str, list[tuple[float, float]]]:
    """``(window_start, window_end)`` of each anomaly event, by device."""
    out: dict[str, list[tuple[float, float]]] = {}
    for v in values:
        e = decode_event(v)
        out.setdefault(e.device_id, []).append((e.window_start, e.window_end))
    return out


def score(fleet: Sequence[Device], t0: float, events: dict[str, list[tuple[float, float]]]) -> Scoreboard:
    """False alarms and fault recall of one agent's events."""
    false_alarms = caught = faults = 0
    missed = []
    for d in fleet:
        windows = np.array(events.get(d.device_id, []), dtype=np.float64).reshape(-1, 2)
        inside = np.zeros(len(windows), dtype=bool)
        for fault, (lo, hi) in zip(d.faults, d.spans(t0), strict=True):
            hit = (windows[:, 1] >= lo) & (windows[:, 0] <= hi)
            inside |= hit
            faults += 1
            caught += bool(hit.any())
            if not hit.any():
                missed.append(f"{d.device_id} {fault.kind}/{fault.channel} {fault.duration} s x{fault.magnitude:.2f}")
        false_alarms += int((~inside).sum())
    days = sum(d.steps for d in fleet) / 86_400
    return Scoreboard(days, sum(len(v) for v in events.values()), false_alarms, faults, caught, tuple(missed))


def sample(agent: Agent, name: str) -> float:
    """The agent's counter ``edgewatch_agent_<name>_total``, summed over its labels."""
    return sum(s.value for m in agent.registry.collect() if m.name == f"edgewatch_agent_{name}"
               for s in m.samples if s.name.endswith("_total"))


def events_written(agent: Agent) -> float:
    """Process anomaly events and sensor fault events (each check's counter), all on the anomalies topic."""
    return sample(agent, "anomalies") + sample(agent, "sensor_faults")
