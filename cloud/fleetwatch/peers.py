"""Peer outliers: each device's recent telemetry against its group's median and MAD, per channel.

A device's summary of a channel is the mean of its telemetry windows' means whose end lies in the trailing
``peers.span_s`` before the tick. At each tick (every ``peers.tick_s`` of event time, the latest telemetry
time minus ``incidents.allowed_lateness_s``) a group's devices are compared per channel: robust z =
(x - median) / max(1.4826 x MAD, ``min_spread``). A device whose |z| exceeds ``z_limit`` on some channel at
every tick for ``min_duration_s`` opens ``peer_outlier`` naming the channels; it closes at the first tick
where every channel is back within the limit. Groups (or channels of a group) with fewer than
``min_group_size`` devices are skipped. Only telemetry is needed: a device without a model of its own works.

State per device is a plain dict (JSON in the store's ``peer_state``): the group key, per channel the
trailing (time, mean) points (at most :data:`MAX_POINTS`, none older than the span), the time each channel
went outside, and the open incident. Pure: the caller stores the states and the changes; not thread-safe.
"""

from __future__ import annotations

import bisect
import logging
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloud.processor.config import PeersSection
from cloud.processor.incidents import Changes
from cloud.processor.store import IncidentRow
from edge.contract import Alert, make_incident_id

log = logging.getLogger(__name__)

MAX_POINTS = 512  # per device and channel
MAD_SCALE = 1.4826  # MAD x this estimates a normal distribution's standard deviation
PeerState = dict[str, Any]


def robust_z(values: Mapping[str, float], min_spread: float) -> dict[str, float]:
    """Each member's robust z-score against all the members' median and scaled MAD (floored at ``min_spread``)."""
    xs = list(values.values())
    med = statistics.median(xs)
    mad = statistics.median(abs(x - med) for x in xs)
    scale = max(MAD_SCALE * mad, min_spread)
    return {k: (x - med) / scale for k, x in values.items()}


@dataclass
class TickResult:
    """What one tick decided: incidents and alerts, states changed, and the groups skipped as too small."""

    changes: Changes = field(default_factory=Changes)
    touched: set[str] = field(default_factory=set)
    skipped: dict[str, int] = field(default_factory=dict)  # group -> devices with a summary
    compared: int = 0  # devices compared on at least one channel


class PeerScorer:
    """See the module docstring. ``key_of(device_id, agent_id)`` gives the group key ("" if none)."""

    def __init__(self, section: PeersSection, key_of: Callable[[str, str], str]) -> None:
        self.s = section
        self.key_of = key_of

    def add_window(self, states: dict[str, PeerState], device: str, agent: str, channels: Sequence[str],
                   ts: Sequence[float], values: Sequence[Sequence[float]]) -> bool:
        """Add one telemetry window (its readings); False if the window was already added."""
        if not ts or not values:
            return False
        means = [math.fsum(row[j] for row in values) / len(values) for j in range(len(channels))]
        return self.add_means(states, device, agent, float(ts[-1]), channels, means)

    def add_means(self, states: dict[str, PeerState], device: str, agent: str, t: float, channels: Sequence[str],
                  means: Sequence[float]) -> bool:
        """Add one telemetry window as its end time ``t`` and per-channel means; False if it was already added."""
        st = states.get(device)
        if st is None:
            st = states[device] = {"g": self.key_of(device, agent), "a": agent, "ch": {}, "out": {}, "open": None, "seen": t}
        added = False
        for c, mean in zip(channels, means, strict=True):
            points: list[list[float]] = st["ch"].setdefault(c, [])
            i = bisect.bisect_left(points, [t])
            if i < len(points) and points[i][0] == t:
                continue  # read twice (at-least-once): no effect
            points.insert(i, [t, mean])
            added = True
            horizon = points[-1][0] - self.s.span_s
            old = bisect.bisect_left(points, [horizon])
            drop = max(old, len(points) - MAX_POINTS)
            if drop > 0:
                del points[:drop]
        st["seen"] = max(float(st["seen"]), t)
        return added

    def summary(self, st: PeerState, tick: float) -> dict[str, float]:
        """The device's per-channel means over the span before ``tick`` (channels without points left out)."""
        out: dict[str, float] = {}
        lo = tick - self.s.span_s
        for c, points in st["ch"].items():
            sel = [m for t, m in points if lo < t <= tick]
            if sel:
                out[c] = math.fsum(sel) / len(sel)
        return out

    def tick(self, states: dict[str, PeerState], tick: float, retired: Iterable[str] = ()) -> TickResult:
        """Compare every group at event time ``tick``; open, update and close peer_outlier incidents."""
        res = TickResult()
        gone = set(retired)
        groups: dict[str, dict[str, dict[str, float]]] = {}
        for device, st in states.items():
            if device in gone:
                if st["open"] is not None:
                    self._close(device, st, tick, res, "retired")
                continue
            summary = self.summary(st, tick)
            if summary and st["g"]:
                groups.setdefault(st["g"], {})[device] = summary
        z_by_device: dict[str, dict[str, float]] = {}
        for group, members in sorted(groups.items()):
            if len(members) < self.s.min_group_size:
                res.skipped[group] = len(members)
                continue
            channels = sorted({c for m in members.values() for c in m})
            for c in channels:
                values = {d: m[c] for d, m in members.items() if c in m}
                if len(values) < self.s.min_group_size:
                    continue
                for d, z in robust_z(values, self.s.min_spread).items():
                    z_by_device.setdefault(d, {})[c] = z
        res.compared = len(z_by_device)
        for device, st in states.items():
            if device in gone:
                continue
            zs = z_by_device.get(device)
            if zs is None:  # not compared at this tick (no summary, small group): its clocks stop, an incident stays
                if st["out"]:
                    st["out"] = {}
                    res.touched.add(device)
                continue
            self._judge(device, st, zs, tick, res)
        return res

    def _judge(self, device: str, st: PeerState, zs: dict[str, float], tick: float, res: TickResult) -> None:
        limit = self.s.z_limit
        outside = {c: z for c, z in zs.items() if abs(z) > limit}
        before = dict(st["out"])
        st["out"] = {c: before.get(c, tick) for c in sorted(outside)}
        if st["out"] != before:
            res.touched.add(device)
        inc = st["open"]
        if inc is None:
            due = sorted(c for c, since in st["out"].items() if tick - since >= self.s.min_duration_s)
            if due:
                worst = max(abs(zs[c]) for c in due)
                st["open"] = {"id": make_incident_id("peer_outlier", device, tick), "opened_at": tick, "channels": due,
                              "max_z": worst, "last": tick, "ticks": 1}
                res.touched.add(device)
                row = self._row(device, st, None)
                res.changes.put(row)
                res.changes.alerts.append(_alert(row, "open"))
            return
        if not outside:
            self._close(device, st, tick, res, "back within its peers")
            return
        inc["channels"] = sorted(set(inc["channels"]) | set(outside))
        inc["max_z"] = max(float(inc["max_z"]), max(abs(z) for z in outside.values()))
        inc["last"], inc["ticks"] = tick, int(inc["ticks"]) + 1
        res.touched.add(device)
        res.changes.put(self._row(device, st, None))

    def _close(self, device: str, st: PeerState, tick: float, res: TickResult, why: str) -> None:
        row = self._row(device, st, tick, why)
        st["open"], st["out"] = None, {}
        res.touched.add(device)
        res.changes.put(row)
        res.changes.alerts.append(_alert(row, "close"))

    def _row(self, device: str, st: PeerState, closed_at: float | None, why: str = "") -> IncidentRow:
        inc = st["open"]
        channels = ", ".join(inc["channels"])
        detail = (f"{channels} outside group {st['g']!r} by |robust z| > {self.s.z_limit:g} for {self.s.min_duration_s:g} s "
                  f"(max {float(inc['max_z']):.1f})" + (f"; closed: {why}" if why else ""))
        return IncidentRow(
            incident_id=inc["id"], kind="peer_outlier", site=st["g"], device_id=device, device_ids=(device,),
            opened_at=inc["opened_at"], closed_at=closed_at, last_event_at=inc["last"], event_count=int(inc["ticks"]),
            max_score=float(inc["max_z"]), statistic="robust_z", observed=float(inc["max_z"]), expected=self.s.z_limit,
            detail=detail[:1024],
        )


def forget_stale(states: dict[str, PeerState], tick: float, span_s: float, max_devices: int) -> list[str]:
    """Drop devices with no point in the span and no open incident, then the least recently seen beyond
    ``max_devices``; returns the devices dropped (their stored rows are deleted)."""
    drop = [d for d, st in states.items() if st["open"] is None and float(st["seen"]) <= tick - span_s]
    for d in drop:
        del states[d]
    if len(states) > max_devices:
        extra = sorted(states, key=lambda d: float(states[d]["seen"]))[: len(states) - max_devices]
        for d in extra:
            del states[d]
        drop += extra
    return drop


def _alert(row: IncidentRow, action: str) -> Alert:
    return Alert(kind="peer_outlier", action="open" if action == "open" else "close", incident_id=row.incident_id,
                 site=row.site if _is_name(row.site) else "", device_ids=row.device_ids, opened_at=row.opened_at,
                 closed_at=row.closed_at, event_count=row.event_count, max_score=row.max_score, statistic=row.statistic,
                 observed=row.observed, expected=row.expected, detail=row.detail)


def _is_name(text: str) -> bool:
    from edge.contract._fields import NAME_RE

    return bool(NAME_RE.match(text))
