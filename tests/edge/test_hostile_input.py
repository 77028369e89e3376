"""Hostile input against the agent's Pipeline: far-future and distant-past timestamps, floods of
new device ids, idle devices. Each case checks that the devices sending valid readings keep being
scored; the flood runs in a process of its own (``tests/edge/flood_rss.py``) for its RSS."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from edge.config import load_config
from edge.contract import Reading, decode_deadletter, decode_telemetry, encode_readings, readings_topic
from edge.detector import OnnxDetector
from edge.intake import Message
from edge.metrics import AgentMetrics
from edge.pipeline import Pipeline
from tests.edge.agent_util import T0, TINY_MODEL, fleet_readings
from tests.tools import ManualClock

ROOT = Path(__file__).resolve().parents[2]
LENGTH, STRIDE = 32, 4  # the tiny model's window
FLOOD_LIMIT_MB = 32.0  # RSS growth allowed while 100,000 ids arrive (docs/agent.md, "Bounds on hostile input")


@pytest.fixture(scope="module")
def detector() -> OnnxDetector:
    return OnnxDetector.load(TINY_MODEL)


def make(detector: OnnxDetector, clock: ManualClock, **env: str) -> tuple[Pipeline, AgentMetrics]:
    config = load_config(None, env={"EDGEWATCH_AGENT__ID": "gw-h", "EDGEWATCH_AGENT__MAX_PAYLOAD_BYTES": "16384",
                                    "EDGEWATCH_TELEMETRY__EVERY_N_WINDOWS": "1",
                                    **{f"EDGEWATCH_{k.upper()}": v for k, v in env.items()}})
    metrics = AgentMetrics(CollectorRegistry())
    return Pipeline(config, detector, metrics, clock=clock), metrics


def message(readings: list[Reading]) -> Message:
    return Message(readings_topic(readings[0].device_id), encode_readings(readings), 0.0)


def value(metrics: AgentMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


def window_ends(records: list, device: str) -> list[float]:  # type: ignore[type-arg]
    """The end of every window of ``device`` the records sampled (telemetry of every window is on)."""
    return [decode_telemetry(r.value).ts[-1] for r in records if r.kind == "telemetry" and r.key == device.encode()]


def expected_ends(readings: list[Reading]) -> list[float]:
    return [readings[i].ts for i in range(LENGTH - 1, len(readings), STRIDE)]


@pytest.mark.parametrize("batch", [1, 10])
def test_a_far_future_reading_does_not_blind_the_device(detector: OnnxDetector, batch: int) -> None:
    clock = ManualClock(T0)
    pipe, metrics = make(detector, clock)
    readings = fleet_readings("pump-1", 200, seed=1)
    records = []
    for i in range(0, len(readings), batch):
        part = readings[i: i + batch]
        clock.now = part[-1].ts + 0.5
        if i == 100:  # ts 1e12 alone, then inside a batch of valid readings
            records += pipe.process([message([replace(part[0], ts=1e12)]), message([*part[:-1], replace(part[-1], ts=1e12)])])
            records += pipe.process([message(part[-1:])])
        else:
            records += pipe.process([message(part)])
    assert value(metrics, "edgewatch_agent_readings_dropped_total", reason="future") == 2
    assert value(metrics, "edgewatch_agent_readings_dropped_total", reason="late") == 0
    assert window_ends(records, "pump-1") == expected_ends(readings)


def test_a_reading_just_past_the_skew_bound_is_future_and_one_within_is_kept(detector: OnnxDetector) -> None:
    clock = ManualClock(T0)
    pipe, metrics = make(detector, clock, windows__max_clock_skew_s="2.5")
    r = fleet_readings("p", 3, seed=2)
    pipe.process([message([replace(r[0], ts=T0 + 2.5)])])  # exactly at the bound: kept
    pipe.process([message([replace(r[1], ts=T0 + 2.51)])])
    assert value(metrics, "edgewatch_agent_readings_dropped_total", reason="future") == 1
    assert value(metrics, "edgewatch_agent_readings_received_total") == 2


def test_a_distant_past_reading_is_counted_and_the_device_keeps_being_scored(detector: OnnxDetector) -> None:
    clock = ManualClock(T0)
    pipe, metrics = make(detector, clock)
    readings = fleet_readings("pump-2", 120, seed=3)
    records = []
    for i, r in enumerate(readings):
        clock.now = r.ts + 0.5
        hostile = [message([replace(r, ts=0.0)]), message([replace(r, ts=r.ts - 10)])] if i == 60 else []
        records += pipe.process([message([r]), *hostile])
    assert value(metrics, "edgewatch_agent_readings_dropped_total", reason="past") == 1  # beyond a window's span
    assert value(metrics, "edgewatch_agent_readings_dropped_total", reason="late") == 1  # within it
    assert window_ends(records, "pump-2") == expected_ends(readings)


def test_new_ids_beyond_max_devices_are_dead_lettered_and_known_devices_keep_being_scored(detector: OnnxDetector) -> None:
    clock = ManualClock(T0)
    pipe, metrics = make(detector, clock, agent__max_devices="3")
    known = {d: fleet_readings(d, 80, seed=i) for i, d in enumerate(("a", "b", "c"))}
    records = []
    refused = []
    for i in range(80):
        clock.now = T0 + i + 0.5
        strangers = [message([Reading(f"x-{i}-{j}", T0 + i, known["a"][i].values)]) for j in range(50)]
        out = pipe.process([*(message([rs[i]]) for rs in known.values()), *strangers])
        refused += [decode_deadletter(r.value) for r in out if r.kind == "deadletter"]
        records += out
    assert len(refused) == 80 * 50 and {d.reason for d in refused} == {"too_many_devices"}
    assert refused[0].device_id == "x-0-0" and "agent.max_devices is 3" in refused[0].detail
    assert value(metrics, "edgewatch_agent_payloads_rejected_total", reason="too_many_devices") == 80 * 50
    assert value(metrics, "edgewatch_agent_devices_tracked") == 3
    for device, readings in known.items():
        assert window_ends(records, device) == expected_ends(readings)


def test_an_idle_device_is_evicted_counted_and_its_slot_freed(detector: OnnxDetector) -> None:
    clock = ManualClock(T0)
    pipe, metrics = make(detector, clock, agent__max_devices="2", agent__device_idle_evict_s="100")
    live = fleet_readings("live", 400, seed=4)
    sleepy = fleet_readings("sleepy", 60, seed=5)
    newcomer = fleet_readings("newcomer", 40, seed=6)
    records = []
    clock.now = T0 + 20
    pipe.process([message(sleepy[:20])])  # a partial window, then silence (in the agent's clock)
    for i, r in enumerate(live):
        clock.now = T0 + i + 0.5
        records += pipe.process([message([r])])
        if i == 50:
            assert [d.reason for d in map(decode_deadletter, (x.value for x in pipe.process([message(newcomer[:1])])))] == \
                ["too_many_devices"]
        if i == 140:  # idle for more than 100 s, and looked for every 10 s: evicted by now
            assert value(metrics, "edgewatch_agent_devices_evicted_total") == 1
            assert value(metrics, "edgewatch_agent_devices_tracked") == 1
            records += pipe.process([message(newcomer)])  # the freed slot takes a new device
            records += pipe.process([message(sleepy[20:])])  # back, but both slots are taken
    assert window_ends(records, "live") == expected_ends(live)
    assert window_ends(records, "newcomer") == expected_ends(newcomer)
    assert window_ends(records, "sleepy") == []
    assert value(metrics, "edgewatch_agent_payloads_rejected_total", reason="too_many_devices") == 2


@pytest.mark.parametrize("adaptive", ["true", "false"])
def test_forget_device_drops_every_per_device_state(detector: OnnxDetector, adaptive: str) -> None:
    clock = ManualClock(T0 + 1000)
    pipe, _ = make(detector, clock, telemetry__anomaly_context_windows="2", decision__k="2", decision__n="3",
                   adaptive__enabled=adaptive)
    p, q = fleet_readings("p", 100, seed=7), fleet_readings("q", 100, seed=8)
    pipe.process([message(p[:50]), message(q[:50]), message(p[50:]), message(q[50:])])
    pipe.ingest(message(fleet_readings("p", 101, seed=7)[-1:]))  # one reading gathered, not yet placed
    decided = (pipe.decider._history, pipe.decider._segment) if pipe.adaptive is None else (pipe.adaptive.devices,)
    held = (pipe.windows._devices, *decided, pipe.sampler._devices, pipe._seen, pipe._pending)
    assert all("p" in d for d in held)
    pipe.forget_device("p")
    assert not any("p" in d for d in held) and all("q" in d for d in held[:-1])
    assert readings_topic("p") not in pipe._devices and pipe._pending_rows == 0
    pipe.forget_device("never-seen")


def test_rss_stays_flat_while_100000_new_ids_arrive_and_known_devices_keep_being_scored() -> None:
    out = subprocess.run([sys.executable, "-m", "tests.edge.flood_rss", "--ids", "100000", "--limit-mb", str(FLOOD_LIMIT_MB)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.splitlines()[-1])
    assert not got["aborted"] and got["peak_growth_mb"] <= FLOOD_LIMIT_MB, got
    assert got["windows"] == {f"known-{k}": (100 - LENGTH) // STRIDE + 1 for k in range(5)}, got
    assert got["future"] == got["past"] == got["too_large"] == got["not_json"] == 100
    assert got["too_many_devices"] > 0 and got["evicted"] > 0 and got["tracked"] <= 10_000


KNOWN = ("k-0", "k-1", "k-2")
hostile = st.one_of(
    st.tuples(st.just("future"), st.sampled_from((*KNOWN, "stranger")), st.floats(5.001, 1e12)),
    st.tuples(st.just("past"), st.sampled_from(KNOWN), st.floats(32.001, 1e12)),
    st.tuples(st.just("new_id"), st.integers(0, 10**6), st.floats(-10.0, 10.0)),
    st.tuples(st.just("oversized"), st.sampled_from(KNOWN), st.integers(1, 2000)),
    st.tuples(st.just("malformed"), st.sampled_from(KNOWN), st.integers(0, 10**6)),
)
rounds = st.lists(st.tuples(st.lists(st.integers(0, 12), min_size=3, max_size=3), st.lists(hostile, max_size=12)),
                  min_size=3, max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds)
def test_fuzz_every_valid_reading_of_a_known_device_is_scored(detector: OnnxDetector,
                                                              plan: list[tuple[list[int], list[tuple[str, object, float]]]]) -> None:
    clock = ManualClock(T0)
    pipe, metrics = make(detector, clock, agent__max_devices="8")
    streams = {d: fleet_readings(d, 400, seed=i) for i, d in enumerate(KNOWN)}
    sent = dict.fromkeys(KNOWN, 1)
    records = pipe.process([message(streams[d][:1]) for d in KNOWN])  # the known devices come first
    for counts, bad in plan:
        batch = []
        for d, n in zip(KNOWN, counts, strict=True):
            if n:
                part = streams[d][sent[d]: sent[d] + n]
                batch += [message(part)] if n % 2 else [message([r]) for r in part]  # batches and single readings
                sent[d] += n
        clock.now = T0 + max(sent.values()) + 0.5
        template = streams[KNOWN[0]][0]
        for kind, who, x in bad:
            if kind == "future":
                batch.insert(len(batch) // 2, message([Reading(str(who), clock.now + 5.0 + float(x), template.values)]))
            elif kind == "past":
                last = streams[str(who)][sent[str(who)] - 1]
                batch.append(message([replace(last, ts=last.ts - float(x))]))
            elif kind == "new_id":
                batch.insert(0, message([Reading(f"new-{who}", clock.now + float(x), template.values)]))
            elif kind == "oversized":
                batch.append(Message(readings_topic(str(who)), encode_readings([template]) + b" " * (16384 + int(x)), 0.0))
            else:
                payload = encode_readings([replace(template, device_id=str(who))])
                batch.append(Message(readings_topic(str(who)), payload[: int(x) % len(payload)], 0.0))
        records += pipe.process(batch)
    for d in KNOWN:
        assert window_ends(records, d) == expected_ends(streams[d][: sent[d]]), d
    assert value(metrics, "edgewatch_agent_readings_dropped_total", reason="late") == 0
    assert value(metrics, "edgewatch_agent_devices_tracked") <= 8
