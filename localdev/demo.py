"""``edgewatch demo``: the whole pipeline on this machine, in a few minutes.

Local Mosquitto and Kafka, the edge agent with the default model, the stream processor, and a
simulated fleet with injected faults; anomalies and incident alerts are printed as they arrive
from Kafka. It ends with what was detected against what was injected, where the metrics were
served, and a plot of one device.

With ``groups`` (the default) the fleet is edge.fleetsim's: pumps in sites, one drifting away from
its peers, a sensor fault of each kind, a device that goes silent, process faults on the others;
the processor runs its peer comparison, and the summary gives, per incident kind, what was
injected, found and missed (:func:`score_by_kind`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaConsumer

from cloud.kafka_groups import subscribe
from cloud.processor.config import ProcessorKafkaSection
from edge import fleetsim, simulator
from edge.agent import Agent
from edge.cliutil import ProgressLine
from edge.config import KafkaSection, default_model_dir, load_config
from edge.contract import AnomalyEvent, ContractError, decode_event
from edge.contract.alert import decode_alert
from edge.detector import load_manifest
from localdev.demo_kinds import KindScore, kind_lines, score_by_kind, settled_incidents
from localdev.kafka_admin import create_topics
from localdev.stack import LocalStack, free_port

log = logging.getLogger(__name__)

# the topics of the default configs: the agent's, and the processor's alerts
TOPICS = tuple(dict.fromkeys((KafkaSection.anomalies_topic, KafkaSection.telemetry_topic, KafkaSection.deadletter_topic,
                              KafkaSection.status_topic, ProcessorKafkaSection.alerts_topic)))


@dataclass
class DemoResult:
    readings_sent: int = 0
    windows_scored: int = 0
    events: list[AnomalyEvent] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    found: int = 0
    missed: int = 0
    false_alarms: int = 0
    faults: int = 0
    plot: Path | None = None
    kinds: dict[str, KindScore] = field(default_factory=dict)  # per incident kind, with groups


# the synthetic pumps' physical ranges with a wide margin: the default model's manifest has no learned
# channel_ranges, so the agent's range check gets them from its config
RANGE_MAX = {"vibration": 6.0, "current": 40.0, "pressure": 10.0, "temperature": 100.0, "flow": 60.0, "voltage": 240.0}


def write_configs(out: Path, stack: LocalStack, metrics_port: int, processor_port: int,
                  groups: bool = False) -> tuple[Path, Path]:
    """The agent's and the processor's configs; with ``groups``, telemetry for the peer comparison, the sensor
    ranges, sites of two parts (``plant-a``) and the processor's ``[peers]`` scaled to the demo's short run."""
    ranges = ", ".join(f"{k} = {v}" for k, v in RANGE_MAX.items())
    agent_fleet = f"""[telemetry]
every_n_windows = 2
[sensor_health]
range_max = {{ {ranges} }}
""" if groups else ""
    processor_fleet = """[peers]
enabled = true
span_s = 120.0
tick_s = 30.0
min_duration_s = 120.0
min_group_size = 4
""" if groups else ""
    agent_toml = out / "agent.toml"
    agent_toml.write_text(f"""[agent]
id = "demo-gateway"
[mqtt]
port = {stack.mqtt_port}
client_id = "edgewatch-demo-agent"
[kafka]
bootstrap = "{stack.kafka_bootstrap}"
[model]
path = "{default_model_dir()}"
[outbox]
path = "{out / 'outbox.sqlite'}"
[metrics]
port = {metrics_port}
{agent_fleet}""")
    cloud_toml = out / "cloud.toml"
    cloud_toml.write_text(f"""[kafka]
bootstrap = "{stack.kafka_bootstrap}"
[store]
sqlite_path = "{out / 'edgewatch.db'}"
[incidents]
min_events = 2
window_s = 120.0
quiet_s = 120.0
[fleet]
min_devices = 3
prefix_parts = {2 if groups else 1}
[metrics]
port = {processor_port}
{processor_fleet}""")
    return agent_toml, cloud_toml


def score_detections(events: Sequence[AnomalyEvent], truth: dict[str, object], window_s: float) -> tuple[int, int, int]:
    """(faults found, faults missed, false-alarm events): an event that overlaps a fault, or the
    windows that still hold its readings after it ends, finds it; any other event is a false alarm."""
    faults = truth["faults"]
    assert isinstance(faults, list)
    hit = [False] * len(faults)
    false_alarms = 0
    for e in events:
        matched = False
        for i, f in enumerate(faults):
            if f["device_id"] == e.device_id and e.window_end >= f["start_ts"] and e.window_start <= f["end_ts"] + window_s:
                hit[i] = matched = True
        false_alarms += not matched
    return sum(hit), len(hit) - sum(hit), false_alarms


def plot_device(path: Path, fleet: Sequence[simulator.DeviceStream], events: Sequence[AnomalyEvent]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    device = max(fleet, key=lambda d: sum(e.device_id == d.device_id for e in events))
    t0 = device.ts[0]
    detected = _merge(sorted((e.window_start, e.window_end) for e in events if e.device_id == device.device_id))
    t = (device.ts - t0) / 60.0
    fig, axes = plt.subplots(len(device.channels), 1, figsize=(12, 1.6 * len(device.channels)), sharex=True)
    for ax, j in zip(axes, range(len(device.channels)), strict=True):
        ax.plot(t, device.values[:, j], lw=0.7, color="#1f4e79")
        ax.set_ylabel(device.channels[j], rotation=0, ha="right", fontsize=8)
        for start, end in detected:
            ax.axvspan((start - t0) / 60, (end - t0) / 60, color="orange", alpha=0.3, lw=0)
        for f in device.faults:  # the truth as a red band along the top of every panel
            ax.axvspan((f.start_ts - t0) / 60, (f.end_ts - t0) / 60, ymin=0.9, ymax=1.0, color="red", alpha=0.8, lw=0)
    kinds = ", ".join(f"{f.kind} on {f.channel}" for f in device.faults)
    axes[0].set_title(f"{device.device_id}: injected faults (red band: {kinds}) and detected anomaly windows (orange)", fontsize=10)
    axes[-1].set_xlabel("minutes of machine time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class KafkaPrinter(threading.Thread):
    """Prints anomaly events and alerts as they arrive on Kafka, and keeps the events."""

    def __init__(self, bootstrap: str, result: DemoResult, progress: ProgressLine) -> None:
        super().__init__(name="demo-printer", daemon=True)
        self.result = result
        self.progress = progress
        self.stop = threading.Event()
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=f"demo-printer-{os.getpid()}",
                                      auto_offset_reset="earliest")
        subscribe(self.consumer, [KafkaSection.anomalies_topic, ProcessorKafkaSection.alerts_topic])

    def run(self) -> None:
        seen: set[str] = set()
        while not self.stop.is_set():
            for tp, records in self.consumer.poll(timeout_ms=300).items():
                for r in records:
                    try:
                        if tp.topic == KafkaSection.anomalies_topic:
                            e = decode_event(r.value)
                            if e.event_id in seen:
                                continue
                            seen.add(e.event_id)
                            self.result.events.append(e)
                            fault = getattr(e, "fault", None)
                            if fault is not None:
                                self.progress.line(f"sensor   {e.device_id}  {fault.check} on {', '.join(fault.channels)}")
                                continue
                            top = max(e.channel_scores, key=lambda c: e.channel_scores[c])
                            self.progress.line(f"anomaly  {e.device_id}  score {e.score:8.2f} > {e.threshold:.2f}  mostly {top}")
                        else:
                            a = decode_alert(r.value)
                            self.result.alerts.append(f"{a.kind} {a.action}")
                            who = a.site if a.kind == "fleet_incident" else ",".join(a.device_ids) or a.site
                            self.progress.line(f"ALERT    {a.kind} incident {a.action}: {who} ({a.event_count} events, "
                                               f"max score {a.max_score:.1f})")
                    except ContractError as exc:
                        self.progress.line(f"(undecodable record on {tp.topic}: {exc})")
        self.consumer.close()


def _merge(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def run_demo(out: Path, *, devices: int = 20, groups: int = 4, rate_hz: float = 20.0, duration_s: float = 60.0,
             seed: int = 1) -> DemoResult:
    """Run everything, print as it goes, return the figures; stops every process it started. ``groups`` 0: the
    plain fleet of independent pumps (no peers, sensor faults or silence). Raises :class:`ValueError` saying why
    before anything starts when ``devices`` cannot hold ``groups`` and their roles."""
    plan = fleetsim.FleetPlan(devices=devices, groups=groups)
    if groups and plan.problems():
        raise ValueError("; ".join(plan.problems()))
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm", "edgewatch.db"):
        (out / stale).unlink(missing_ok=True)
    result = DemoResult()
    manifest = load_manifest(default_model_dir())
    window_s = manifest.window_length * manifest.sample_period_s
    print(f"demo: starting Mosquitto and Kafka (logs in {out / 'stack'})", flush=True)
    stack = LocalStack(out / "stack")
    stack.start()
    processor: subprocess.Popen[bytes] | None = None
    agent: Agent | None = None
    printer: KafkaPrinter | None = None
    try:
        create_topics(stack.kafka_bootstrap, TOPICS, partitions=2)  # replicated per the cluster's size
        agent_port, processor_port = free_port(), free_port()
        agent_toml, cloud_toml = write_configs(out, stack, agent_port, processor_port, groups=groups > 0)
        processor = subprocess.Popen([sys.executable, "-m", "cloud.cli", "process", "--config", str(cloud_toml)],
                                     stdout=(out / "processor.log").open("wb"), stderr=subprocess.STDOUT)
        agent = Agent(load_config(agent_toml))
        agent.start()
        progress_line = ProgressLine()  # redrawn on a terminal; plain lines every 10 s in a log
        printer = KafkaPrinter(stack.kafka_bootstrap, result, progress_line)
        printer.start()
        steps = int(rate_hz * duration_s)
        grouped = fleetsim.grouped_fleet(plan, steps, seed=seed, sample_period_s=manifest.sample_period_s) if groups else None
        fleet = grouped.streams if grouped else simulator.synthetic_fleet(devices, steps, seed=seed,
                                                                          sample_period_s=manifest.sample_period_s)
        result.faults = sum(len(d.faults) for d in fleet)
        print(f"demo: model {manifest.name} {manifest.version} ({manifest.family}, window {manifest.window_length}, "
              f"threshold {manifest.threshold:.2f}); {devices} devices x {steps} readings at {rate_hz:g} steps/s, "
              f"{result.faults} faults injected", flush=True)
        if grouped:
            roles = ", ".join(f"{i.what} on {i.device_id}" for i in grouped.injected if i.kind != "incident")
            print(f"demo: {groups} sites ({', '.join(grouped.groups)}); {roles}", flush=True)
        print(f"demo: metrics on http://127.0.0.1:{agent_port}/metrics (agent), http://127.0.0.1:{processor_port}/metrics "
              "(processor)", flush=True)
        publisher = simulator.Publisher("127.0.0.1", stack.mqtt_port, client_id="edgewatch-demo-sim")

        def progress(stats: simulator.PublishStats, step: int, total: int) -> None:
            windows = agent.registry.get_sample_value("edgewatch_agent_windows_scored_total") if agent else 0
            progress_line.update(f"demo: {100 * step / total:5.1f}%  sent {stats.readings_sent} readings  scored {windows or 0:.0f} "
                                 f"windows  anomalies {len(result.events)}  alerts {len(result.alerts)}", force=step == total)

        stats = simulator.run(fleet, publisher, rate_hz=rate_hz, progress=progress)
        progress_line.close()
        publisher.close()
        result.readings_sent = stats.readings_sent
        _wait_for_quiet(agent, result)
        result.windows_scored = int(agent.registry.get_sample_value("edgewatch_agent_windows_scored_total") or 0)
        truth = simulator.truth_document(fleet, stats, manifest.sample_period_s, grouped.truth() if grouped else None)
        (out / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
        result.found, result.missed, result.false_alarms = score_detections(result.events, truth, window_s)
        if grouped:
            incidents = settled_incidents(out / "edgewatch.db")
            result.kinds = score_by_kind(grouped.injected, incidents, result.events, 2 * window_s, rate_hz * manifest.sample_period_s)
        result.plot = plot_device(out / "demo-device.png", fleet, result.events)
        _summary(result, out, agent_port, processor_port, duration_s, rate_hz, manifest.sample_period_s, devices)
        return result
    finally:
        if printer is not None:
            printer.stop.set()
            printer.join(10)
        if agent is not None:
            agent.stop()
        if processor is not None:
            processor.terminate()
            processor.wait(30)
        stack.stop()


def _wait_for_quiet(agent: Agent, result: DemoResult, timeout_s: float = 30.0) -> None:
    """Wait until the agent's queue and outbox are empty and no new event arrived for 2 s."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        busy = len(agent.queue) > 0 or (agent.outbox is not None and agent.outbox.rows > 0)
        if len(result.events) != last or busy:
            last, since = len(result.events), time.monotonic()
        elif time.monotonic() - since > 2.0:
            return
        time.sleep(0.2)


def _summary(r: DemoResult, out: Path, agent_port: int, processor_port: int, duration_s: float, rate_hz: float,
             period_s: float, devices: int) -> None:
    hours = duration_s * rate_hz * period_s * devices / 3600
    print("\n\n=== edgewatch demo summary ===")
    print(f"readings published     {r.readings_sent}")
    print(f"windows scored         {r.windows_scored}")
    print(f"anomaly events         {len(r.events)} (unique event_id)")
    print(f"faults injected        {r.faults}: found {r.found}, missed {r.missed}")
    print(f"false alarms           {r.false_alarms} events over {hours:.1f} device-hours of machine time")
    print(f"processor alerts       {len(r.alerts)} ({', '.join(sorted(set(r.alerts))) or 'none'})")
    for line in kind_lines(r.kinds):
        print(line)
    print(f"metrics were served at http://127.0.0.1:{agent_port}/metrics and http://127.0.0.1:{processor_port}/metrics")
    print(f"plot of one device     {r.plot}")
    print(f"everything else        {out} (truth.json, agent.toml, cloud.toml, processor.log, stack/)")
