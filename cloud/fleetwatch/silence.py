"""Silent devices: ``device_silent`` from the agents' periodic reports (``AgentInfo.last_seen``).

A report at time ``at`` says the agent is alive and when each of its devices sent its last reading. A device
is silent when ``at - last_seen`` exceeds ``silence.silent_after_periods`` x its sample period (the manifest's
``sample_period_s`` of the agent's live model when ``drift.manifest_dir`` holds it, else
``silence.default_period_s``): ``device_silent`` opens at ``last_seen + limit`` (so a report read twice, or a
later report while still silent, names the same incident), and closes at the first report whose ``last_seen``
for the device is within the limit again, at that reading. An agent that stops reporting decides nothing (its
own alert, ``EdgewatchAgentDown``, covers it). A retired device never opens one, and its open one closes at its
agent's next report. Reports older than the device's last applied one are ignored.

State per device is a plain dict (JSON in the store's ``silence_state``). Pure; not thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from cloud.processor.config import SilenceSection
from cloud.processor.incidents import Changes
from cloud.processor.store import IncidentRow
from edge.contract import Alert, make_incident_id

SilenceState = dict[str, Any]


@dataclass
class ReportResult:
    changes: Changes = field(default_factory=Changes)
    touched: set[str] = field(default_factory=set)


class SilenceWatch:
    """See the module docstring. ``period_of(device_id)`` gives the device's sample period in seconds."""

    def __init__(self, section: SilenceSection, site_of: Callable[[str], str]) -> None:
        self.s = section
        self.site_of = site_of

    def on_report(self, states: dict[str, SilenceState], agent_id: str, at: float, last_seen: Mapping[str, float],
                  period_s: float, retired: Collection[str] = ()) -> ReportResult:
        """Apply one agent report; ``period_s``: the sample period of the agent's devices."""
        res = ReportResult()
        limit = self.s.silent_after_periods * period_s
        for device, seen in last_seen.items():
            st = states.get(device)
            if st is None:
                st = states[device] = {"agent": agent_id, "at": -1.0, "seen": seen, "open": None}
            if at <= float(st["at"]):
                continue  # read twice, or older than one applied
            st["agent"], st["at"], st["seen"] = agent_id, at, seen
            res.touched.add(device)
            inc = st["open"]
            if device in retired:
                if inc is not None:
                    self._close(device, st, at, "retired", res)
                continue
            if at - seen > limit:
                if inc is None:
                    opened = seen + limit
                    st["open"] = {"id": make_incident_id("device_silent", device, opened), "opened_at": opened, "since": seen,
                                  "limit": limit, "last": at}
                    row = self._row(device, st, None)
                    res.changes.put(row)
                    res.changes.alerts.append(_alert(row, "open"))
                else:
                    inc["last"] = at
                    res.changes.put(self._row(device, st, None))
            elif inc is not None:
                self._close(device, st, max(seen, float(inc["opened_at"])), "readings resumed", res)
        return res

    def _close(self, device: str, st: SilenceState, closed_at: float, why: str, res: ReportResult) -> None:
        row = self._row(device, st, closed_at, why)
        st["open"] = None
        res.changes.put(row)
        res.changes.alerts.append(_alert(row, "close"))

    def _row(self, device: str, st: SilenceState, closed_at: float | None, why: str = "") -> IncidentRow:
        inc = st["open"]
        limit = float(inc["limit"])
        detail = (f"no reading since {float(inc['since']):.0f} while agent {st['agent']} reports (limit {limit:g} s = "
                  f"{self.s.silent_after_periods:g} sample periods)" + (f"; closed: {why}" if why else ""))
        return IncidentRow(
            incident_id=inc["id"], kind="device_silent", site=self.site_of(device), device_id=device, device_ids=(device,),
            opened_at=float(inc["opened_at"]), closed_at=closed_at, last_event_at=float(inc["last"]), event_count=0,
            max_score=0.0, statistic="silent_s", observed=float(inc["last"]) - float(inc["since"]), expected=limit,
            detail=detail[:1024],
        )


def _alert(row: IncidentRow, action: str) -> Alert:
    return Alert(kind="device_silent", action="open" if action == "open" else "close", incident_id=row.incident_id,
                 site=row.site, device_ids=row.device_ids, opened_at=row.opened_at, closed_at=row.closed_at,
                 statistic=row.statistic, observed=row.observed, expected=row.expected, detail=row.detail)
