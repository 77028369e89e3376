"""Escalation verdicts in the store: the escalated windows, the verdict on their events, dismissed
events counted on their incident, the gate of held incident alerts, and the labelling queue.

With ``[escalation] enabled`` the processor stores every device incident's alerts with gate
``held`` (:meth:`~cloud.processor.store.Store.insert_alerts`); the outbox never publishes those.
The escalation thread decides them here (:func:`decide_held`), oldest first:

- an open alert is released as soon as one of the incident's events is confirmed by the cloud or
  was not borderline (its score / threshold outside the agents' band: never escalated);
- it is suppressed (marked published, never sent) when every event of the incident is dismissed;
- otherwise it waits, at most ``verdict_wait_s`` (a capped or lost escalation must not silence an
  incident), then it is released;
- a close alert follows its open alert: suppressed with it, released after it.

Should the thread be down, the outbox's sweep sends a held alert after ``HELD_ALERT_MAX_S`` (10 min)
(:meth:`~cloud.processor.store.Store.unpublished`): escalation never silences an incident for good.

The decision is taken on the events stored when it is taken: a confirmed event that joins an
incident after it was suppressed does not raise it (the incident's ``dismissed`` count, below
its ``event_count``, shows it). Verdicts are looked up by event id in the escalations table, so
an escalation scored before or after its event is stored gives the same decision. Functions take
a :class:`~cloud.processor.store.Store`; one thread at a time per store object.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cloud.processor.store import LABELS, Store

ESCALATION_COLUMNS = ("escalation_id", "device_id", "agent_id", "event_id", "window_end", "edge_model", "edge_ratio",
                      "cloud_model", "cloud_ratio", "verdict", "disagreement", "payload", "scored_at")


@dataclass(frozen=True)
class Gate:
    """What :func:`decide_held` needs of ``[escalation]`` and ``[incidents]``."""

    band_low: float
    band_high: float
    window_s: float
    verdict_wait_s: float


def store_verdicts(store: Store, rows: Sequence[Sequence[Any]], window_s: float) -> None:
    """Insert escalations (``ESCALATION_COLUMNS`` order; an id already stored keeps its first verdict), set the
    verdict on their events, and count dismissed events on the incidents that hold them. Inside a transaction."""
    cols = ", ".join(ESCALATION_COLUMNS)
    store.executemany(f"INSERT INTO escalations ({cols}) VALUES ({', '.join('?' * len(ESCALATION_COLUMNS))}) "
                      "ON CONFLICT (escalation_id) DO NOTHING", rows)
    store.executemany("UPDATE events SET verdict = ? WHERE event_id = ? AND verdict IS NULL",
                      [(r[9], r[3]) for r in rows if r[3]])
    for device, end in sorted({(r[1], r[4]) for r in rows if r[3] and r[9] == "dismissed"}):
        refresh_dismissed(store, device, end, end, window_s)


def refresh_dismissed(store: Store, device_id: str, start: float, end: float, window_s: float = 0.0) -> None:
    """Recount the dismissed events of ``device_id``'s incidents that may hold a window ending in ``start``..``end``."""
    store.execute(
        "UPDATE incidents SET dismissed = (SELECT COUNT(*) FROM escalations e WHERE e.device_id = incidents.device_id "
        "AND e.event_id <> '' AND e.verdict = 'dismissed' AND e.window_end >= incidents.opened_at - ? "
        "AND e.window_end <= COALESCE(incidents.closed_at, 1e300)) "
        "WHERE kind = 'incident' AND device_id = ? AND opened_at - ? <= ? AND (closed_at IS NULL OR closed_at >= ?)",
        (window_s, device_id, window_s, end, start))


def backfill_events(store: Store, since: float) -> None:
    """Set the verdict on events stored after their escalation was scored (escalations scored since ``since``)."""
    store.execute("UPDATE events SET verdict = (SELECT e.verdict FROM escalations e WHERE e.escalation_id = events.event_id) "
                  "WHERE verdict IS NULL AND event_id IN (SELECT event_id FROM escalations WHERE event_id <> '' "
                  "AND scored_at >= ?)", (since,))


def decide_held(store: Store, gate: Gate, now: float) -> tuple[list[tuple[str, str, str]], int]:
    """Decide the held alerts, oldest first (see the module docstring): returns the released ones as
    (alert_id, incident_id, payload), to produce and then :func:`mark_released`, and how many were suppressed."""
    held = store.execute("SELECT alert_id, incident_id, action, payload, created_at FROM alerts WHERE gate = 'held' "
                         "AND published_at IS NULL "
                         "ORDER BY created_at, event_time, action DESC, alert_id")
    released: list[tuple[str, str, str]] = []
    suppressed = 0
    decided: dict[str, str] = {}  # incident id -> the gate its open alert got in this pass
    for alert_id, incident_id, action, payload, created_at in held:
        if action == "close":
            opened = decided.get(incident_id) or _open_gate(store, incident_id)
            decision = "suppressed" if opened == "suppressed" else "wait" if opened == "held" else "released"
        else:
            decision = _decide_open(store, incident_id, gate, now - float(created_at))
            decided[incident_id] = "held" if decision == "wait" else decision
        if decision == "released":
            released.append((alert_id, incident_id, payload))
        elif decision == "suppressed":
            with store.transaction():
                store.execute("UPDATE alerts SET gate = 'suppressed', published_at = ? WHERE alert_id = ?", (now, alert_id))
            suppressed += 1
    return released, suppressed


def mark_released(store: Store, alert_ids: Sequence[str], now: float, published: bool) -> None:
    """Released alerts leave the gate; ``published``: the broker acked them (else the outbox's sweep sends them)."""
    with store.transaction():
        store.executemany("UPDATE alerts SET gate = 'released', published_at = ? WHERE alert_id = ?",
                          [(now if published else None, a) for a in alert_ids])


def _open_gate(store: Store, incident_id: str) -> str:
    rows = store.execute("SELECT gate FROM alerts WHERE incident_id = ? AND action = 'open'", (incident_id,))
    return str(rows[0][0]) if rows and rows[0][0] else "released"


def _decide_open(store: Store, incident_id: str, gate: Gate, waited_s: float) -> str:
    inc = store.incident(incident_id)
    if inc is None:
        return "released"
    events = store.events_between(inc.device_id, inc.opened_at - gate.window_s, inc.last_event_at, limit=10_000)
    ids = [e["event_id"] for e in events]
    verdicts = _verdicts(store, ids)
    with store.transaction():
        store.execute("UPDATE incidents SET dismissed = ? WHERE incident_id = ?",
                      (sum(v == "dismissed" for v in verdicts.values()), incident_id))
    for e in events:
        ratio = e["score"] / e["threshold"] if e["threshold"] > 0 else float("inf")
        if verdicts.get(e["event_id"]) == "confirmed" or not gate.band_low <= ratio <= gate.band_high:
            return "released"
    if events and all(verdicts.get(i) == "dismissed" for i in ids):
        return "suppressed"
    return "released" if waited_s >= gate.verdict_wait_s else "wait"


def _verdicts(store: Store, event_ids: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in range(0, len(event_ids), 500):
        chunk = event_ids[i:i + 500]
        marks = ",".join("?" * len(chunk))
        out.update({r[0]: r[1] for r in store.execute(f"SELECT event_id, verdict FROM escalations WHERE event_id IN ({marks})", chunk)})
    return out


def queue(store: Store, limit: int, window_s: float) -> list[dict[str, Any]]:
    """Unlabelled escalated windows, largest disagreement (|edge - cloud normalised score|) first, each with the id of
    the device incident holding it ('' when none): ``incidents label`` takes either id."""
    rows = store.execute("SELECT escalation_id, device_id, event_id, window_end, edge_model, edge_ratio, cloud_model, "
                         "cloud_ratio, verdict, disagreement FROM escalations WHERE label IS NULL "
                         "ORDER BY disagreement DESC, escalation_id LIMIT ?", (limit,))
    keys = ("escalation_id", "device_id", "event_id", "window_end", "edge_model", "edge_ratio", "cloud_model", "cloud_ratio",
            "verdict", "disagreement")
    out = []
    for r in rows:
        d = dict(zip(keys, r, strict=True))
        inc = store.execute("SELECT incident_id FROM incidents WHERE kind = 'incident' AND device_id = ? "
                            "AND opened_at - ? <= ? AND ? <= COALESCE(closed_at, 1e300) ORDER BY opened_at LIMIT 1",
                            (d["device_id"], window_s, d["window_end"], d["window_end"])) if d["event_id"] else []
        d["incident_id"] = inc[0][0] if inc else ""
        out.append(d)
    return out


def label_escalation(store: Store, escalation_id: str, label: str, now: float) -> bool:
    """Store an operator's verdict on an escalated window; False when no such escalation exists."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    with store.transaction():
        found = store.execute("SELECT 1 FROM escalations WHERE escalation_id = ?", (escalation_id,))
        if found:
            store.execute("UPDATE escalations SET label = ?, labelled_at = ? WHERE escalation_id = ?", (label, now, escalation_id))
    return bool(found)


def escalation(store: Store, escalation_id: str) -> dict[str, Any] | None:
    rows = store.execute(f"SELECT {', '.join(ESCALATION_COLUMNS)}, label FROM escalations WHERE escalation_id = ?",
                         (escalation_id,))
    if not rows:
        return None
    d = dict(zip((*ESCALATION_COLUMNS, "label"), rows[0], strict=True))
    d["payload"] = json.loads(d["payload"])
    return d
