"""The demo's summary per incident kind: what the grouped fleet (edge.fleetsim) injected, what the
processor's incidents (and, for sensor faults, the agent's sensor_fault events) found, and what
they missed.

A kind the code in this checkout cannot produce is said to be not built rather than missed; a
kind the demo cannot judge says why. Called once, after the run, on the main thread.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import get_args

from edge import fleetsim
from edge.contract import AnomalyEvent
from edge.contract.alert import AlertKind

Incident = tuple[str, tuple[str, ...], float, float | None]  # kind, device ids, opened_at, closed_at
SHOWN = ("incident", "sensor_fault", "peer_outlier", "device_silent", "fleet_incident", "drift")


@dataclass(frozen=True)
class KindScore:
    """One incident kind: injected things found and missed, incidents opened, and a note."""

    injected: int
    found: int
    missed: int
    opened: int
    note: str = ""


def built_kinds() -> set[str]:
    """The incident kinds this checkout's processor (and, for sensor faults, agent) can produce."""
    kinds = set(get_args(AlertKind))
    if "fault" not in {f.name for f in fields(AnomalyEvent)}:
        kinds.discard("sensor_fault")
    return kinds


def settled_incidents(db: Path, timeout_s: float = 20.0, quiet_s: float = 3.0) -> list[Incident]:
    """The processor's incidents from its SQLite store, once their number stopped changing for ``quiet_s``."""
    rows: list[Incident] = []
    last, since, deadline = -1, time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = read_incidents(db)
        if len(rows) != last:
            last, since = len(rows), time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.5)
    return rows


def read_incidents(db: Path) -> list[Incident]:
    """The processor's incidents in its SQLite store, read-only (none while it is not there or not migrated)."""
    if not db.exists():
        return []
    import json

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        found = conn.execute("SELECT kind, device_ids, opened_at, closed_at FROM incidents").fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        found = []
    finally:
        conn.close()
    return [(k, tuple(json.loads(d)), float(o), None if c is None else float(c)) for k, d, o, c in found]


def score_by_kind(injected: Sequence[fleetsim.Injected], incidents: Sequence[Incident], events: Sequence[AnomalyEvent],
                  slack_s: float, speed: float) -> dict[str, KindScore]:
    """Per incident kind shown: injected, found and missed (:func:`edge.fleetsim.score_kinds`; a sensor fault is
    also found by a sensor_fault event of its device), incidents opened, and why a kind is not judged."""
    built = built_kinds()
    faults = [("sensor_fault", [e.device_id], e.window_start, e.window_end) for e in events
              if getattr(e, "kind", "process") == "sensor_fault"]
    scores = fleetsim.score_kinds(injected, [*incidents, *faults], slack_s)
    wanted: Counter[str] = Counter(i.kind for i in injected)
    opened = Counter(k for k, *_ in incidents)
    out = {}
    for kind in SHOWN:
        found, missed = scores.get(kind, (0, 0))
        note = ""
        if kind not in built:
            found, missed, note = 0, wanted[kind], "not detected (not built)"
        elif kind == "device_silent" and wanted[kind]:
            found, missed = 0, 0
            note = (f"not judged here: silence is judged on the agents' wall-clock reports, and the demo runs {speed:g}x "
                    "faster than real time (tests/cloud/test_fleet_intelligence.py judges it in simulated time)")
        elif kind == "sensor_fault" and wanted[kind]:
            inside = sum(1 for e in events if getattr(e, "kind", "process") == "process" for i in injected
                         if i.kind == "sensor_fault" and e.device_id == i.device_id
                         and e.window_end >= i.start_ts and e.window_start <= i.end_ts)
            note = f"{inside} process anomalies inside them"
        out[kind] = KindScore(wanted[kind], found, missed, opened[kind], note)
    return out


def kind_lines(kinds: dict[str, KindScore]) -> list[str]:
    """The summary's table: one line per kind."""
    lines = [f"{'by incident kind':<22} {'injected':>8} {'found':>6} {'missed':>6} {'opened':>6}"]
    for kind, k in kinds.items():
        judged = k.injected and not k.note.startswith("not ")
        cells = (f"{k.injected:>8} {k.found:>6} {k.missed:>6}" if judged
                 else f"{k.injected or '-':>8} {'-':>6} {'-':>6}")
        lines.append(f"  {kind:<20} {cells} {k.opened:>6}" + (f"   {k.note}" if k.note else ""))
    return lines
