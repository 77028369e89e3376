"""Rollout state in the processor's store (migration 4 of :mod:`cloud.processor.schema`).

Tables: ``agent_reports`` (an agent's latest report: group, live version, sensor devices, what it
can run), ``agent_exposure`` (device-hours per agent and live version, all time),
``model_statuses`` (an agent's latest status per model version and action), ``rollouts``,
``rollout_members`` (the agents of each wave, and the agents skipped with the reason),
``rollout_exposure`` (device-hours per agent and live version while a rollout of its group runs)
and ``rollout_decisions``. Each function is one transaction (or one read) on the calling
thread's :class:`~cloud.processor.store.Store`; the driver's errors pass through.

Exposure from a report: the agent's devices times the time since its previous report (at most
:data:`MAX_REPORT_GAP_S`, so a report after an outage does not count the outage), only for a
report newer than the one stored: a report read twice (at-least-once delivery) adds nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cloud.processor.store import Store

MAX_REPORT_GAP_S = 300.0
State = Literal["running", "paused", "aborted", "done"]


@dataclass(frozen=True)
class AgentReport:
    agent_id: str
    group: str
    model_name: str
    live_version: str
    devices: int
    info: Mapping[str, Any] | None  # the report's AgentInfo fields; None: the agent does not say
    reported_at: float


@dataclass(frozen=True)
class Rollout:
    rollout_id: str
    name: str
    version: str
    previous_version: str
    group: str
    waves: tuple[float, ...]  # percentages announced so far, in order
    state: State
    started_at: float
    wave_started_at: float

    @property
    def percent(self) -> float:
        return self.waves[-1] if self.waves else 0.0


@dataclass(frozen=True)
class Member:
    agent_id: str
    wave: float  # the wave it joined (0 for a skipped agent)
    skipped: str | None  # why it cannot run the bundle; None: announced
    at: float


@dataclass(frozen=True)
class Decision:
    at: float
    action: str
    reason: str


def rollout_id(group: str, name: str, version: str) -> str:
    return f"{group}/{name}/{version}"


# -- reports and statuses (the processor's status consumer) -----------------------------------------

def record_report(store: Store, report: AgentReport) -> float:
    """Store an agent's report and add its exposure; returns the device-hours added (0 for a stale report)."""
    with store.transaction():
        prev = store.execute("SELECT reported_at, live_version, devices FROM agent_reports WHERE agent_id = ?", (report.agent_id,))
        if prev and float(prev[0][0]) >= report.reported_at:
            return 0.0
        hours = 0.0
        if prev:
            gap = min(report.reported_at - float(prev[0][0]), MAX_REPORT_GAP_S)
            hours = report.devices * gap / 3600  # the devices it saw in the interval, on the version it ran then
            version = str(prev[0][1]) or report.live_version
            _add(store, "agent_exposure", ("agent_id", "model_version"), (report.agent_id, version), hours)
            live = store.execute("SELECT rollout_id FROM rollouts WHERE group_name = ? AND state IN ('running', 'paused')",
                                 (report.group,))
            for (rid,) in live:
                _add(store, "rollout_exposure", ("rollout_id", "agent_id", "model_version"), (rid, report.agent_id, version), hours)
        store.execute("INSERT INTO agent_reports (agent_id, group_name, model_name, live_version, devices, info, reported_at) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET group_name = excluded.group_name, "
                      "model_name = excluded.model_name, live_version = excluded.live_version, devices = excluded.devices, "
                      "info = excluded.info, reported_at = excluded.reported_at",
                      (report.agent_id, report.group, report.model_name, report.live_version, report.devices,
                       None if report.info is None else json.dumps(dict(report.info)), report.reported_at))
    return hours


def _add(store: Store, table: str, keys: tuple[str, ...], values: tuple[str, ...], hours: float) -> None:
    cols = ", ".join(keys)
    store.execute(f"INSERT INTO {table} ({cols}, device_hours) VALUES ({', '.join('?' * len(keys))}, ?) "
                  f"ON CONFLICT ({cols}) DO UPDATE SET device_hours = {table}.device_hours + excluded.device_hours",
                  (*values, hours))


def record_status(store: Store, agent_id: str, model_name: str, model_version: str, action: str, reason: str, at: float,
                  live_version: str) -> None:
    """Store a model status (kept per agent, version and action) and the live version it names."""
    with store.transaction():
        store.execute("INSERT INTO model_statuses (agent_id, model_name, model_version, action, reason, at) VALUES (?, ?, ?, ?, ?, ?) "
                      "ON CONFLICT (agent_id, model_name, model_version, action) DO UPDATE SET reason = excluded.reason, "
                      "at = excluded.at", (agent_id, model_name, model_version, action, reason, at))
        if live_version:
            store.execute("UPDATE agent_reports SET live_version = ? WHERE agent_id = ? AND reported_at <= ?",
                          (live_version, agent_id, at))


def reports(store: Store, group: str) -> dict[str, AgentReport]:
    """The latest report of every agent of ``group``, by agent id."""
    rows = store.execute("SELECT agent_id, group_name, model_name, live_version, devices, info, reported_at FROM agent_reports "
                         "WHERE group_name = ?", (group,))
    return {r[0]: AgentReport(r[0], r[1], r[2], r[3], int(r[4]), None if r[5] is None else json.loads(r[5]), float(r[6]))
            for r in rows}


def statuses(store: Store, model_name: str, model_version: str) -> dict[str, dict[str, str]]:
    """{agent: {action: reason}} of the statuses agents reported about one model version."""
    out: dict[str, dict[str, str]] = {}
    for agent, action, reason in store.execute("SELECT agent_id, action, reason FROM model_statuses WHERE model_name = ? "
                                               "AND model_version = ?", (model_name, model_version)):
        out.setdefault(agent, {})[action] = reason
    return out


# -- rollouts ------------------------------------------------------------------------------------

def start_rollout(store: Store, rollout: Rollout, reason: str) -> None:
    """Create (or start again) a rollout; its earlier members, exposure and decisions are kept."""
    with store.transaction():
        store.execute("INSERT INTO rollouts (rollout_id, name, version, previous_version, group_name, waves, state, started_at, "
                      "wave_started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rollout_id) DO UPDATE SET "
                      "waves = excluded.waves, state = excluded.state, wave_started_at = excluded.wave_started_at, "
                      "updated_at = excluded.updated_at",
                      (rollout.rollout_id, rollout.name, rollout.version, rollout.previous_version, rollout.group,
                       json.dumps(list(rollout.waves)), rollout.state, rollout.started_at, rollout.wave_started_at, time.time()))
        _decide(store, rollout.rollout_id, rollout.wave_started_at, "wave", reason)


def record_wave(store: Store, rid: str, percent: float, members: Iterable[str], skipped: Mapping[str, str], at: float,
                reason: str) -> None:
    """A wave announced: its new members, the agents skipped (with why), the decision; the rollout runs."""
    with store.transaction():
        waves = json.loads(store.execute("SELECT waves FROM rollouts WHERE rollout_id = ?", (rid,))[0][0])
        waves = [*waves, percent] if not waves or waves[-1] != percent else waves
        store.execute("UPDATE rollouts SET waves = ?, state = 'running', wave_started_at = ?, updated_at = ? WHERE rollout_id = ?",
                      (json.dumps(waves), at, at, rid))
        store.executemany("INSERT INTO rollout_members (rollout_id, agent_id, wave, skipped, at) VALUES (?, ?, ?, NULL, ?) "
                          "ON CONFLICT (rollout_id, agent_id) DO UPDATE SET skipped = NULL",
                          [(rid, a, percent, at) for a in members])
        store.executemany("INSERT INTO rollout_members (rollout_id, agent_id, wave, skipped, at) VALUES (?, ?, 0, ?, ?) "
                          "ON CONFLICT (rollout_id, agent_id) DO UPDATE SET skipped = excluded.skipped, at = excluded.at "
                          "WHERE rollout_members.skipped IS NOT NULL",
                          [(rid, a, why, at) for a, why in skipped.items()])
        _decide(store, rid, at, "wave", reason)


def set_state(store: Store, rid: str, state: State, at: float, action: str, reason: str) -> None:
    with store.transaction():
        store.execute("UPDATE rollouts SET state = ?, updated_at = ? WHERE rollout_id = ?", (state, at, rid))
        _decide(store, rid, at, action, reason)


def resume(store: Store, rid: str, at: float, reason: str) -> None:
    """A paused rollout runs again, compared afresh: its exposure is dropped and its events count from ``at``."""
    with store.transaction():
        store.execute("DELETE FROM rollout_exposure WHERE rollout_id = ?", (rid,))
        store.execute("UPDATE rollouts SET state = 'running', started_at = ?, wave_started_at = ?, updated_at = ? "
                      "WHERE rollout_id = ?", (at, at, at, rid))
        _decide(store, rid, at, "resume", reason)


def _decide(store: Store, rid: str, at: float, action: str, reason: str) -> None:
    store.execute("INSERT INTO rollout_decisions (rollout_id, at, action, reason) VALUES (?, ?, ?, ?)", (rid, at, action, reason))


_ROLLOUT = "rollout_id, name, version, previous_version, group_name, waves, state, started_at, wave_started_at"


def _rollout(r: tuple[Any, ...]) -> Rollout:
    return Rollout(r[0], r[1], r[2], r[3], r[4], tuple(float(w) for w in json.loads(r[5])), r[6], float(r[7]), float(r[8]))


def rollouts(store: Store, *, name: str | None = None, state: State | None = None) -> list[Rollout]:
    """Rollouts, oldest first; of one model name, in one state."""
    where, params = ["1 = 1"], []
    for col, value in (("name", name), ("state", state)):
        if value is not None:
            where.append(f"{col} = ?")
            params.append(value)
    rows = store.execute(f"SELECT {_ROLLOUT} FROM rollouts WHERE {' AND '.join(where)} ORDER BY started_at, rollout_id", params)
    return [_rollout(r) for r in rows]


def rollout(store: Store, rid: str) -> Rollout | None:
    rows = store.execute(f"SELECT {_ROLLOUT} FROM rollouts WHERE rollout_id = ?", (rid,))
    return _rollout(rows[0]) if rows else None


def members(store: Store, rid: str) -> list[Member]:
    rows = store.execute("SELECT agent_id, wave, skipped, at FROM rollout_members WHERE rollout_id = ? ORDER BY wave, agent_id", (rid,))
    return [Member(r[0], float(r[1]), r[2], float(r[3])) for r in rows]


def decisions(store: Store, rid: str) -> list[Decision]:
    rows = store.execute("SELECT at, action, reason FROM rollout_decisions WHERE rollout_id = ? ORDER BY at", (rid,))
    return [Decision(float(r[0]), r[1], r[2]) for r in rows]


def exposure(store: Store, rid: str) -> dict[tuple[str, str], float]:
    """Device-hours by (agent, live version) since the rollout started."""
    rows = store.execute("SELECT agent_id, model_version, device_hours FROM rollout_exposure WHERE rollout_id = ?", (rid,))
    return {(r[0], r[1]): float(r[2]) for r in rows}
