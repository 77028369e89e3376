"""The closed loop, end to end, on the real Mosquitto and Kafka: the simulator publishes a fleet
whose normal behaviour changes -> the live model flags it -> the processor raises a drift
alert -> the drift trigger retrains on the archived telemetry -> a signed candidate is
registered and published -> the agent downloads it, scores it in shadow and promotes it.

Everything runs in this process except the brokers: the agent (``edge.agent.Agent``), the
processor and its archive (``cloud.processor``), the trigger with the real retraining job
(``cloud.retrain``), the simulator (``edge.simulator``). Event time runs ``RATE_HZ`` times
faster than the wall clock, so minutes of machine time take seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from kafka import KafkaConsumer
from prometheus_client import CollectorRegistry

from cloud.keys import generate_keypair, load_private_key, sign_model_dir
from cloud.processor.archive import run_archive
from cloud.processor.config import ProcessorConfig, StoreSection
from cloud.processor.config import load_config as load_processor_config
from cloud.registry import Registry
from cloud.retrain.config import RetrainConfig, TriggerSection
from cloud.retrain.job import PublishTarget, Release, RetrainInputs, Watch
from cloud.retrain.sources import read_archive
from cloud.retrain.trigger import DriftTrigger, drift_runner
from edge.agent import Agent
from edge.config import load_config
from edge.contract import Alert, Channel, decode_alert
from edge.contract.update import ModelStatus, decode_status
from edge.detector import load_manifest
from edge.signing import load_trusted_keys, verify_manifest
from edge.simulator import DeviceStream, Publisher
from edge.simulator import run as run_simulator
from edge.synth import CHANNEL_NAMES, CHANNELS, simulate
from models.config import TrainConfig
from models.export import write_artifact
from models.fit import fit, save_checkpoint
from tests.cloud.processor_streams import in_thread
from tests.edge.agent_util import TopicReader, toml_config
from tests.kafka_util import create_topic
from tests.tools import wait_for

pytestmark = pytest.mark.brokers

T0 = 1_764_230_400.0  # 2025-11-27T08:00:00Z, event time of the first reading
RATE_HZ = 25.0  # readings per device per wall-clock second (event time runs 25x faster)
STEPS = 8000  # per device: far more than the loop needs; the fleet stops once the candidate is promoted
DEVICES = 4  # pump-0 keeps its behaviour, pump-1..3 change regime
DRIFT_AT, RAMP = 240, 60  # the regime change starts 240 s into the run and is complete 60 s later
SHIFT = {"pressure": 0.8, "flow": -3.0}  # a throttled discharge: more head, less flow (bar, m3/h)
TRAIN = TrainConfig(family="dense_ae", window_length=16, stride=8, train_stride=4, hidden=32, latent=4, epochs=6, seed=3)


def _production(tmp: Path, key: Path) -> Registry:
    """pump 1.0.0: a small dense autoencoder on fault-free pumps, with torch weights, signed, in production."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fitted = fit([simulate(800, seed=s)[0] for s in range(1, 7)], TRAIN, channels=[Channel(n, u) for n, u in CHANNELS])
    finally:
        torch.set_num_threads(threads)
    source = tmp / "pump-1.0.0"
    write_artifact(fitted, source, name="pump", version="1.0.0")
    save_checkpoint(fitted, source / "weights.pt")
    sign_model_dir(source, load_private_key(key))
    reg = Registry(tmp / "registry")
    reg.register(source)
    reg.promote("pump", "1.0.0")
    return reg


def _fleet() -> list[DeviceStream]:
    """Fault-free synthetic pumps; from ``DRIFT_AT`` the drifting ones ramp into a new operating regime
    and stay there. (``edge.synth`` faults end when their span ends; a regime change does not.)"""
    ramp = np.clip((np.arange(STEPS) - DRIFT_AT) / RAMP, 0.0, 1.0)
    fleet = []
    for d in range(DEVICES):
        values, _ = simulate(STEPS, seed=500 + d)
        if d > 0:
            for channel, shift in SHIFT.items():
                values[:, CHANNEL_NAMES.index(channel)] += shift * ramp
        fleet.append(DeviceStream(f"pump-{d}", T0 + np.arange(STEPS, dtype=np.float64), values, CHANNEL_NAMES))
    return fleet


def _processor_config(tmp: Path, bootstrap: str, topics: dict[str, str], unique: str, manifest_dir: Path) -> ProcessorConfig:
    # Drift: the calibration expects 0.1 % of windows flagged (0.45 an hour at stride 8); a device drifts when
    # more than 100x that (2 or more of the 15 windows of a 2-minute bucket) are flagged for two buckets in a row.
    path = tmp / "cloud.toml"
    path.write_text(f"""
[kafka]
bootstrap = "{bootstrap}"
group_id = "proc-{unique}"
anomalies_topic = "{topics['anomalies']}"
telemetry_topic = "{topics['telemetry']}"
alerts_topic = "{topics['alerts']}"
deadletter_topic = "{topics['deadletter']}"
poll_timeout_s = 0.2
session_timeout_s = 15.0  # generous: agent, processor, archive and simulator share one process on a loaded runner
[store]
sqlite_path = "{tmp / 'processor.db'}"
[incidents]
allowed_lateness_s = 5.0
[drift]
window_s = 120.0
sustain_windows = 2
rate_factor = 100.0
manifest_dir = "{manifest_dir}"
[archive]
enabled = true
dir = "{tmp / 'archive'}"
group_id = "arch-{unique}"
flush_interval_s = 0.5
""")
    return load_processor_config(path, env={})


def _create_topics(bootstrap: str, names: list[str]) -> None:
    """Create the topics and wait until the broker's metadata lists their partitions, so that every consumer
    group below gets its partitions in its first assignment (a group that joins without them has to rebalance)."""
    for name in names:
        create_topic(bootstrap, name)
    probe = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        wait_for(lambda: all(probe.partitions_for_topic(n) for n in names), 30, "topic metadata", every_s=0.2)
    finally:
        probe.close()


def _label_through_cli(tmp: Path, devices: tuple[str, ...]) -> list[str]:
    """Label the device incidents of ``devices`` false-positive with ``edgewatch incidents label``."""
    from cloud.cli import main
    from cloud.processor.backends import open_store

    store = open_store(StoreSection(sqlite_path=str(tmp / "processor.db")))
    try:
        ids = [r.incident_id for r in store.incidents(kind="incident") if r.device_id in devices]
    finally:
        store.close()
    for incident_id in ids:
        assert main(["incidents", "label", incident_id, "--false-positive", "--config", str(tmp / "cloud.toml")]) == 0
    return ids


def _rates(reason: str) -> tuple[float, float]:
    """(candidate, live) alert rates from a shadow trial's verdict."""
    m = re.search(r"alert rate ([0-9.]+) \(live ([0-9.]+)\)", reason)
    assert m, reason
    return float(m[1]), float(m[2])


def _jobs_ended(trigger: DriftTrigger) -> float:
    return sum(trigger.registry.get_sample_value("edgewatch_retrain_jobs_total", {"outcome": o}) or 0.0
               for o in ("registered", "rejected", "no_data", "failed", "cancelled"))


@contextlib.contextmanager
def _thread(target: Callable[[], object], stop: Callable[[], None], name: str) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop()
        thread.join(60)
    assert not thread.is_alive(), f"{name} did not stop"


@pytest.mark.parametrize("family", ["dense_ae", "ladder"])
def test_drift_alert_retrains_and_the_agent_promotes_the_signed_candidate(tmp_path: Path, mqtt_port: int, kafka_bootstrap: str,
                                                                          unique: str, family: str) -> None:
    """``dense_ae``: production's family, fine-tuned. ``ladder``: before the job starts, an operator
    labels pump-1's and pump-2's incidents false-positive through ``edgewatch incidents label``
    (the new regime is normal); the retraining switches family (``[train] family``, what
    ``--family`` sets) and trains from scratch, pump-1's windows as labelled normals, pump-2's the
    false-positive gate's evidence."""
    key, _ = generate_keypair(tmp_path / "keys")
    reg = _production(tmp_path, key)
    production = load_manifest(reg.production_dir("pump"))
    topics = {k: f"{k}.{unique}" for k in ("anomalies", "telemetry", "deadletter", "status", "alerts")}
    _create_topics(kafka_bootstrap, list(topics.values()))
    prefix, group = f"loop{unique}", f"g{unique}"

    # the agent runs the production model, samples every window as telemetry, takes signed updates for its group
    extra = f"""[telemetry]
every_n_windows = 1
[updates]
enabled = true
group = "{group}"
trusted_keys_dir = "{tmp_path / 'keys'}"
state_dir = "{tmp_path / 'device-models'}"
shadow_min_windows = 40
shadow_min_seconds = 2.0
report_interval_s = 0  # no report statuses: the test reads every status event
"""
    cfg = load_config(toml_config(tmp_path, agent_id=f"a{unique}", mqtt_port=mqtt_port, kafka_bootstrap=kafka_bootstrap,
                                  prefix=prefix, topics=topics, extra=extra, model=reg.production_dir("pump")), env={})
    agent = Agent(dataclasses.replace(cfg, kafka=dataclasses.replace(cfg.kafka, status_topic=topics["status"])))
    (tmp_path / "manifests").mkdir()  # the processor's drift expectations come from the live model's manifest
    shutil.copy(reg.version_dir("pump", "1.0.0") / "manifest.json", tmp_path / "manifests" / "pump-1.0.0.json")
    proc_cfg = _processor_config(tmp_path, kafka_bootstrap, topics, unique, tmp_path / "manifests")
    section = TriggerSection(bootstrap=kafka_bootstrap, alerts_topic=topics["alerts"], group_id=f"retrain-{unique}",
                             client_id=f"retrain-{unique}", auto_offset_reset="earliest", cooldown_s=3600.0, lookback_s=3600.0,
                             poll_timeout_s=0.2)
    progress: list[str] = []
    train: dict[str, object] = {"epochs": 3} if family == "dense_ae" else {"epochs": 6, "family": family, "lr": 3e-3}
    inputs = RetrainInputs(archive=Path(proc_cfg.archive.dir), store=StoreSection(sqlite_path=str(tmp_path / "processor.db")))
    runner = drift_runner(section, registry=reg.root, inputs=inputs, release=Release(key=key, publish=PublishTarget(
        "127.0.0.1", mqtt_port, group, prefix)), config=RetrainConfig(train=train), watch=Watch(progress=progress.append))
    labelled: list[str] = []
    if family == "ladder":
        base_runner = runner

        def runner(model: str, alert: Alert, should_stop: Callable[[], bool]) -> object:
            labelled.extend(_label_through_cli(tmp_path, ("pump-1", "pump-2")))
            return base_runner(model, alert, should_stop)

    trigger = DriftTrigger(section, runner, registry=CollectorRegistry())
    sim_stop, archive_stop = threading.Event(), threading.Event()
    status = TopicReader(kafka_bootstrap, topics["status"], f"st-{unique}")
    alerts = TopicReader(kafka_bootstrap, topics["alerts"], f"al-{unique}")
    marks: dict[str, float] = {}

    def statuses() -> list[ModelStatus]:
        return [decode_status(v) for v in status.values]

    def drift_opened() -> list[Alert]:
        return [a for a in map(decode_alert, alerts.values) if a.kind == "drift" and a.action == "open"]

    with contextlib.ExitStack() as stack:
        stack.callback(alerts.close)
        stack.callback(status.close)
        agent.start()
        stack.callback(agent.stop)
        wait_for(lambda: agent.downloader is not None, 10, "the agent's downloader")
        processor, proc_stop, proc_errors = in_thread(proc_cfg)
        stack.callback(lambda: (proc_stop.set(), processor.join(60)))
        stack.enter_context(_thread(lambda: run_archive(proc_cfg, archive_stop, CollectorRegistry()), archive_stop.set, "archive"))
        stack.enter_context(_thread(trigger.run, trigger.stop.set, "trigger"))
        publisher = Publisher("127.0.0.1", mqtt_port, client_id=f"sim-{unique}", prefix=prefix)
        stack.callback(publisher.close)
        started = time.monotonic()
        stack.enter_context(_thread(lambda: run_simulator(_fleet(), publisher, rate_hz=RATE_HZ, batch=5, stop=sim_stop),
                                    sim_stop.set, "simulator"))

        # 1. the processor raises a drift alert for the devices whose regime changed, naming the live model
        alerts.poll_until(lambda v: len(drift_opened()) > 0, 120, "a drift alert")
        marks["drift_alert"] = time.monotonic() - started
        first = drift_opened()[0]
        assert first.device_ids[0] in {"pump-1", "pump-2", "pump-3"}, first
        assert (first.model_name, first.model_version, first.statistic) == ("pump", "1.0.0", "anomaly_rate"), first
        assert first.observed is not None and first.expected is not None and first.observed > 100 * first.expected
        assert first.opened_at > T0 + DRIFT_AT

        # 2. the trigger retrains once on the archived telemetry; a signed candidate is registered and published
        wait_for(lambda: _jobs_ended(trigger) > 0, 150, "the retraining job", every_s=0.5)
        marks["retrained"] = time.monotonic() - started
        assert trigger.registry.get_sample_value("edgewatch_retrain_jobs_total", {"outcome": "registered"}) == 1, progress
        assert [d for _, d in trigger.decisions if d == "started"] == ["started"], trigger.decisions
        assert reg.stages("pump").candidates == ["1.1.0"] and reg.stages("pump").production == "1.0.0"
        folder = reg.version_dir("pump", "1.1.0")
        candidate = load_manifest(folder)
        verify_manifest(candidate, load_trusted_keys(tmp_path / "keys"))
        report = json.loads((folder / "report.json").read_text())
        assert report["lineage"]["trigger"].startswith(f"drift alert {first.alert_id}: anomaly_rate on "), report["lineage"]
        assert report["lineage"]["fine_tuned"] is (family == "dense_ae") and report["lineage"]["parent_sha256"] == production.sha256
        assert candidate.family == family
        assert report["config"]["retrain"]["exclude_flagged"] is False
        ev = report["evaluation"]
        # the holdout is the latest (drifted) telemetry: the live model alarms on most of it, the candidate learnt it
        # (with pump-1 and pump-2 labelled, the holdout is pump-0's and pump-3's: half of it drifted)
        assert ev["production"]["holdout_far"] > (0.5 if family == "dense_ae" else 0.3), ev
        assert ev["candidate"]["holdout_far"] < ev["production"]["holdout_far"] / 3, ev
        gates = ["finite_scores", "holdout_far"] + (["fp_window_rate"] if family == "ladder" else [])
        assert [g["name"] for g in ev["gates"] if g["applied"]] == gates, ev["gates"]
        if family == "ladder":
            assert len(labelled) >= 2 and report["data"]["counts"]["labelled_normals"] > 0, (labelled, report["data"])
        assert any("publish: announced to group " + group in line for line in progress), progress
        # the training data was the processor's archive, drifted windows included
        archived = read_archive(Path(proc_cfg.archive.dir), until=first.opened_at)
        drifted = [w for w in archived if w.device_id != "pump-0" and w.start >= T0 + DRIFT_AT + RAMP]
        assert drifted and np.mean([w.anomalous for w in drifted]) > 0.9, f"{len(drifted)} drifted windows archived"
        p = CHANNEL_NAMES.index("pressure")
        assert np.mean([w.values[:, p].mean() for w in drifted]) > np.mean(
            [w.values[:, p].mean() for w in archived if w.device_id != "pump-0" and w.end < T0 + DRIFT_AT]) + 0.5

        # 3. the agent downloads the candidate, scores it in shadow beside the live model and promotes it
        status.poll_until(lambda v: any(s.action in ("promoted", "rejected", "refused") for s in statuses()), 90,
                          "the shadow trial's verdict")
        marks["promoted"] = time.monotonic() - started
        got = [(s.action, s.model_version) for s in statuses()]
        assert got == [("downloaded", "1.1.0"), ("shadow_started", "1.1.0"), ("promoted", "1.1.0")], statuses()
        promoted = statuses()[-1]
        assert promoted.live_version == "1.1.0"
        cand_rate, live_rate = _rates(promoted.reason)
        # the live model alarms on the new normal (3 of the 4 pumps), the retrained one on a small fraction of it
        assert live_rate > 0.5 and cand_rate < live_rate / 3, promoted.reason
        assert agent.pipeline is not None and agent.pipeline.manifest.version == "1.1.0"
        assert agent.pipeline.manifest.sha256 == candidate.sha256
        assert agent.registry.get_sample_value("edgewatch_agent_model_updates_total", {"action": "promoted"}) == 1
        # pump-0 kept its behaviour: no drift alert for it, and nothing went wrong on the way
        assert "pump-0" not in {d for a in drift_opened() for d in a.device_ids}
        assert agent.worker_errors == 0 and not proc_errors
        sim_stop.set()
    print(f"closed loop, wall seconds from the first reading: {marks}")
