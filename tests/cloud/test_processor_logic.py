"""Incident, fleet and drift logic in event time, without brokers (pure functions on device state)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.processor.config import DriftSection, FleetSection, IncidentsSection
from cloud.processor.drift import DriftMonitor
from cloud.processor.fastevent import EventFields
from cloud.processor.fleet import Span, fleet_episodes
from cloud.processor.incidents import Changes, IncidentTracker, new_state

SECTION = IncidentsSection(min_events=3, window_s=60.0, quiet_s=120.0, allowed_lateness_s=20.0)


def anomaly(t: float, score: float, *, threshold: float = 1.0, model: tuple[str, str] = ("pump", "1.0")) -> EventFields:
    """Device d1's anomaly whose window ends at ``t`` (the ids are not looked at here)."""
    return EventFields(f"e{t}", "d1", "agent-1", t - 10.0, t, score, threshold, *model, "ab" * 32, t + 0.5)


def run(times: list[float], section: IncidentsSection = SECTION) -> tuple[Changes, list[tuple[float, bool]]]:
    """Feed one device's anomalies in the given order, like the pipeline does: watermark, close due, apply."""
    tracker = IncidentTracker(section, lambda d: "site")
    state = new_state()
    out = Changes()
    wm: float | None = None
    applied = []
    for t in times:
        late = tracker.is_late(t, wm)
        applied.append((t, not late))
        if late:
            continue
        wm = t if wm is None else max(wm, t)
        final = wm - section.allowed_lateness_s
        if tracker.due(state) <= final:
            tracker.advance("d1", state, final, out)
        tracker.apply(state, anomaly(t, 1.0 + t / 1000, model=("m", "1")), final, out)
        tracker.flush_updated(out)
    return out, applied


def test_opens_at_the_mth_anomaly_within_w_and_closes_quiet_s_after_the_last() -> None:
    out, _ = run([0, 100, 200, 230, 250, 255, 300, 1000])
    opened = [a for a in out.alerts if a.action == "open"]
    closed = [a for a in out.alerts if a.action == "close"]
    assert [a.opened_at for a in opened] == [250.0]  # 200, 230, 250 fall within 60 s
    assert [a.closed_at for a in closed] == [300.0 + 120.0]  # closed when 1000 - 20 passed 420
    row = out.incidents[opened[0].incident_id]
    assert row.event_count == 5 and row.closed_at == 420.0 and row.last_event_at == 300.0


def test_an_anomaly_after_the_quiet_period_does_not_extend_the_incident_even_before_it_is_closed() -> None:
    # 141 arrives while final (121) has not yet passed the close time 10 + 120: it must not join the incident
    for order in ([0, 1, 10, 141, 150], [0, 1, 10, 150, 141]):
        out, _ = run([float(t) for t in order] + [400.0])
        rows = sorted((r.opened_at, r.closed_at, r.event_count) for r in out.incidents.values())
        assert rows == [(10.0, 130.0, 3)], order


def test_spread_out_anomalies_open_nothing() -> None:
    out, _ = run([0, 61, 122, 183, 244])
    assert out.alerts == [] and out.incidents == {}


def test_no_close_before_the_watermark_passes_the_quiet_period() -> None:
    out, _ = run([0, 10, 20, 150])  # final = 130 < 20 + 120
    assert [a.action for a in out.alerts] == ["open"]


def test_no_open_before_the_watermark_passes_the_open_time() -> None:
    out, _ = run([0, 10, 20, 35])  # the third anomaly at 20, final = 15: an earlier one may still come
    assert out.alerts == []
    out, _ = run([0, 10, 20, 41])
    assert [(a.action, a.opened_at, a.event_count) for a in out.alerts] == [("open", 20.0, 3)]
    assert next(iter(out.incidents.values())).event_count == 4


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3000), min_size=1, max_size=60, unique=True), st.randoms(use_true_random=False))
def test_disorder_within_allowed_lateness_changes_nothing(ints: list[int], rnd: random.Random) -> None:
    ordered = sorted(float(i) for i in ints)
    # swap neighbours less than the allowed lateness apart: every event stays within lateness of the watermark
    shuffled = list(ordered)
    for i in range(len(shuffled) - 1):
        if shuffled[i + 1] - shuffled[i] < SECTION.allowed_lateness_s / 2 and rnd.random() < 0.5:
            shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
    a, _ = run(ordered)
    b, applied = run(shuffled)
    assert all(ok for _, ok in applied)
    key = lambda c: sorted((r.incident_id, r.opened_at, r.closed_at, r.event_count) for r in c.incidents.values())  # noqa: E731
    assert key(a) == key(b)


def test_events_later_than_the_allowed_lateness_are_not_applied() -> None:
    out, applied = run([0, 100, 10, 20, 30])
    assert applied == [(0, True), (100, True), (10, False), (20, False), (30, False)]
    assert out.alerts == []


def spans(*items: tuple[str, float, float | None]) -> list[Span]:
    return [Span(d, o, c, 2.0) for d, o, c in items]


def test_fleet_opens_at_the_kth_device_and_closes_quiet_after_the_count_drops() -> None:
    s = spans(("a", 100, 200), ("b", 150, 300), ("c", 180, 260), ("d", 1000, None))
    eps = fleet_episodes(s, k=3, window_s=50, quiet_s=100, start=-1e300, final=5000)
    assert len(eps) == 1
    ep = eps[0]
    # a counts until 250, b until 350, c until 310: three from 180 until 250, then two
    assert ep.opened_at == 180 and ep.members_at_open == ("a", "b", "c")
    assert ep.closed_at == 250 + 100
    assert ep.members == {"a", "b", "c"} and ep.spans == 3


def test_fleet_stays_open_when_the_count_recovers_within_the_quiet_period() -> None:
    s = spans(("a", 100, 200), ("b", 150, 300), ("c", 180, 260), ("e", 300, 400))
    ep = fleet_episodes(s, k=3, window_s=50, quiet_s=100, start=-1e300, final=5000)[0]
    # drop at 250, e joins at 300 < 350: still open; then a ends (already), c ends 310 -> b, e: drop at 310
    assert ep.closed_at == 310 + 100 and ep.members == {"a", "b", "c", "e"}


def test_fleet_decides_only_before_final_and_agrees_with_later_evaluations() -> None:
    s = spans(("a", 100, 200), ("b", 150, 300), ("c", 180, 260))
    assert fleet_episodes(s, 3, 50, 100, -1e300, final=180) == []  # the third open is not final yet
    early = fleet_episodes(s, 3, 50, 100, -1e300, final=300)
    late = fleet_episodes(s, 3, 50, 100, -1e300, final=5000)
    assert early[0].opened_at == late[0].opened_at and early[0].closed_at is None and late[0].closed_at == 350


def test_fleet_needs_k_distinct_devices() -> None:
    s = spans(("a", 100, 200), ("a", 210, 300), ("b", 150, 300))
    assert fleet_episodes(s, 3, 50, 100, -1e300, 5000) == []


def test_site_of_mapping_then_prefix() -> None:
    f = FleetSection(prefix_parts=2, sites={"north": ("pump-7",)})
    assert f.site_of("pump-7") == "north"
    assert f.site_of("plant-a-pump-01") == "plant-a"
    assert f.site_of("bg-001") == ""
    assert FleetSection().site_of("plant-a-pump-01") == ""


def test_drift_opens_after_sustained_high_rate_names_statistic_and_closes_when_normal() -> None:
    monitor = DriftMonitor(DriftSection(window_s=100.0, sustain_windows=2, rate_factor=3.0, expected_rate_per_hour=36.0),
                           {}, lambda d: "")
    state = new_state()
    out = Changes()
    # expected 36/h = 1 per 100 s bucket; 5 per bucket is 180/h > 3 x 36
    times = [b * 100 + i * 10 for b in range(3) for i in range(5)] + [450.0, 800.0]
    for t in times:
        monitor.apply(state, anomaly(t, 2.0), final=t - 20, out=out)
    assert [(a.kind, a.action, a.statistic) for a in out.alerts] == [("drift", "open", "anomaly_rate"), ("drift", "close", "anomaly_rate")]
    opened = out.alerts[0]
    assert opened.opened_at == 200.0 and opened.device_ids == ("d1",) and opened.model_version == "1.0"
    assert opened.observed == 180.0 and opened.expected == 36.0
    assert out.alerts[1].closed_at == 400.0  # bucket 300-400 had no anomaly


def test_drift_score_ratio_against_expected() -> None:
    monitor = DriftMonitor(DriftSection(window_s=100.0, sustain_windows=1, rate_factor=1000.0, score_factor=2.0,
                                        expected_score_ratio=1.5), {}, lambda d: "")
    state = new_state()
    out = Changes()
    for t in (10.0, 20.0, 30.0, 130.0):
        monitor.apply(state, anomaly(t, 4.0), final=t - 20, out=out)
    assert [(a.action, a.statistic, a.observed) for a in out.alerts] == [("open", "score_ratio", 4.0)]
