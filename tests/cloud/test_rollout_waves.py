"""Rollouts in waves (cloud.rollout): wave membership, compatibility gating, the cohort decision,
the rollout tables on both store backends; then a fleet of real agents on real Mosquitto and
Kafka with the processor and its rollout thread: a loud candidate paused by itself and aborted,
a good one rolled to 100 % through a processor restart, incompatible agents skipped.

The agents share one Mosquitto, so each sees every agent's sensor; a per-device threshold keeps
each agent alerting on its own sensor only (distinct event ids, as on separate sites).
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from onnx import TensorProto, helper
from prometheus_client import CollectorRegistry

from cloud.cli import main
from cloud.keys import generate_keypair, load_private_key, sign_model_dir
from cloud.processor.backends import open_sqlite
from cloud.processor.config import ProcessorConfig, load_config
from cloud.processor.store import Store
from cloud.registry import Registry
from cloud.rollout import state
from cloud.rollout.cohort import Cohort, Comparison, judge
from cloud.rollout.compat import refusal
from cloud.rollout.monitor import run_rollout
from cloud.rollout.waves import parse_percent, place, wave_members
from edge.agent import Agent
from edge.config import load_config as load_agent_config
from edge.contract import Reading, decode_alert, encode_manifest
from edge.contract.update import AgentInfo, ModelStatus, decode_status, encode_status
from edge.detector import load_manifest
from tests.cloud.processor_streams import in_thread, write_config
from tests.edge.agent_util import TINY_MODEL, Publisher, TopicReader, payloads, toml_config
from tests.kafka_util import create_topic
from tests.tools import wait_for

AGENTS = 6
T0 = 1_764_000_000.0
GOOD = dict(min_onnxruntime="1.17", opset=18)


# -- units ----------------------------------------------------------------------------------------

def test_wave_membership_is_stable_cumulative_and_sticky() -> None:
    agents = [f"pi-{i:03d}" for i in range(200)]
    assert place("pi-000") == int(hashlib.sha256(b"pi-000").hexdigest()[:16], 16) / 2**64 * 100  # sha256, not hash()
    w10, w50, w100 = (wave_members(agents, p) for p in (10, 50, 100))
    assert (len(w10), len(w50), len(w100)) == (20, 100, 200)
    assert set(w10) <= set(w50) <= set(w100) == set(agents)
    assert wave_members(list(reversed(agents)), 10) == w10  # order of the reports does not matter
    assert wave_members(agents[:6], 10) == wave_members(agents[:6], 1) and len(wave_members(agents[:6], 10)) == 1
    # an agent announced stays in the wave when the fleet changes (here: half of it stops reporting)
    assert set(w10) <= set(wave_members(agents[100:], 10, already=w10))


@pytest.mark.parametrize("text", ["0", "0%", "-5%", "100.5%", "150", "ten"])
def test_a_wave_outside_0_100_is_a_usage_error(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError):
        parse_percent(text)
    with pytest.raises(SystemExit) as exit_:
        main(["registry", "publish", "m", "2.0", "--wave", text])
    assert exit_.value.code == 2 and "--wave" in capsys.readouterr().err
    assert parse_percent("10%") == 10 and parse_percent("100") == 100


def _info(**kw: Any) -> SimpleNamespace:
    base = dict(onnxruntime="1.20.1", max_opset=21, mem_available_bytes=2 << 30, disk_free_bytes=10 << 30)
    return SimpleNamespace(**{**base, **kw})


def test_compat_refusal_names_each_reason() -> None:
    m = dataclasses.replace(load_manifest(TINY_MODEL), **GOOD)  # type: ignore[arg-type]
    assert refusal(m, 600, _info()) is None
    assert "onnxruntime 1.16.3 is older than the manifest's minimum 1.17" in (refusal(m, 600, _info(onnxruntime="1.16.3")) or "")
    assert "opset up to 15, the model needs 18" in (refusal(m, 600, _info(max_opset=15)) or "")
    assert "memory:" in (refusal(m, 600, _info(mem_available_bytes=10 << 20)) or "")
    assert "disk: 1200 bytes needed" in (refusal(m, 600, _info(disk_free_bytes=1000)) or "")
    both = refusal(m, 600, _info(onnxruntime="1.10", disk_free_bytes=0)) or ""
    assert "onnxruntime" in both and "disk" in both


def _cmp(new: tuple[float, int], rest: tuple[float, int], wave: int = 1, rejected: int = 0) -> Comparison:
    agents = frozenset(f"a{i}" for i in range(wave))
    return Comparison(Cohort(agents, new[0], {"events": new[1]}), Cohort(frozenset({"r"}), rest[0], {"events": rest[1]}),
                      agents, {f"a{i}": "too loud" for i in range(rejected)})


def test_cohort_decision() -> None:
    limits = dict(min_exposure_device_hours=1.0, max_ratio=3.0, max_shadow_rejection_share=0.5, min_events=5)
    assert judge(_cmp((0.5, 50), (10.0, 10)), **limits)[0] == "wait"  # too little exposure on the new side
    verdict, reason = judge(_cmp((2.0, 50), (10.0, 50)), **limits)
    assert verdict == "diverged" and "ratio 5.00 > 3" in reason and "events" in reason
    assert judge(_cmp((2.0, 11), (10.0, 50)), **limits)[0] == "healthy"  # about the same rate
    assert judge(_cmp((2.0, 4), (10.0, 0)), **limits)[0] == "healthy"  # under min_events: not enough to say
    assert judge(_cmp((2.0, 1), (10.0, 50)), **limits)[0] == "healthy"  # fewer alerts is not a divergence here
    verdict, reason = judge(_cmp((0.1, 0), (0.1, 0), wave=3, rejected=2), **limits)
    assert verdict == "diverged" and "2 of 3 wave agents rejected" in reason  # before any exposure


def _report(agent: str, at: float, version: str = "1.0", devices: int = 2, group: str = "g") -> state.AgentReport:
    return state.AgentReport(agent, group, "m", version, devices, {"onnxruntime": "1.20"}, at)


def test_rollout_state_on_both_backends(store: Store) -> None:
    rid = state.rollout_id("g", "m", "2.0")
    state.start_rollout(store, state.Rollout(rid, "m", "2.0", "1.0", "g", (), "running", 1000.0, 1000.0), "started")
    assert state.record_report(store, _report("a", 1000.0)) == 0  # the first report: no interval yet
    assert state.record_report(store, _report("a", 1360.0)) == pytest.approx(2 * 300 / 3600)  # gap capped at 300 s
    assert state.record_report(store, _report("a", 1360.0)) == 0 == state.record_report(store, _report("a", 1200.0))  # replays
    state.record_report(store, _report("a", 1396.0, version="2.0"))  # 36 s more, counted on the version it ran (1.0)
    assert state.exposure(store, rid) == {("a", "1.0"): pytest.approx(2 * 336 / 3600)}
    state.record_wave(store, rid, 10, ["a"], {"b": "too old"}, 1400.0, "wave 10")
    state.record_wave(store, rid, 50, ["c"], {"b": "still too old", "a": "would not be skipped"}, 1500.0, "wave 50")
    ms = {m.agent_id: (m.wave, m.skipped) for m in state.members(store, rid)}
    assert ms == {"a": (10, None), "b": (0, "still too old"), "c": (50, None)}
    state.record_status(store, "a", "m", "2.0", "rejected", "too loud", 1401.0, "1.0")
    assert state.statuses(store, "m", "2.0") == {"a": {"rejected": "too loud"}}
    state.set_state(store, rid, "paused", 1502.0, "pause", "diverged")
    ro = state.rollout(store, rid)
    assert ro is not None and (ro.state, ro.waves, ro.percent) == ("paused", (10.0, 50.0), 50.0)
    assert [d.action for d in state.decisions(store, rid)] == ["wave", "wave", "wave", "pause"]
    assert state.reports(store, "g")["a"].live_version == "1.0"  # the status at 1401 is newer than the report at 1396


def test_a_bundle_no_agent_can_load_is_refused_with_the_reasons(tmp_path: Path) -> None:
    from cloud.rollout.publish import Broker, publish_wave
    from edge.contract import ConfigError

    key, _ = generate_keypair(tmp_path / "keys")
    reg = Registry(tmp_path / "registry")
    reg.register(_model(tmp_path / "1.0", "1.0", key, 0.95))
    reg.promote("tiny-zscore", "1.0")
    reg.register(_model(tmp_path / "2.0", "2.0", key, 0.95, min_onnxruntime="1.30"))
    s = open_sqlite(tmp_path / "store.db")
    s.migrate()
    nowhere = Broker(port=1)  # never reached: the refusal comes first
    with pytest.raises(ConfigError, match="no agent of group g has reported"):
        publish_wave(s, reg, nowhere, name="tiny-zscore", version="2.0", group="g", percent=10)
    for agent, ort in (("a", "1.20.1"), ("b", "1.17.0")):
        state.record_report(s, state.AgentReport(agent, "g", "tiny-zscore", "1.0", 1, vars(_info(onnxruntime=ort)), 1.0))
    with pytest.raises(ConfigError) as err:
        publish_wave(s, reg, nowhere, name="tiny-zscore", version="2.0", group="g", percent=10)
    assert "no agent of group g can load tiny-zscore 2.0: a: onnxruntime 1.20.1 is older" in str(err.value)
    assert "b: onnxruntime 1.17.0 is older than the manifest's minimum 1.30" in str(err.value)
    assert state.rollouts(s) == []  # nothing started
    s.close()


# -- the fleet --------------------------------------------------------------------------------------

def _model(dest: Path, version: str, key: Path, threshold: float, min_onnxruntime: str = "1.17") -> Path:
    """The score of a window is its last ``vibration`` reading: the feeder's values make the share of
    windows above ``threshold`` exact (0.95: 1 in 25; 0.79: 5 in 25)."""
    live = load_manifest(TINY_MODEL)
    c = len(live.channels)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["windows", "last"], ["row"], axis=1),
         helper.make_node("Gather", ["row", "first"], ["score"], axis=1),
         helper.make_node("ReduceMean", ["windows", "axes1"], ["cm"], keepdims=0),
         helper.make_node("Mul", ["cm", "zero"], ["cz"]),
         helper.make_node("Add", ["cz", "share"], ["channel_scores"])],
        "last_value",
        [helper.make_tensor_value_info("windows", TensorProto.FLOAT, ["batch", live.window_length, c])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("channel_scores", TensorProto.FLOAT, ["batch", c])],
        [helper.make_tensor("last", TensorProto.INT64, [], [live.window_length - 1]),
         helper.make_tensor("first", TensorProto.INT64, [], [0]), helper.make_tensor("axes1", TensorProto.INT64, [1], [1]),
         helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]), helper.make_tensor("share", TensorProto.FLOAT, [], [1.0 / c])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    dest.mkdir(parents=True)
    data = model.SerializeToString()
    (dest / "model.onnx").write_bytes(data)
    manifest = dataclasses.replace(live, version=version, sha256=hashlib.sha256(data).hexdigest(), threshold=threshold,
                                   signature=None, **{**GOOD, "min_onnxruntime": min_onnxruntime})  # type: ignore[arg-type]
    (dest / "manifest.json").write_bytes(encode_manifest(manifest))
    sign_model_dir(dest, load_private_key(key))
    return dest


class Feeder(threading.Thread):
    """Readings of one sensor per agent, 50 per second each, ``vibration`` cycling 0.00-0.99."""

    def __init__(self, port: int, prefix: str, devices: list[str]) -> None:
        super().__init__(daemon=True)
        self.pub = Publisher(port, f"feeder-{prefix}")
        self.prefix, self.devices = prefix, devices
        self.stop = threading.Event()
        channels = [c.name for c in load_manifest(TINY_MODEL).channels]
        self.rest = {c: 1.0 for c in channels[1:]}
        self.first = channels[0]

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            items = []
            for d in self.devices:
                rows = [Reading(d, T0 + j, {self.first: (j % 100) / 100, **self.rest}) for j in range(i, i + 10)]
                items += payloads(rows, batch=10, prefix=self.prefix)
            self.pub.publish(items)
            i += 10
            self.stop.wait(0.2)
        self.pub.close()


@dataclass
class Processor:
    """The processor and its rollout thread, as `edgewatch process` runs them; restartable."""

    config: ProcessorConfig
    threads: list[threading.Thread] = field(default_factory=list)
    stops: list[threading.Event] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def start(self) -> None:
        thread, stop, self.errors = in_thread(self.config)
        rollout_stop = threading.Event()
        rollout = threading.Thread(target=run_rollout, args=(self.config, rollout_stop, CollectorRegistry()), daemon=True)
        rollout.start()
        self.threads, self.stops = [thread, rollout], [stop, rollout_stop]

    def stop(self) -> None:
        for s in self.stops:
            s.set()
        for t in self.threads:
            t.join(60)
        assert not any(t.is_alive() for t in self.threads) and not self.errors, self.errors


@dataclass
class Fleet:
    tmp: Path
    key: Path
    registry: Registry
    group: str
    prefix: str
    port: int
    bootstrap: str
    status_topic: str
    agents: list[Agent]
    processor: Processor
    config_path: Path
    unique: str

    def store(self) -> Store:
        s = open_sqlite(Path(self.processor.config.store.sqlite_path))
        s.migrate()  # the processor may not have made the tables yet
        return s

    def cli(self, capsys: pytest.CaptureFixture[str], *args: str) -> str:
        capsys.readouterr()
        assert main(list(args)) == 0
        return capsys.readouterr().out

    def publish_wave(self, capsys: pytest.CaptureFixture[str], version: str, percent: str) -> str:
        return self.cli(capsys, "registry", "publish", "tiny-zscore", version, "--wave", percent, "--root", str(self.registry.root),
                        "--group", self.group, "--mqtt-port", str(self.port), "--prefix", self.prefix,
                        "--store", str(self.config_path))

    def live_versions(self) -> dict[str, str]:
        return {a.config.agent.id: a.pipeline.manifest.version for a in self.agents if a.pipeline is not None}

    def reports_since(self, since: float) -> dict[str, str]:
        s = self.store()
        try:
            return {a: r.live_version for a, r in state.reports(s, self.group).items() if r.reported_at > since}
        finally:
            s.close()


@pytest.fixture(scope="module")
def fleet(local_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("rollout")
    unique = uuid.uuid4().hex[:8]
    key, _ = generate_keypair(tmp / "keys")
    registry = Registry(tmp / "registry")
    registry.register(_model(tmp / "src" / "1.0.0", "1.0.0", key, 0.95))
    registry.promote("tiny-zscore", "1.0.0")
    topics = {k: f"ro.{unique}.{k}" for k in ("anomalies", "telemetry", "deadletter", "status")}
    for t in topics.values():
        create_topic(local_stack.kafka_bootstrap, t)
    create_topic(local_stack.kafka_bootstrap, topics["anomalies"] + ".alerts")
    prefix, group = f"ro{unique}", f"g{unique}"
    ids = [f"agent{i}-{unique}" for i in range(AGENTS)]
    devices = [f"sensor{i}-{unique}" for i in range(AGENTS)]
    agents = []
    for i, agent_id in enumerate(ids):
        quiet = ", ".join(f'"{d}" = 1e9' for d in devices if d != devices[i])  # alerts only on its own sensor
        extra = f"""[updates]
enabled = true
group = "{group}"
trusted_keys_dir = "{tmp / 'keys'}"
state_dir = "{tmp / agent_id / 'models'}"
shadow_min_windows = 40
shadow_min_seconds = 1.0
shadow_rate_factor = 100.0
shadow_rate_floor = 1.0
report_interval_s = 1.0
[decision]
device_thresholds = {{ {quiet} }}
[sensor_health]
enabled = false  # the feed holds five channels flat: its windows are about the model, not the sensors
"""
        path = toml_config(tmp, agent_id=agent_id, mqtt_port=local_stack.mqtt_port, kafka_bootstrap=local_stack.kafka_bootstrap,
                           prefix=prefix, topics=topics, extra=extra, model=registry.version_dir("tiny-zscore", "1.0.0"))
        config = load_agent_config(path, env={})
        config = dataclasses.replace(config, kafka=dataclasses.replace(config.kafka, status_topic=topics["status"]))
        agents.append(Agent(config))
    for agent in agents:
        agent.start()
    feeder = Feeder(local_stack.mqtt_port, prefix, devices)
    feeder.start()
    config_path = write_config(tmp / "cloud.toml", bootstrap=local_stack.kafka_bootstrap, topic=topics["anomalies"],
                               group=f"proc-{unique}", sqlite_path=tmp / "store.db", own_process=False, extra=f"""
[rollout]
enabled = true
group_id = "rollout-{unique}"
status_topic = "{topics['status']}"
registry = "{registry.root}"
mqtt_port = {local_stack.mqtt_port}
mqtt_prefix = "{prefix}"
waves = [10, 50, 100]
min_exposure_device_hours = 0.01
max_ratio = 3.0
min_events = 5
min_wave_s = 4.0
interval_s = 0.5
""")
    processor = Processor(load_config(config_path, env={}))
    processor.start()
    f = Fleet(tmp, key, registry, group, prefix, local_stack.mqtt_port, local_stack.kafka_bootstrap, topics["status"], agents,
              processor, config_path, unique)
    wait_for(lambda: len(f.reports_since(0)) == AGENTS, 60, "every agent's first report in the store")
    yield f
    feeder.stop.set()
    feeder.join(30)
    for agent in agents:
        agent.stop()
    processor.stop()


def _statuses(f: Fleet, version: str) -> dict[str, list[str]]:
    reader = TopicReader(f.bootstrap, f.status_topic, f"st-{uuid.uuid4().hex[:8]}")
    try:
        values = reader.poll_until(lambda v: len(v) > 0, 30, "statuses")
        time.sleep(1.0)
        reader.poll_until(lambda v: True, 1, "more")
        for records in reader.consumer.poll(timeout_ms=1000).values():
            values.extend(r.value for r in records)
    finally:
        reader.close()
    out: dict[str, list[str]] = {}
    for s in map(decode_status, values):
        if s.model_version == version and s.action != "report":
            out.setdefault(s.agent_id, []).append(s.action)
    return out


def _state(f: Fleet, rid: str) -> str:
    s = f.store()
    try:
        ro = state.rollout(s, rid)
        return ro.state if ro else "none"
    finally:
        s.close()


def test_a_loud_candidate_is_paused_by_itself_and_aborted(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    f = fleet
    f.registry.register(_model(f.tmp / "src" / "2.0.0", "2.0.0", f.key, 0.79))  # 5x the windows above threshold
    out = f.publish_wave(capsys, "2.0.0", "10%")
    rid = state.rollout_id(f.group, "tiny-zscore", "2.0.0")
    s = f.store()
    wave = [m.agent_id for m in state.members(s, rid) if m.skipped is None]
    s.close()
    assert len(wave) == 1 and f"{wave[0]}: wave 10%" in out
    wait_for(lambda: _state(f, rid) == "paused", 90, "the rollout to pause by itself",
             state=lambda: f.cli(capsys, "rollout", "status", "tiny-zscore", "--config", str(f.config_path)))
    status = f.cli(capsys, "rollout", "status", "tiny-zscore", "--config", str(f.config_path))
    assert "paused at 10%" in status and "pause  events:" in status, status
    # the alert
    alerts = TopicReader(f.bootstrap, str(f.processor.config.kafka.alerts_topic), f"al-{f.unique}")
    try:
        got = [decode_alert(v) for v in alerts.poll_until(
            lambda vs: any(decode_alert(v).kind == "rollout_paused" for v in vs), 30, "the rollout_paused alert")]
    finally:
        alerts.close()
    (alert,) = [a for a in got if a.kind == "rollout_paused"]
    assert alert.model_version == "2.0.0" and alert.device_ids == tuple(wave) and "events:" in alert.detail
    time.sleep(3)  # no further wave while paused
    assert _state(f, rid) == "paused" and "wave 50%" not in f.cli(capsys, "rollout", "status", "--config", str(f.config_path))
    # outside the wave, nothing of 2.0.0 arrived
    versions = f.live_versions()
    assert versions[wave[0]] == "2.0.0" and all(v == "1.0.0" for a, v in versions.items() if a != wave[0]), versions
    said = _statuses(f, "2.0.0")
    assert set(said) == {wave[0]} and said[wave[0]][:3] == ["downloaded", "shadow_started", "promoted"], said
    assert not any((f.tmp / a / "models" / "models" / "tiny-zscore" / "2.0.0").exists() for a in versions if a != wave[0])

    # resumed, it is compared afresh from now, and pauses again on the new evidence
    assert "running again at 10%" in f.cli(capsys, "rollout", "resume", "tiny-zscore", "--config", str(f.config_path))
    wait_for(lambda: _state(f, rid) == "paused", 60, "the resumed rollout to pause again")
    s = f.store()
    assert [d.action for d in state.decisions(s, rid)][-3:] == ["pause", "resume", "pause"]
    s.close()

    aborted = time.time()
    assert f"1.0.0 announced again to {wave[0]}" in f.cli(capsys, "rollout", "abort", "tiny-zscore", "--config", str(f.config_path))
    wait_for(lambda: all(v == "1.0.0" for v in f.live_versions().values()), 60, "the wave back on 1.0.0")
    wait_for(lambda: len(f.reports_since(aborted + 1)) == AGENTS, 30, "a report of every agent after the abort")
    assert set(f.reports_since(aborted + 1).values()) == {"1.0.0"}
    assert "rolled_back" in _statuses(f, "1.0.0").get(wave[0], [])
    assert _state(f, rid) == "aborted"


def _fake_report(f: Fleet, agent: str, **info: Any) -> bytes:
    base = dict(agent_version="0.1.0", onnxruntime="1.20.1", max_opset=21, arch="aarch64", mem_total_bytes=4 << 30,
                mem_available_bytes=2 << 30, disk_free_bytes=8 << 30, devices=1, group=f.group)
    return encode_status(ModelStatus(agent_id=agent, action="report", model_name="tiny-zscore", model_version="1.0.0", reason="",
                                     at=time.time(), live_version="1.0.0", agent=AgentInfo(**{**base, **info})))


def test_a_good_candidate_rolls_to_100_percent_through_a_restart_skipping_what_cannot_run_it(
        fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    from kafka import KafkaProducer

    f = fleet
    producer = KafkaProducer(bootstrap_servers=f.bootstrap)
    for agent, info in ((f"old-{f.unique}", dict(onnxruntime="1.16.3")), (f"small-{f.unique}", dict(mem_available_bytes=1 << 20))):
        producer.send(f.status_topic, key=agent.encode(), value=_fake_report(f, agent, **info))
    producer.flush(30)
    producer.close()
    wait_for(lambda: len(f.reports_since(0)) == AGENTS + 2, 30, "the two reports in the store")
    f.registry.register(_model(f.tmp / "src" / "3.0.0", "3.0.0", f.key, 0.95))
    out = f.publish_wave(capsys, "3.0.0", "10%")
    assert f"old-{f.unique}: skipped: onnxruntime 1.16.3 is older than the manifest's minimum 1.17" in out, out
    assert f"small-{f.unique}: skipped: memory:" in out
    rid = state.rollout_id(f.group, "tiny-zscore", "3.0.0")

    # a restart mid-wave: the comparison goes on from the store
    wait_for(lambda: "3.0.0" in f.live_versions().values(), 60, "the wave's agent on 3.0.0")
    s = f.store()
    before_exposure = sum(state.exposure(s, rid).values())
    before = [(d.action, d.reason) for d in state.decisions(s, rid)]
    s.close()
    f.processor.stop()
    assert _state(f, rid) == "running"
    f.processor.start()
    wait_for(lambda: _state(f, rid) == "done", 120, "the rollout at 100%",
             state=lambda: f.cli(capsys, "rollout", "status", "tiny-zscore", "--config", str(f.config_path)))
    s = f.store()
    after = [(d.action, d.reason) for d in state.decisions(s, rid)]
    assert after[: len(before)] == before and sum(state.exposure(s, rid).values()) > before_exposure
    ro = state.rollout(s, rid)
    s.close()
    assert ro is not None and ro.waves == (10.0, 50.0, 100.0)
    assert [a for a, _ in after].count("wave") == 4 and "processor (no divergence" in after[-2][1]  # start + 3 waves, done
    wait_for(lambda: set(f.live_versions().values()) == {"3.0.0"}, 90, "every agent on 3.0.0")
    assert f.registry.stages("tiny-zscore").production == "3.0.0"
    status = f.cli(capsys, "rollout", "status", "tiny-zscore", "--config", str(f.config_path))
    assert f"skipped old-{f.unique}: onnxruntime 1.16.3 is older" in status and f"skipped small-{f.unique}: memory:" in status
    assert "done at 100%" in status and "wave 50%:" in status, status
