"""Fleet acceptance test of the adaptive decision layer on the real brokers (issue 13).

31 simulated devices (:mod:`tests.cloud.fleet_util`: operating points, noise and drift of their
own, 119 injected faults) send 6 h of 1 Hz readings each (``dev-30`` its last 3.5 h): 7.6
device-days, 661,800 readings, 82,000 windows per agent, stamped in the recent past and published
as fast as the brokers take them. Two agents read the same MQTT stream at once, each with its own
agent id, client id and Kafka topics, and the default model (``models/zoo/default``): one with
``[adaptive] enabled = false`` (static, the manifest's threshold), one with the shipped
``[adaptive]`` defaults. Mid-run (3 h) the adaptive agent is stopped while the stream goes on, and
a new :class:`~edge.agent.Agent` starts on the same outbox and state files; at 4.5 h an operator's
signed ``new_normal`` command (what ``edgewatch incidents label ID --new-normal`` publishes)
rebaselines ``dev-07``. Events are read back from Kafka and scored against the injected faults.

One run (the module fixture ``run``) is shared by the assertions; ``pytest -s`` prints its figures.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cloud.commands import new_normal_command, publish_command, sign_command
from cloud.keys import generate_keypair, load_private_key
from edge.adaptive import AdaptiveSettings
from edge.agent import Agent
from edge.config import Config, default_model_dir, load_config
from edge.contract.update import decode_status
from edge.detector import OnnxDetector
from edge.pipeline import Scorer
from edge.synth import CHANNEL_NAMES, simulate
from localdev.stack import LocalStack
from tests.cloud import fleet_util as fu
from tests.edge.agent_util import Publisher, TopicReader, toml_config
from tests.kafka_util import create_topic
from tests.tools import wait_for

HOURS = 6
END_S = HOURS * fu.HOUR_S
RESTART_S = END_S // 2            # the adaptive agent is replaced here ...
DOWN_S = 1800                     # ... and the stream goes on for this long before the new one starts
NEW_NORMAL_S = END_S * 3 // 4     # dev-07 is rebaselined here
NEW_NORMAL_DEVICE = "dev-07"
BATCH_S = 300                     # readings per payload (one device)
CHUNK_S = 1800                    # published at once
WARMUP = AdaptiveSettings().warmup_windows
ENV = {"EDGEWATCH_AGENT__MAX_PAYLOAD_BYTES": str(256 * 1024), "EDGEWATCH_AGENT__QUEUE_MAX_BYTES": str(512 * 1024 * 1024),
       "EDGEWATCH_TELEMETRY__EVERY_N_WINDOWS": "0", "EDGEWATCH_TELEMETRY__ANOMALY_CONTEXT_WINDOWS": "0"}


def test_simulate_operating_point_options_keep_the_defaults_and_do_what_they_say() -> None:
    base, labels = simulate(2000, seed=5)
    np.testing.assert_array_equal(base, simulate(2000, seed=5, load_offset=0.0, noise_scale=1.0, drift_per_h=0.0)[0])
    gains = simulate(2000, seed=5, load_offset=1.0)[0] - base  # each channel moves along its load line ...
    np.testing.assert_allclose(gains, np.broadcast_to(gains[0], base.shape), atol=1e-9)  # ... at every step
    assert (gains[0, :-1] > 0).all() and gains[0, -1] < 0  # the supply voltage sags under load
    np.testing.assert_allclose(simulate(2000, seed=5, load_offset=-0.2)[0] - base, -0.2 * gains, atol=1e-9)
    clean = simulate(2000, seed=5, noise_scale=0.0)[0]
    np.testing.assert_allclose(simulate(2000, seed=5, noise_scale=2.0)[0] - clean, 2.0 * (base - clean), atol=1e-9)
    flow = CHANNEL_NAMES.index("flow")
    drift = simulate(3601, seed=5, drift_per_h=[0.5 if c == "flow" else 0.0 for c in CHANNEL_NAMES])[0] - simulate(3601, seed=5)[0]
    assert drift[0].tolist() == [0.0] * 6 and drift[-1, flow] == pytest.approx(0.5 * gains[0, flow])
    assert np.count_nonzero(drift[-1]) == 1 and not labels.any()


State = dict[str, tuple[float, bool, int]]
"""Each device's adaptive threshold, whether it is warming up, and the windows its state decided."""


@dataclasses.dataclass
class FleetRun:
    """What one run measured (see the module docstring)."""

    fleet: list[fu.Device]
    t0: float
    static: dict[str, list[tuple[float, float]]] = dataclasses.field(default_factory=dict)   # event windows by device
    adaptive: dict[str, list[tuple[float, float]]] = dataclasses.field(default_factory=dict)
    before_restart: State = dataclasses.field(default_factory=dict)   # the first adaptive agent's, once stopped
    after_restart: State = dataclasses.field(default_factory=dict)    # the second one's, restored, before any window
    before_command: State = dataclasses.field(default_factory=dict)
    after_command: State = dataclasses.field(default_factory=dict)
    command_status: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (action, device) of its status events
    counts: dict[str, float] = dataclasses.field(default_factory=dict)
    wall_s: float = 0.0

    def scoreboard(self, which: str) -> fu.Scoreboard:
        return fu.score(self.fleet, self.t0, self.static if which == "static" else self.adaptive)

    def device(self, device_id: str) -> fu.Device:
        return next(d for d in self.fleet if d.device_id == device_id)

    def events_between(self, which: str, device_id: str, lo: float, hi: float) -> int:
        """Events of ``device_id`` whose window ends in ``[lo, hi]``."""
        windows = self.static if which == "static" else self.adaptive
        return sum(1 for _start, end in windows.get(device_id, []) if lo <= end <= hi)


class GatedScorer:
    """The default model, holding its first batch until :attr:`gate` is set: the test reads a
    restarted agent's restored state before any window can change it (the backlog its MQTT
    session kept arrives at once)."""

    def __init__(self, gate: threading.Event) -> None:
        self.detector = OnnxDetector.load(default_model_dir())
        self.manifest = self.detector.manifest
        self.gate = gate

    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.gate.wait(60):
            raise AssertionError("the gate of the restarted agent's scorer was never opened")
        return self.detector.score(windows)


class Rig:
    """The brokers' side of the run: keys, topics, the two agents' configs, the publisher."""

    def __init__(self, stack: LocalStack, tmp: Path, unique: str) -> None:
        self.stack, self.tmp, self.unique = stack, tmp, unique
        self.key = load_private_key(generate_keypair(tmp / "keys")[0])
        self.prefix = f"fleet{unique}"
        self.topics = {name: f"fleet.{name}.{unique}" for name in
                       ("static.anomalies", "adaptive.anomalies", "telemetry", "deadletter", "status")}
        for topic in self.topics.values():
            create_topic(stack.kafka_bootstrap, topic)
        self.static_cfg = self.config("static", adaptive=False)
        self.adaptive_cfg = self.config("adaptive", adaptive=True, extra=f"""[updates]
enabled = true
group = "g{unique}"
trusted_keys_dir = "{tmp / 'keys'}"
state_dir = "{tmp / 'models'}"
""")
        self.publisher = Publisher(stack.mqtt_port, f"fleet-pub-{unique}")
        self.published = 0

    def config(self, kind: str, *, adaptive: bool, extra: str = "") -> Config:
        topics = {"anomalies": self.topics[f"{kind}.anomalies"], "telemetry": self.topics["telemetry"],
                  "deadletter": self.topics["deadletter"]}
        path = toml_config(self.tmp, agent_id=f"fleet-{kind}-{self.unique}", mqtt_port=self.stack.mqtt_port,
                           kafka_bootstrap=self.stack.kafka_bootstrap, prefix=self.prefix, topics=topics, extra=extra,
                           model=default_model_dir(), adaptive=adaptive)
        return load_config(path, env={**ENV, "EDGEWATCH_KAFKA__STATUS_TOPIC": self.topics["status"]})

    def start(self, config: Config, scorer: Scorer | None = None) -> Agent:
        agent = Agent(config, registry=CollectorRegistry(), scorer=scorer)
        agent.start()
        assert agent.intake is not None
        wait_for(agent.intake.subscribed.is_set, 30, f"{config.agent.id}'s MQTT subscription")
        return agent

    def publish(self, run: FleetRun, lo_s: int, hi_s: int) -> None:
        for start in range(lo_s, hi_s, CHUNK_S):
            items = fu.payloads(run.fleet, run.t0, start, min(start + CHUNK_S, hi_s), batch_s=BATCH_S, prefix=self.prefix)
            self.publisher.publish(items)
            self.published += len(items)


def state(agent: Agent) -> State:
    assert agent.pipeline is not None and agent.pipeline.adaptive is not None
    layer = agent.pipeline.adaptive
    return {d: (layer.threshold(d), layer.warming(d), s.windows) for d, s in list(layer.devices.items())}


def wait_decided(agent: Agent, expected: dict[str, int], what: str) -> None:
    """Until the adaptive ``agent`` has decided ``expected`` windows of each device (its state's own count)."""
    def short() -> dict[str, tuple[int | None, int]]:
        now = state(agent)
        return {d: (now[d][2] if d in now else None, n) for d, n in expected.items() if d not in now or now[d][2] < n}

    try:
        wait_for(lambda: not short(), 180, what, every_s=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: worker errors {agent.worker_errors}, readings dropped "
                             f"{fu.sample(agent, 'readings_dropped')}, (decided, expected) {short()}") from None


def restart(rig: Rig, run: FleetRun, first: Agent, gate: threading.Event) -> Agent:
    """Stop the adaptive agent at RESTART_S, go on publishing for DOWN_S, start a new one on the same files."""
    wait_decided(first, {d.device_id: d.windows_between(0, RESTART_S) for d in run.fleet if d.first_s < RESTART_S},
                 "the first adaptive agent's windows")
    first.stop()  # graceful: drains, saves the adaptive state, flushes the outbox
    run.before_restart = state(first)
    rig.publish(run, RESTART_S, RESTART_S + DOWN_S)  # kept by the broker for the adaptive agent's session
    second = rig.start(rig.adaptive_cfg, GatedScorer(gate))
    run.after_restart = state(second)
    gate.set()
    return second


def new_normal(rig: Rig, run: FleetRun, agent: Agent) -> None:
    """At NEW_NORMAL_S, once every window before it is decided: the operator's signed command for dev-07."""
    wait_decided(agent, {d: n + run.device(d).windows_between(RESTART_S, NEW_NORMAL_S) for d, (_, _, n) in run.before_restart.items()},
                 "the second adaptive agent's windows before the command")
    run.before_command = state(agent)
    assert agent.commands is not None
    wait_for(agent.commands.subscribed.is_set, 30, "the command subscription")
    status = TopicReader(rig.stack.kafka_bootstrap, rig.topics["status"], f"fleet-status-{rig.unique}")
    command = sign_command(new_normal_command(agent_id=rig.adaptive_cfg.agent.id, device_id=NEW_NORMAL_DEVICE,
                                              incident_id="fleet-incident", issued_at=time.time()), rig.key)
    publish_command(command, host="127.0.0.1", port=rig.stack.mqtt_port, prefix=rig.prefix)
    try:
        values = status.poll_until(lambda vs: any(decode_status(v).command_id == command.command_id for v in vs), 60,
                                   "the command's status")
    finally:
        status.close()
    run.after_command = state(agent)
    run.command_status = [(s.action, s.device_id) for s in map(decode_status, values) if s.command_id == command.command_id]


def drive(rig: Rig, run: FleetRun) -> None:
    """The whole run: both agents on the stream, the restart, the command, then the events from Kafka."""
    static = rig.start(rig.static_cfg)
    first = rig.start(rig.adaptive_cfg)
    agents = [static, first]
    gate = threading.Event()
    try:
        rig.publish(run, 0, RESTART_S)
        second = restart(rig, run, first, gate)
        agents.append(second)
        rig.publish(run, RESTART_S + DOWN_S, NEW_NORMAL_S)
        new_normal(rig, run, second)
        rig.publish(run, NEW_NORMAL_S, END_S)
        ends = {d: n + run.device(d).windows_between(RESTART_S, END_S) for d, (_, _, n) in run.before_restart.items()}
        nn = run.device(NEW_NORMAL_DEVICE)  # its count started again at the command; its windows did not
        ends[nn.device_id] = nn.windows_between(RESTART_S, END_S) - nn.windows_between(RESTART_S, NEW_NORMAL_S)
        wait_decided(second, ends, "the second adaptive agent's windows")
        expected = sum(d.windows_between(0, END_S) for d in run.fleet)
        wait_for(lambda: fu.sample(static, "windows_scored") >= expected, 180, "the static agent's windows", every_s=0.2)
    finally:
        gate.set()
        left = sum(a.stop() for a in agents)
    adaptive = agents[1:]
    run.counts = {"published": rig.published, "expected_windows": expected, "static_windows": fu.sample(static, "windows_scored"),
                  "adaptive_windows": sum(fu.sample(a, "windows_scored") for a in adaptive),
                  "astride_restart": 3 * len(run.before_restart),  # (32 - 8) / 8 windows a device, held in memory only
                  "static_received": fu.sample(static, "messages_received"),
                  "adaptive_received": sum(fu.sample(a, "messages_received") for a in adaptive),
                  "dropped": sum(fu.sample(a, "readings_dropped") + fu.sample(a, "queue_dropped_messages") for a in agents),
                  "rejected": sum(fu.sample(a, "payloads_rejected") for a in agents), "outbox_left": left,
                  "static_anomalies": fu.events_written(static), "adaptive_anomalies": sum(fu.events_written(a) for a in adaptive)}
    for which in ("static", "adaptive"):
        reader = TopicReader(rig.stack.kafka_bootstrap, rig.topics[f"{which}.anomalies"], f"fleet-{which}-{rig.unique}")
        try:
            n = int(run.counts[f"{which}_anomalies"])
            values = reader.poll_until(lambda vs, n=n: len(vs) >= n, 120, f"the {which} agent's {n} events")
        finally:
            reader.close()
        run.counts[f"{which}_in_kafka"] = len(values)
        setattr(run, which, fu.event_windows(values))


def report(run: FleetRun) -> None:
    s, a = run.scoreboard("static"), run.scoreboard("adaptive")
    lines = [f"fleet acceptance: {len(run.fleet)} devices, {s.device_days:.2f} device-days, {s.faults} faults, "
             f"wall {run.wall_s:.0f} s",
             f"{'agent':<9} {'events':>7} {'false':>7} {'FA/dev-day':>10} {'caught':>7} {'recall':>6}"]
    for name, b in (("static", s), ("adaptive", a)):
        lines.append(f"{name:<9} {b.events:>7} {b.false_alarms:>7} {b.false_alarms_per_device_day:>10.1f} "
                     f"{b.caught:>7} {b.recall:>6.3f}")
    lines.append(f"false alarms fall {s.false_alarms_per_device_day / max(a.false_alarms_per_device_day, 1e-9):.1f}x; "
                 f"the adaptive agent missed: {', '.join(a.missed) or 'none'}")
    for key, value in sorted(figures(run).items()):
        lines.append(f"  {key}: {value}")
    print("\n".join(lines))


def figures(run: FleetRun) -> dict[str, object]:
    """The figures the role devices' assertions check, by name."""
    lo, hi = run.device("dev-00").spans(run.t0)[0]
    late = run.device("dev-30")
    late_lo = run.t0 + late.first_s
    late_hi = late_lo + fu.WINDOW - 1 + (WARMUP - 1) * fu.STRIDE
    nn = run.t0 + NEW_NORMAL_S
    before, after = run.before_restart, run.after_restart
    rel = [abs(after[d][0] - before[d][0]) / before[d][0] for d in before if d in after]
    return {
        "stuck_last_10min_events": run.events_between("adaptive", "dev-00", hi - 600, hi + fu.WINDOW - 1),
        "stuck_span_events": run.events_between("adaptive", "dev-00", lo, hi + fu.WINDOW - 1),
        "stuck_span_windows": int((hi - lo) // fu.STRIDE),
        "late_warmup_events_adaptive": run.events_between("adaptive", "dev-30", late_lo, late_hi),
        "late_warmup_events_static": run.events_between("static", "dev-30", late_lo, late_hi),
        "new_normal_rewarmup_events": run.events_between("adaptive", NEW_NORMAL_DEVICE, nn, nn + WARMUP * fu.STRIDE),
        "restart_devices_before_after": (len(before), len(after)),
        "restart_max_threshold_change": max(rel) if rel else math.nan,
        "restart_warming": sorted(d for d, v in before.items() if v[1]),
        "new_normal_warming_before": sorted(d for d, v in run.before_command.items() if v[1]),
        "new_normal_warming_after": sorted(d for d, v in run.after_command.items() if v[1]),
        **run.counts,
    }


@pytest.fixture(scope="module")
def run(local_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetRun]:
    started = time.monotonic()
    fleet = fu.build_fleet(HOURS)
    result = FleetRun(fleet, t0=float(int(time.time()) - END_S - 600))  # readings end 10 minutes ago
    rig = Rig(local_stack, tmp_path_factory.mktemp("fleet"), uuid.uuid4().hex[:8])
    try:
        drive(rig, result)
    finally:
        rig.publisher.close()
    result.wall_s = time.monotonic() - started
    report(result)
    yield result


@pytest.mark.brokers
@pytest.mark.slow
def test_false_alarms_fall_five_fold_while_faults_are_still_caught(run: FleetRun) -> None:
    static, adaptive = run.scoreboard("static"), run.scoreboard("adaptive")
    assert static.faults == adaptive.faults >= 100
    assert adaptive.false_alarms_per_device_day * 5 <= static.false_alarms_per_device_day
    assert adaptive.recall >= 0.9


@pytest.mark.brokers
@pytest.mark.slow
def test_a_two_hour_stuck_sensor_fires_through_to_its_end(run: FleetRun) -> None:
    f = figures(run)
    assert f["stuck_last_10min_events"] >= 1  # type: ignore[operator]


@pytest.mark.brokers
@pytest.mark.slow
def test_a_restart_keeps_every_device_state_and_loses_nothing(run: FleetRun) -> None:
    before, after = run.before_restart, run.after_restart
    assert set(after) == set(before) == {d.device_id for d in run.fleet if d.first_s < RESTART_S}
    for d, (threshold, warming, windows) in before.items():
        assert after[d][1] == warming, d  # a warm device is not warming again (and dev-30 goes on with its warm-up)
        assert after[d][0] == pytest.approx(threshold, rel=1e-9), d
        assert after[d][2] == windows, d
    c = run.counts
    assert c["static_received"] == c["adaptive_received"] == c["published"]
    assert c["dropped"] == c["rejected"] == c["outbox_left"] == 0
    assert c["static_windows"] == c["expected_windows"]
    assert c["adaptive_windows"] == c["expected_windows"] - c["astride_restart"]
    assert c["static_in_kafka"] == c["static_anomalies"] and c["adaptive_in_kafka"] == c["adaptive_anomalies"]


@pytest.mark.brokers
@pytest.mark.slow
def test_a_device_that_appears_mid_run_warms_up_without_a_storm(run: FleetRun) -> None:
    f = figures(run)  # a storm fires on most of its warm-up windows (the static agent on about half of them)
    assert f["late_warmup_events_adaptive"] <= 0.05 * WARMUP  # type: ignore[operator]


@pytest.mark.brokers
@pytest.mark.slow
def test_new_normal_rebaselines_exactly_that_device(run: FleetRun) -> None:
    assert run.command_status == [("rebaselined", NEW_NORMAL_DEVICE)]
    assert {d for d, v in run.before_command.items() if v[1]} == set()
    assert {d for d, v in run.after_command.items() if v[1]} == {NEW_NORMAL_DEVICE}
    assert run.after_command[NEW_NORMAL_DEVICE][2] == 0  # its state starts again; every other device's goes on
    assert all(run.after_command[d] == v for d, v in run.before_command.items() if d != NEW_NORMAL_DEVICE)
