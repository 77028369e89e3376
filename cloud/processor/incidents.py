"""Device incidents in event time: open when at least ``m`` anomalies fall within ``W`` seconds,
close ``quiet_s`` after the last one, once the partition's watermark says nothing earlier can come.

Pure logic over a per-device state (a JSON-able dict kept in the store with the partition's
progress), so a restarted or rebalanced processor continues exactly where the store says. Given
the same events in the same partition order, the same incidents come out, whatever the
process layout. Called from the consumer thread only; never blocks.

Times: ``watermark`` is the largest ``window_end`` seen in the partition. An event at least
``allowed_lateness_s`` older than the watermark is late beyond lateness: stored and counted, not
applied. ``final`` = watermark - allowed lateness: every event still to be applied is at or after it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cloud.processor.config import IncidentsSection
from cloud.processor.fastevent import EventFields
from cloud.processor.store import IncidentRow
from edge.contract import Alert, make_incident_id

DeviceState = dict[str, Any]


@dataclass
class Changes:
    """What one batch changed: incident rows to upsert (last write per id wins) and alerts to emit."""

    incidents: dict[str, IncidentRow] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)
    updated: dict[str, DeviceState] = field(default_factory=dict)  # devices whose open incident grew; rows built once per batch
    faults_updated: dict[str, DeviceState] = field(default_factory=dict)  # the same for sensor_fault incidents

    def put(self, row: IncidentRow) -> None:
        self.incidents[row.incident_id] = row


def new_state() -> DeviceState:
    return {"recent": [], "open": None, "drift": {}}


class IncidentTracker:
    """Per-device m-of-W opening and quiet-period closing; see the module docstring."""

    def __init__(self, section: IncidentsSection, site_of: Callable[[str], str], *, kind: str = "incident",
                 min_events: int | None = None) -> None:
        """``kind``: "incident" (process anomalies) or "sensor_fault" (a device's sensor_fault events, kept in its
        state's "sensor" entry: they open on ``min_events`` = 1 and name each check and channel)."""
        self.s = section
        self.site_of = site_of
        self.kind = kind
        self.m = section.min_events if min_events is None else min_events

    def is_late(self, t: float, watermark: float | None) -> bool:
        """True when ``t`` is older than the watermark by more than the allowed lateness."""
        return watermark is not None and t < watermark - self.s.allowed_lateness_s

    def apply(self, state: DeviceState, event: EventFields, final: float, out: Changes) -> None:
        """Apply one new (not duplicate, not late) anomaly of its device; its event time is its ``window_end``;
        ``final`` as in the module doc."""
        device, t, score = event.device_id, event.window_end, event.score
        model_name, model_version = event.model_name, event.model_version
        model = state.get("model")
        if model is None or model[0] != model_name or model[1] != model_version:
            state["model"] = [model_name, model_version]
        if event.fault_check:
            _note_fault(state, f"{event.fault_check}({','.join(event.fault_channels)})")
        inc = state["open"]
        recent: list[list[float]] = state["recent"]
        if inc is not None and t <= inc["last"] + self.s.quiet_s:
            inc["count"] += 1
            if t > inc["last"]:
                inc["last"] = t
            if score > inc["max"]:
                inc["max"] = score
            inc["model_name"], inc["model_version"] = model_name, model_version
            if recent:
                self._absorb(inc, recent)
            (out.updated if self.kind == "incident" else out.faults_updated)[device] = state
            return
        if inc is not None:  # after the open incident's quiet period: it waits in recent until that incident closes
            bisect.insort(recent, [t, score])
            return
        # anomalies before final - W can never share a window with one still to come (recent is sorted: a prefix)
        cutoff = final - self.s.window_s
        old = 0
        while old < len(recent) and recent[old][0] < cutoff:
            old += 1
        if old:
            del recent[:old]
        bisect.insort(recent, [t, score])
        if len(recent) >= self.m:
            self._try_open(device, state, final, out)

    def advance(self, device: str, state: DeviceState, final: float, out: Changes) -> None:
        """The partition's final time reached this device's due time: open and/or close what is now decided."""
        if state["open"] is None:
            self._try_open(device, state, final, out)
        inc = state["open"]
        if inc is not None:
            self._absorb(inc, state["recent"])
        if inc is not None and final >= inc["last"] + self.s.quiet_s:
            row = self._row(device, inc, inc["last"] + self.s.quiet_s, state)
            state["open"] = None
            state.pop("faults", None)
            out.put(row)
            out.alerts.append(self._alert(row, "close"))
            self._try_open(device, state, final, out)  # anomalies after its quiet period may open the next one

    def due(self, state: DeviceState) -> float:
        """The final time at which something is decided for the device: an open or a close (inf: nothing pending)."""
        inc = state["open"]
        if inc is not None:
            return float(inc["last"]) + self.s.quiet_s
        candidate = self._candidate(state["recent"])
        return math.inf if candidate is None else candidate[1]

    def flush_updated(self, out: Changes) -> None:
        """Build the rows of incidents that grew in this batch and are still open (call once, at batch end)."""
        updated = out.updated if self.kind == "incident" else out.faults_updated
        for device, state in updated.items():
            inc = state["open"]
            if inc is not None:
                out.put(self._row(device, inc, None, state))
        updated.clear()

    def _candidate(self, recent: list[list[float]]) -> tuple[int, float] | None:
        """(index of the first anomaly, open time) of the earliest window with m anomalies within W."""
        m, w = self.m, self.s.window_s
        for i in range(m - 1, len(recent)):
            if recent[i][0] - recent[i - m + 1][0] <= w:
                return i - m + 1, recent[i][0]
        return None

    def _try_open(self, device: str, state: DeviceState, final: float, out: Changes) -> None:
        # decided only once final has passed the open time: nothing earlier can arrive any more,
        # so disorder within the allowed lateness gives the same open time and id
        candidate = self._candidate(state["recent"])
        if candidate is None or candidate[1] >= final:
            return
        first, opened = candidate
        m = self.m
        members, rest = state["recent"][first:first + m], state["recent"][first + m:]
        name, version = state.get("model", ["", ""])
        inc = {"id": make_incident_id(self.kind, device, opened), "opened_at": opened, "last": members[-1][0],
               "count": m, "max": max(s for _, s in members), "model_name": name, "model_version": version}
        self._absorb(inc, rest)
        state["open"], state["recent"] = inc, rest
        row = self._row(device, inc, None, state)
        out.put(row)
        out.alerts.append(self._alert(row, "open"))

    def _absorb(self, inc: dict[str, Any], recent: list[list[float]]) -> None:
        """Move the anomalies of ``recent`` (sorted) that fall within ``inc``'s quiet period into it; the rest,
        later than that, stay for the incident after it."""
        taken = 0
        while taken < len(recent) and recent[taken][0] <= inc["last"] + self.s.quiet_s:
            t, score = recent[taken]
            inc["count"] += 1
            inc["last"] = max(inc["last"], t)
            inc["max"] = max(inc["max"], score)
            taken += 1
        if taken:
            del recent[:taken]

    def _row(self, device: str, inc: dict[str, Any], closed_at: float | None, state: DeviceState | None = None) -> IncidentRow:
        if self.kind == "incident":
            detail, statistic = f"{inc['count']} anomalies, at least {self.m} within {self.s.window_s:g} s", ""
        else:
            faults = (state or {}).get("faults") or inc.get("faults", [])
            inc["faults"] = faults
            statistic = ",".join(sorted({f.partition("(")[0] for f in faults}))[:64]
            detail = f"{inc['count']} sensor fault events: {', '.join(faults) or 'unnamed'}"[:1024]
        return IncidentRow(
            incident_id=inc["id"], kind=self.kind, site=self.site_of(device), device_id=device, device_ids=(device,),
            opened_at=inc["opened_at"], closed_at=closed_at, last_event_at=inc["last"], event_count=inc["count"],
            max_score=inc["max"], model_name=inc["model_name"], model_version=inc["model_version"], statistic=statistic,
            detail=detail,
        )

    @staticmethod
    def _alert(row: IncidentRow, action: str) -> Alert:
        return Alert(
            kind="sensor_fault" if row.kind == "sensor_fault" else "incident", action="open" if action == "open" else "close",
            incident_id=row.incident_id, site=row.site,
            device_ids=row.device_ids, opened_at=row.opened_at, closed_at=row.closed_at, event_count=row.event_count,
            max_score=row.max_score, model_name=row.model_name, model_version=row.model_version, statistic=row.statistic,
            detail=row.detail,
        )


MAX_FAULT_NOTES = 16


def _note_fault(state: DeviceState, note: str) -> None:
    """Remember a sensor fault's check and channels for its incident's detail (at most ``MAX_FAULT_NOTES``)."""
    faults: list[str] = state.setdefault("faults", [])
    if note not in faults and len(faults) < MAX_FAULT_NOTES:
        faults.append(note)
