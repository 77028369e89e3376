"""Fleet incidents: at least ``k`` devices of one site in incident within ``W`` seconds.

A device counts for its site from the moment its incident opens until ``W`` seconds after it
closes. A fleet incident opens at the first instant at least ``k`` devices count, and closes
``quiet_s`` after the count last fell below ``k`` (if it does not climb back meanwhile).

Devices of a site live in different partitions, possibly in different processes, so the
correlation runs on the store, not in memory, and only up to the global final time ``F``: the
smallest partition watermark minus the allowed lateness. Below ``F`` every device incident is
final, so :func:`fleet_episodes` (pure) gives the same answer in every process and at every later
evaluation; writes are upserts under a store lock. Called from the consumer thread; blocks on
the store.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from cloud.processor.alerts import alert_rows
from cloud.processor.config import FleetSection
from cloud.processor.incidents import Changes
from cloud.processor.store import IncidentRow, Store
from edge.contract import Alert, make_incident_id

log = logging.getLogger(__name__)

FLEET_LOCK_PARTITION = -1


@dataclass(frozen=True)
class Span:
    """One device incident as the fleet sees it."""

    device: str
    opened_at: float
    closed_at: float | None
    max_score: float


@dataclass
class Episode:
    opened_at: float
    members_at_open: tuple[str, ...]
    members: set[str] = field(default_factory=set)
    spans: int = 0
    max_score: float = 0.0
    max_at_open: float = 0.0
    last_open: float = 0.0
    closed_at: float | None = None


def fleet_episodes(spans: list[Span], k: int, window_s: float, quiet_s: float, start: float, final: float) -> list[Episode]:
    """Fleet episodes of one site from device incident spans, decided only for instants before ``final``.

    Episodes opening before ``start`` (already closed at ``start``) are not reported.
    """
    points: list[tuple[float, int, str, Span]] = []  # (time, +1 opens / -1 ends, device, span)
    for s in spans:
        if s.opened_at < final:
            points.append((s.opened_at, 1, s.device, s))
            end = math.inf if s.closed_at is None else s.closed_at + window_s
            if end < final:
                points.append((end, -1, s.device, s))
    points.sort(key=lambda p: (p[0], -p[1], p[2]))  # opens before ends at the same instant: touching spans overlap
    active: dict[str, int] = {}
    episodes: list[Episode] = []
    current: Episode | None = None
    drop_at: float | None = None
    for t, delta, device, span in points:
        if current is not None and drop_at is not None and t >= drop_at + quiet_s:
            current.closed_at = drop_at + quiet_s
            current, drop_at = None, None
        active[device] = active.get(device, 0) + delta
        if active[device] == 0:
            del active[device]
        if delta > 0 and current is not None:
            current.members.add(device)
            current.spans += 1
            current.max_score = max(current.max_score, span.max_score)
            current.last_open = max(current.last_open, t)
        if len(active) >= k:
            drop_at = None
            if current is None and t >= start:
                current = Episode(t, tuple(sorted(active)), set(active), last_open=t)
                for s in spans:
                    if s.device in active and s.opened_at <= t < (math.inf if s.closed_at is None else s.closed_at + window_s):
                        current.spans += 1
                        current.max_score = max(current.max_score, s.max_score)
                current.max_at_open = current.max_score
                episodes.append(current)
        elif current is not None and drop_at is None:
            drop_at = t
    if current is not None and drop_at is not None and drop_at + quiet_s <= final:
        current.closed_at = drop_at + quiet_s
    return episodes


class FleetCorrelator:
    """Evaluates fleet episodes for the sites that may have changed since the last evaluation."""

    def __init__(self, section: FleetSection, topic: str) -> None:
        self.s = section
        self.topic = topic
        self.last_final = -math.inf

    def evaluate(self, store: Store, final: float, now: float) -> Changes:
        """Bring fleet incidents up to ``final``; returns what changed (already written with its alerts).

        How far fleet incidents were decided is kept in the store (the lock row's watermark), so each
        evaluation reads only the device incidents that can still matter, whichever process runs it.
        """
        out = Changes()
        if final <= self.last_final:
            return out
        with store.transaction():
            lock = store.lock_partition(self.topic, FLEET_LOCK_PARTITION, now)
            decided = -math.inf if lock.watermark is None else float(lock.watermark)
            if final > decided:
                since = decided - self.s.window_s - self.s.quiet_s
                for site in store.active_sites(since if math.isfinite(since) else -1e300):
                    self._site(store, site, final, decided, out)
                store.upsert_incidents(out.incidents.values(), now)
                store.insert_alerts(alert_rows(out.alerts), now)
                lock.watermark, lock.version = final, lock.version + 1
                store.save_partition(lock, now)
        self.last_final = final
        return out

    def _site(self, store: Store, site: str, final: float, decided: float, out: Changes) -> None:
        open_fleets = store.incidents(kind="fleet_incident", site=site, open_only=True)
        if open_fleets:
            start = min(f.opened_at for f in open_fleets)  # recompute the open episode from its start
        else:  # every episode opening before `decided` is already stored and closed
            last_close = store.execute("SELECT MAX(closed_at) FROM incidents WHERE kind = 'fleet_incident' AND site = ?", (site,))
            start = max(decided, last_close[0][0] if last_close and last_close[0][0] is not None else -math.inf)
        lower = start - self.s.window_s if math.isfinite(start) else -1e300
        rows = store.incidents(kind="incident", site=site, closed_after=lower, limit=1_000_000)
        spans = [Span(r.device_id, r.opened_at, r.closed_at, r.max_score) for r in rows]
        known = {f.incident_id: f for f in open_fleets}
        for ep in fleet_episodes(spans, self.s.min_devices, self.s.window_s, self.s.quiet_s, start, final):
            row = IncidentRow(
                incident_id=make_incident_id("fleet_incident", site, ep.opened_at), kind="fleet_incident", site=site,
                device_id="", device_ids=tuple(sorted(ep.members)), opened_at=ep.opened_at, closed_at=ep.closed_at,
                last_event_at=ep.last_open, event_count=ep.spans, max_score=ep.max_score,
                detail=f"at least {self.s.min_devices} devices of {site} in incident within {self.s.window_s:g} s",
            )
            old = known.get(row.incident_id) or store.incident(row.incident_id)
            if old is not None and (old.closed_at, old.device_ids, old.event_count) == (row.closed_at, row.device_ids, row.event_count):
                continue
            out.put(row)
            if old is None:
                out.alerts.append(Alert(kind="fleet_incident", action="open", incident_id=row.incident_id, site=site,
                                        device_ids=ep.members_at_open, opened_at=ep.opened_at, event_count=len(ep.members_at_open),
                                        max_score=ep.max_at_open, detail=row.detail))
            if row.closed_at is not None:
                out.alerts.append(Alert(kind="fleet_incident", action="close", incident_id=row.incident_id, site=site,
                                        device_ids=row.device_ids, opened_at=row.opened_at, closed_at=row.closed_at,
                                        event_count=row.event_count, max_score=row.max_score, detail=row.detail))
