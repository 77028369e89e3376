"""A simulated fleet in groups (issue 16): sites of pumps sharing their duty, one drifting slowly
away from its peers, a sensor fault of each kind the agent checks (:mod:`edge.sensorhealth`),
devices that go silent and resume, and process faults on the others; with the ground truth of
every injected thing as the incident kind it should become.

- Groups: ``plant-a``, ``plant-b``, ... (device ``plant-a-pump-03``: the processor's site is the
  first two ``-`` parts, ``[fleet] prefix_parts = 2``). The pumps of a group follow one load
  profile, each with its own small offset and its own noise, so peers agree closely.
- Peer drift: a device's load moves by ``drift_load`` over the run, every channel along its own
  load line, so the channels stay consistent with each other (its own model has no reason to flag
  it) while the device leaves its group: ``peer_outlier``.
- Sensor faults, one device each: ``stuck`` (a channel frozen at its last value), ``range`` (a
  channel pinned far above anything it reads otherwise), ``dropout`` (2 readings of every 5
  missing), ``clock`` (timestamps off the sample grid by 0 / +0.4 / -0.4 periods in turn) and
  ``rate`` (only every 3rd reading: a sensor sampling 3x slower): ``sensor_fault``.
- Silence: a device sends nothing for a stretch (``silence_steps``, or as long as a sensor fault), then
  resumes: ``device_silent``.
- A fault-free lead (``fault_free_steps``): nothing is injected before it, so a run can show that a
  healthy fleet raises nothing.
- Process faults (edge.synth's spike, drift, noise, decorrelate) on the devices without a role:
  ``incident``; edge.synth's ``stuck`` is a frozen sensor, so it counts as ``sensor_fault``.

Readings removed (dropout, rate, silence) keep the others' publish step (``DeviceStream.tick``),
so every device stays in step with its peers in event time. Seeded: the same plan, steps and seed
give the same fleet, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np

from edge.simulator import DeviceStream, InjectedFault, plan_faults
from edge.synth import CHANNEL_NAMES, Fault, FaultKind, load_profile, random_faults, simulate

SensorCheck = Literal["stuck", "range", "dropout", "clock", "rate"]
SENSOR_CHECKS: tuple[SensorCheck, ...] = ("stuck", "range", "dropout", "clock", "rate")
IncidentKind = Literal["incident", "sensor_fault", "peer_outlier", "device_silent"]
INJECTED_KINDS: tuple[IncidentKind, ...] = ("incident", "sensor_fault", "peer_outlier", "device_silent")
CLOCK_OFFSETS = (0.0, 0.4, -0.4)  # periods, in turn: steps of 1.4, 0.2, 1.4 periods (skewed and jittered)
DROPOUT_KEEP = (True, True, True, False, False)  # 2 of every 5 readings missing: 40 % of a window, steps of 1 or 3 periods
RATE_EVERY = 3  # the slow sensor keeps every 3rd reading


@dataclass(frozen=True)
class FleetPlan:
    """What a grouped fleet holds; devices are spread over the groups as evenly as they go."""

    devices: int = 50
    groups: int = 5
    peer_drift: int = 1                                       # devices drifting away from their group
    sensor_faults: tuple[SensorCheck, ...] = SENSOR_CHECKS    # one device for each
    silent: int = 1                                           # devices that go silent, then resume
    faults_per_device: int = 1                                # process faults on each device without a role
    fault_kinds: tuple[FaultKind, ...] = ("spike", "drift", "noise", "decorrelate")
    drift_load: float = 0.3    # how far the drifting device's load moves over the run (the load is 0-1)
    span_share: float = 0.2    # a sensor fault's or a silence's length, as a share of the run (after the lead)
    fault_free_steps: int = 0  # a lead with nothing injected: the drift starts, and every fault lies, after it
    silence_steps: int = 0     # a silence's length in readings (0: span_share of the run)

    def problems(self) -> list[str]:
        """What makes the plan impossible, as sentences (empty: it is fine)."""
        roles = self.peer_drift + len(self.sensor_faults) + self.silent
        out = []
        if self.groups < 1 or self.devices < self.groups:
            out.append(f"{self.devices} devices cannot fill {self.groups} groups")
        if roles > self.devices:
            out.append(f"{roles} devices with a role (peer drift, sensor faults, silence) but only {self.devices} devices")
        unknown = sorted(set(self.sensor_faults) - set(SENSOR_CHECKS))
        if unknown:
            out.append(f"unknown sensor fault {unknown[0]!r}; choose from {', '.join(SENSOR_CHECKS)}")
        if not 0 < self.span_share < 0.6:
            out.append(f"span_share {self.span_share} must be in (0, 0.6)")
        if self.fault_free_steps < 0 or self.silence_steps < 0:
            out.append("fault_free_steps and silence_steps must be >= 0")
        return out


@dataclass(frozen=True)
class Injected:
    """One injected thing: the incident kind it should raise, what it is (a process fault kind, a sensor
    check, ``peer_drift`` or ``silence``), the device, its group, the channels and the event-time bounds."""

    kind: IncidentKind
    what: str
    device_id: str
    group: str
    channels: tuple[str, ...]
    start_ts: float
    end_ts: float


@dataclass
class GroupedFleet:
    streams: list[DeviceStream]
    injected: list[Injected]
    groups: dict[str, list[str]] = field(default_factory=dict)

    def truth(self) -> dict[str, object]:
        """The ``groups`` and ``injected`` entries of the simulation's truth document."""
        return {"groups": self.groups, "injected": [asdict(i) for i in self.injected]}


def injected_of(truth: dict[str, object]) -> list[Injected]:
    """The ``injected`` entries of a truth document (:meth:`GroupedFleet.truth`) back as :class:`Injected`."""
    rows = truth.get("injected", [])
    assert isinstance(rows, list)
    return [Injected(**{**r, "channels": tuple(r["channels"])}) for r in rows]


def group_name(g: int) -> str:
    return f"plant-{chr(ord('a') + g)}" if g < 26 else f"plant-{g}"


def grouped_fleet(plan: FleetPlan, steps: int, *, seed: int = 0, start_ts: float = 1_767_225_600.0,
                  sample_period_s: float = 1.0, prefix: str = "pump") -> GroupedFleet:
    """The fleet of ``plan`` with ``steps`` readings a device; raises :class:`ValueError` with
    :meth:`FleetPlan.problems` when the plan is impossible, or when its lead leaves no room for faults."""
    lead = plan.fault_free_steps
    problems = plan.problems()
    if steps - lead < 10:
        problems.append(f"fault_free_steps {lead} leaves fewer than 10 of the run's {steps} steps for faults")
    if problems:
        raise ValueError("; ".join(problems))
    rng = np.random.default_rng(seed)
    sizes = [plan.devices // plan.groups + (g < plan.devices % plan.groups) for g in range(plan.groups)]
    members = [(group_name(g), f"{group_name(g)}-{prefix}-{i:02d}") for g, n in enumerate(sizes) for i in range(n)]
    roles: list[str] = (["peer_drift"] * plan.peer_drift + list(plan.sensor_faults) + ["silence"] * plan.silent)
    order = rng.permutation(len(members))
    role_of = {members[int(k)][1]: r for k, r in zip(order, roles, strict=False)}
    loads = {name: load_profile(steps, np.random.default_rng(seed * 7919 + g)) + rng.uniform(-0.08, 0.08)
             for g, name in enumerate(group_name(g) for g in range(plan.groups))}
    after = steps - lead  # faults are laid out over the steps after the lead, then moved past it
    span = max(1, int(after * plan.span_share))
    fit = plan_faults(after, plan.faults_per_device)
    streams, injected = [], []
    for n, (group, device) in enumerate(members):
        role = role_of.get(device, "")
        load = loads[group] + rng.uniform(-0.015, 0.015)
        lo = lead + int(rng.integers(after // 5, max(after // 5 + 1, after - after // 10 - span)))
        hi = min(steps, lo + (plan.silence_steps if role == "silence" and plan.silence_steps else span))
        faults: list[Fault] = []
        if role == "peer_drift":
            load = load + np.r_[np.zeros(lead), np.linspace(0.0, plan.drift_load, after)]
        elif not role and fit.count and plan.fault_kinds:
            faults = [replace(f, start=f.start + lead) for f in random_faults(
                after, seed=seed * 1000 + n + 7, count=fit.count, kinds=plan.fault_kinds, min_duration=fit.min_duration,
                max_duration=fit.max_duration, margin=fit.margin)]
        values, _ = simulate(steps, seed=seed * 1000 + n, faults=faults, load=load)
        ts = start_ts + sample_period_s * np.arange(steps)
        stream = DeviceStream(device, ts, values, CHANNEL_NAMES, tick=np.arange(steps))
        for f in faults:
            a, b = float(ts[f.start]), float(ts[min(f.start + f.duration, steps) - 1])
            kind: IncidentKind = "sensor_fault" if f.kind == "stuck" else "incident"
            injected.append(Injected(kind, f.kind, device, group, (f.channel,), a, b))
            stream.faults.append(InjectedFault(device, f.kind, f.channel, a, b))
        if role:
            injected.append(_apply(stream, role, lo, hi, rng, sample_period_s, group, lead))
            if injected[-1].kind == "sensor_fault":
                stream.faults.append(InjectedFault(device, role, injected[-1].channels[0], injected[-1].start_ts,
                                                   injected[-1].end_ts))
        streams.append(stream)
    groups: dict[str, list[str]] = {}
    for group, device in members:
        groups.setdefault(group, []).append(device)
    return GroupedFleet(streams, sorted(injected, key=lambda i: (i.start_ts, i.device_id)), groups)


def _apply(d: DeviceStream, role: str, lo: int, hi: int, rng: np.random.Generator, period: float, group: str,
           lead: int) -> Injected:
    """Inject ``role`` into ``d`` over its readings ``[lo, hi)`` (a drift: from ``lead``; in place); its truth."""
    a, b = float(d.ts[lo]), float(d.ts[hi - 1])
    if role == "peer_drift":
        return Injected("peer_outlier", role, d.device_id, group, d.channels, float(d.ts[lead]), float(d.ts[-1]))
    if role == "silence":
        _keep(d, np.r_[np.ones(lo, bool), np.zeros(hi - lo, bool), np.ones(len(d.ts) - hi, bool)])
        return Injected("device_silent", role, d.device_id, group, (), a, b)
    channels: tuple[str, ...] = d.channels  # the timestamp checks concern every channel
    if role in ("stuck", "range"):
        j = int(rng.integers(len(d.channels)))
        channels = (d.channels[j],)
        column = d.values[:, j]
        if role == "stuck":
            column[lo:hi] = column[lo]
        else:
            top, bottom = float(column.max()), float(column.min())
            column[lo:hi] = top + 5 * (top - bottom)
    elif role == "clock":
        d.ts[lo:hi] += period * np.resize(np.asarray(CLOCK_OFFSETS), hi - lo)
    else:  # dropout, rate: readings missing inside the span
        pattern = DROPOUT_KEEP if role == "dropout" else (True,) + (False,) * (RATE_EVERY - 1)
        keep = np.ones(len(d.ts), bool)
        keep[lo:hi] = np.resize(np.asarray(pattern), hi - lo)
        _keep(d, keep)
    return Injected("sensor_fault", role, d.device_id, group, channels, a, b)


def _keep(d: DeviceStream, keep: np.ndarray) -> None:
    d.ts, d.values = d.ts[keep], d.values[keep]
    d.tick = None if d.tick is None else d.tick[keep]


def score_kinds(injected: Sequence[Injected], incidents: Sequence[tuple[str, Sequence[str], float, float | None]],
                slack_s: float) -> dict[str, tuple[int, int]]:
    """(found, missed) per incident kind: an injected thing is found by an incident of its kind that names
    its device and overlaps ``[start_ts, end_ts + slack_s]`` (an incident is ``(kind, device_ids,
    opened_at, closed_at or None)``)."""
    out: dict[str, tuple[int, int]] = {}
    for i in injected:
        hit = any(kind == i.kind and i.device_id in devices and opened <= i.end_ts + slack_s
                  and (closed is None or closed >= i.start_ts) for kind, devices, opened, closed in incidents)
        found, missed = out.get(i.kind, (0, 0))
        out[i.kind] = (found + hit, missed + (not hit))
    return out

