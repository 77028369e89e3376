"""The cloud scorer of escalated windows: verdicts stored with the window and the event, dismissed events
on their incident, an incident made only of dismissed events that never alerts while a confirmed one does,
bad escalations dead-lettered with the reason, and the labelling queue's order. The store on both backends;
delivery on the real Kafka with the processor and its escalation thread running."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client import CollectorRegistry

from cloud.cli import main
from cloud.kafka_groups import subscribe
from cloud.processor.cloudscore import CloudScorer
from cloud.processor.config import ProcessorConfig
from cloud.processor.escalation import EscalationMetrics, EscalationScorer, run_escalation
from cloud.processor.metrics import ProcessorMetrics
from cloud.processor.pipeline import IncidentPipeline
from cloud.processor.store import HELD_ALERT_MAX_S, Store
from cloud.processor.verdicts import queue
from cloud.registry import Registry
from edge.contract import AnomalyEvent, encode_event
from edge.contract.escalation import Escalation, encode_escalation
from edge.synth import Fault, simulate
from tests.cloud.processor_streams import T0, config, in_thread
from tests.cloud.test_processor_store import Rec
from tests.edge.agent_util import TINY_MODEL
from tests.kafka_util import consume, create_topic
from tests.tools import wait_for

MANIFEST = orjson.loads((TINY_MODEL / "manifest.json").read_bytes())
CHANNELS = tuple(c["name"] for c in MANIFEST["channels"])
SHA = MANIFEST["sha256"]


@pytest.fixture
def registry_root(tmp_path: Path) -> Path:
    """A registry holding the tiny model: the edge model the escalations name, and the cloud model."""
    root = tmp_path / "registry"
    reg = Registry(root)
    reg.register(TINY_MODEL)
    reg.promote(MANIFEST["name"], MANIFEST["version"])
    return root


def escalation_extra(registry_root: Path, topic: str) -> str:
    return f"""
[escalation]
enabled = true
group_id = "{topic}.escalation"
registry = "{registry_root}"
model = "{MANIFEST['name']}"
verdict_wait_s = 120.0
max_payload_bytes = 16384
interval_s = 0.2
"""


def window(fault: bool, seed: int) -> tuple[tuple[float, ...], ...]:
    """32 readings: normal (the cloud model dismisses) or inside a large spike (it confirms)."""
    faults = [Fault("spike", "pressure", start=0, duration=400, magnitude=6.0)] if fault else []
    rows, _ = simulate(400, seed=seed, faults=faults)
    return tuple(tuple(map(float, r)) for r in rows[100 + seed:132 + seed])


def scene(device: str, t: float, ratio: float) -> AnomalyEvent:
    return AnomalyEvent(device_id=device, agent_id="gw-1", window_start=t - 31, window_end=t, score=ratio * 9.0,
                        threshold=9.0, channel_scores={"pressure": 1.0}, model_name=MANIFEST["name"],
                        model_version=MANIFEST["version"], model_sha256=SHA, detected_at=t)


def escalation_of(e: AnomalyEvent, fault: bool, seed: int = 0, **over: object) -> Escalation:
    fields: dict[str, object] = dict(
        device_id=e.device_id, agent_id="gw-1", model_name=e.model_name, model_version=e.model_version, model_sha256=SHA,
        window_start=e.window_start, window_end=e.window_end, channels=CHANNELS,
        ts=tuple(e.window_end - 31 + i for i in range(32)), values=window(fault, seed), score=e.score, threshold=e.threshold,
        event_id=e.event_id)
    fields.update(over)
    return Escalation(**fields)  # type: ignore[arg-type]


def the_scene() -> tuple[list[AnomalyEvent], list[Escalation]]:
    """Three incidents of three events each: ``dismissed`` (borderline, every window normal), ``confirmed``
    (borderline, one window a fault), ``clear`` (scores far over the threshold: never escalated); then a
    device whose events move the watermark past their opening and past their quiet period."""
    events: list[AnomalyEvent] = []
    escalations: list[Escalation] = []
    for device, ratio in (("dismissed", 1.1), ("confirmed", 1.05), ("clear", 3.0)):
        for i in range(3):
            e = scene(device, T0 + 10 * i, ratio)
            events.append(e)
            if ratio < 1.25:
                escalations.append(escalation_of(e, fault=device == "confirmed" and i == 1, seed=i))
    events += [scene("later", T0 + 100, 2.0), scene("later", T0 + 600, 2.0)]
    return events, escalations


def scorer_of(cfg: ProcessorConfig, store: Store, metrics: EscalationMetrics) -> EscalationScorer:
    e = cfg.escalation
    return EscalationScorer(cfg, store, CloudScorer.from_registry(Path(e.registry), e.model), metrics, threading.Event(),
                            clock=lambda: T0 + 1_000)


def test_verdicts_are_stored_and_only_incidents_with_a_confirmed_or_clear_event_alert(
        store: Store, tmp_path: Path, registry_root: Path) -> None:
    cfg = config(tmp_path / "cloud.toml", bootstrap="127.0.0.1:1", topic="t", group="g", sqlite_path=tmp_path / "unused.db",
                 extra=escalation_extra(registry_root, "t"))
    events, escalations = the_scene()
    pipe = IncidentPipeline(cfg, store, ProcessorMetrics(CollectorRegistry()), clock=lambda: T0 + 1_000)
    res = pipe.process("t", 0, [Rec(i, encode_event(e)) for i, e in enumerate(events)])
    assert not [a for a in res.alerts if orjson.loads(a[2])["kind"] == "incident"], "device incidents' alerts wait for verdicts"
    held = store.execute("SELECT incident_id, action FROM alerts WHERE gate = 'held'")
    assert len(held) == 6 and not [a for a in store.unpublished("alerts") if orjson.loads(a[2])["kind"] == "incident"]
    def swept(after_s: float) -> int:  # held incident alerts the outbox's sweep would send after_s after they were made
        return sum(orjson.loads(a[2])["kind"] == "incident" for a in store.unpublished("alerts", created_before=T0 + 1_000 + after_s))

    assert (swept(HELD_ALERT_MAX_S - 1), swept(HELD_ALERT_MAX_S + 1)) == (0, 6), "a thread that is down delays, never silences"
    metrics = EscalationMetrics(CollectorRegistry())
    scorer = scorer_of(cfg, store, metrics)
    # the verdicts come in two polls; the held alerts are decided in between
    assert scorer.on_records([(0, i, encode_escalation(x)) for i, x in enumerate(escalations[:4])], None) == 4
    # clear alerts at once (open, then close), dismissed is suppressed (open, then close), confirmed waits
    assert scorer.tick() == (2, 2)
    assert scorer.on_records([(0, 4 + i, encode_escalation(x)) for i, x in enumerate(escalations[4:])], None) == 2
    assert scorer.tick() == (2, 0)
    gates = {(inc, action): gate for inc, action, gate in store.execute(
        "SELECT i.device_id, a.action, a.gate FROM alerts a JOIN incidents i ON i.incident_id = a.incident_id")}
    assert gates == {("dismissed", "open"): "suppressed", ("dismissed", "close"): "suppressed",
                     ("confirmed", "open"): "released", ("confirmed", "close"): "released",
                     ("clear", "open"): "released", ("clear", "close"): "released"}
    unsent = [a for a in store.unpublished("alerts") if orjson.loads(a[2])["kind"] == "incident"]
    assert {orjson.loads(a[2])["device_ids"][0] for a in unsent} == {"confirmed", "clear"}, \
        "released alerts no broker acked are the outbox sweep's; suppressed ones are never sent"
    verdicts = dict(store.execute("SELECT event_id, verdict FROM events WHERE verdict IS NOT NULL"))
    assert verdicts == {x.event_id: ("confirmed" if x.device_id == "confirmed" and x.values == window(True, 1) else "dismissed")
                        for x in escalations}
    dismissed = dict(store.execute("SELECT device_id, dismissed FROM incidents WHERE kind = 'incident'"))
    assert dismissed == {"dismissed": 3, "confirmed": 2, "clear": 0}
    rows = store.execute("SELECT escalation_id, verdict, payload FROM escalations")
    assert len(rows) == 6 and all(orjson.loads(p)["values"] for _, _, p in rows), "the window is stored with its verdict"
    assert metrics.verdicts.labels("confirmed")._value.get() == 1 and metrics.verdicts.labels("dismissed")._value.get() == 5
    # the queue: largest |edge - cloud| first; every row names the incident that holds the window
    q = queue(store, 10, cfg.incidents.window_s)
    assert [r["disagreement"] for r in q] == sorted((r["disagreement"] for r in q), reverse=True)
    assert q[0]["verdict"] == "confirmed" and all(r["incident_id"] for r in q)


def test_bad_escalations_are_dead_lettered_with_the_reason(store: Store, tmp_path: Path, registry_root: Path) -> None:
    cfg = config(tmp_path / "cloud.toml", bootstrap="127.0.0.1:1", topic="t", group="g", sqlite_path=tmp_path / "unused.db",
                 extra=escalation_extra(registry_root, "t"))
    metrics = EscalationMetrics(CollectorRegistry())
    scorer = scorer_of(cfg, store, metrics)
    good = escalation_of(scene("pump-1", T0, 1.1), fault=False)
    big = escalation_of(scene("pump-2", T0, 1.1), fault=False, ts=tuple(T0 + i for i in range(200)),
                        values=tuple(window(False, 0)[0] for _ in range(200)))
    records = [(0, 0, b"{not json"), (0, 1, encode_escalation(big)),
               (0, 2, encode_escalation(escalation_of(scene("pump-3", T0, 1.1), fault=False, model_name="nope"))),
               (0, 3, encode_escalation(escalation_of(scene("pump-4", T0, 1.1), fault=False, channels=CHANNELS[::-1]))),
               (0, 4, None), (0, 5, encode_escalation(good))]
    assert scorer.on_records(records, None) == 1
    counts = {r: metrics.deadletters.labels(r)._value.get() for r in ("not_json", "too_large", "unknown_model", "shape")}
    assert counts == {"not_json": 2, "too_large": 1, "unknown_model": 1, "shape": 1}
    assert store.execute("SELECT escalation_id FROM escalations") == [(good.escalation_id,)]


def test_on_the_real_brokers_a_dismissed_only_incident_never_alerts_and_bad_payloads_are_dead_lettered(
        kafka_bootstrap: str, unique: str, tmp_path: Path, registry_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topic = f"esc-{unique}"
    cfg_path = tmp_path / "cloud.toml"
    cfg = config(cfg_path, bootstrap=kafka_bootstrap, topic=topic, group=f"{topic}.g", sqlite_path=tmp_path / "store.db",
                 extra=escalation_extra(registry_root, topic))
    # a loaded runner may take minutes to start both threads: no held alert is released for want of verdicts here
    cfg = replace(cfg, kafka=replace(cfg.kafka, escalations_topic=f"{topic}.esc"),
                  escalation=replace(cfg.escalation, verdict_wait_s=3600.0))
    for t in (topic, f"{topic}.esc", f"{topic}.alerts", f"{topic}.deadletter"):
        create_topic(kafka_bootstrap, t)
    events, escalations = the_scene()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for x in escalations:  # the verdicts may come before or after their events: here first
        producer.send(f"{topic}.esc", key=x.device_id.encode(), value=encode_escalation(x))
    for raw in (b"[1, 2", encode_escalation(escalation_of(scene("pump-9", T0, 1.1), fault=False, model_version="9.9"))):
        producer.send(f"{topic}.esc", key=b"pump-9", value=raw)
    for e in events:
        producer.send(topic, key=e.device_id.encode(), value=encode_event(e))
    producer.flush(30)
    producer.close()
    registry = CollectorRegistry()
    thread, stop, errors = in_thread(cfg, registry)
    esc = threading.Thread(target=run_escalation, args=(cfg, stop, registry), daemon=True)
    esc.start()
    try:
        alerts = [orjson.loads(v) for v in consume(kafka_bootstrap, f"{topic}.alerts", f"{unique}-a", 4, timeout_s=180)]
        dead = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=f"{unique}-d", auto_offset_reset="earliest")
        subscribe(dead, [f"{topic}.deadletter"])
        got: list[dict[str, bytes]] = []

        def two_dead_letters() -> bool:
            got.extend(dict(r.headers) for rs in dead.poll(500).values() for r in rs)
            return len(got) >= 2

        wait_for(two_dead_letters, 120, "two dead letters", state=lambda: got)
        dead.close()
        wait_for(lambda: (registry.get_sample_value("edgewatch_processor_escalation_alerts_total", {"decision": "suppressed"})
                          or 0) >= 2, 120, "the dismissed incident's alerts suppressed", state=lambda: alerts)
    finally:
        stop.set()
        thread.join(60)
        esc.join(60)
    assert not errors
    assert sorted((a["device_ids"][0], a["action"]) for a in alerts) == [
        ("clear", "close"), ("clear", "open"), ("confirmed", "close"), ("confirmed", "open")]
    reasons = sorted(h["edgewatch-reason"].decode().split(":")[0] for h in got)
    assert reasons == ["not_json", "unknown_model"]
    assert main(["incidents", "queue", "--config", str(cfg_path), "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "confirmed" in lines[0]
    first = lines[0].split()[0]
    assert main(["incidents", "label", first, "--true-positive", "--config", str(cfg_path)]) == 0
    assert "labelled true_positive" in capsys.readouterr().out
    assert main(["incidents", "queue", "--config", str(cfg_path), "--json"]) == 0
    left = [orjson.loads(line)["escalation_id"] for line in capsys.readouterr().out.splitlines()]
    assert len(left) == 5 and first not in left
