"""Retraining: archive (the processor's writer) + labelled incidents (the processor's store) -> candidate
-> gates through onnxruntime -> registry / signature / MQTT; and the drift trigger on a real Kafka."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from cloud.cli import main
from cloud.cli.retrain import parse_time
from cloud.keys import generate_keypair
from cloud.processor.archive import window_row, write_flush
from cloud.processor.backends import open_store
from cloud.processor.config import StoreSection
from cloud.processor.store import IncidentRow
from cloud.registry import Registry
from cloud.retrain.config import RetrainConfig, RetrainSection, TriggerSection, load_retrain_config
from cloud.retrain.dataset import ArchivedWindow, LabelledIncident, build_dataset
from cloud.retrain.job import RetrainInputs, Watch, retrain
from cloud.retrain.trigger import DriftTrigger
from edge.contract import Alert, Channel, ConfigError, encode_alert, make_incident_id
from edge.contract.samples import TelemetryWindow, telemetry_from_window
from edge.detector import OnnxDetector, load_manifest
from edge.signing import load_trusted_keys, verify_manifest
from edge.synth import CHANNEL_NAMES, CHANNELS, Fault, simulate
from models.config import TrainConfig
from models.data import make_windows
from models.export import write_artifact
from models.fit import fit, save_checkpoint

T0 = 1_764_230_400.0  # 2025-11-27T08:00:00Z
L, STRIDE, PAD = 16, 8, 60.0
TP_SPAN = (T0 + 100.0, T0 + 150.0)  # d3's labelled true-positive incident: opened_at, last_event_at
FP_SPAN = (T0 + 400.0, T0 + 430.0)  # d4's labelled false-positive incident
TRAIN = TrainConfig(family="dense_ae", window_length=L, stride=STRIDE, train_stride=4, hidden=32, latent=4, epochs=6, seed=3)


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """pump 1.0.0: a small dense autoencoder on fault-free synthetic pumps, with its checkpoint as weights.pt."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("production") / "pump-1.0.0"
    fitted = fit([simulate(800, seed=s)[0] for s in range(1, 7)], TRAIN, channels=[Channel(n, u) for n, u in CHANNELS])
    write_artifact(fitted, out, name="pump", version="1.0.0")
    save_checkpoint(fitted, out / "weights.pt")
    yield out
    torch.set_num_threads(threads)


def _registry(root: Path, production: Path, *, weights: bool = True) -> Registry:
    source = root / "source"
    shutil.copytree(production, source, ignore=None if weights else shutil.ignore_patterns("weights.pt"))
    reg = Registry(root / "registry")
    reg.register(source)
    reg.promote("pump", "1.0.0")
    return reg


def _telemetry(det: OnnxDetector, device: str, values: np.ndarray, t0: float, *, flag: bool = True) -> list[TelemetryWindow]:
    """Consecutive windows of ``values`` from ``t0`` (1 s period) as the agent sends them, scored by the live model."""
    windows = make_windows(values, L, STRIDE)
    scores = det.score(windows)[0]
    ts = t0 + np.arange(len(values), dtype=np.float64)
    thr = det.manifest.threshold
    return [telemetry_from_window(device_id=device, agent_id="agent-1", reason="sampled", channels=CHANNEL_NAMES,
                                  ts=ts[i * STRIDE: i * STRIDE + L], values=w.tolist(), score=float(s), threshold=thr,
                                  anomalous=flag and bool(s > thr), model_sha256=det.manifest.sha256)
            for i, (w, s) in enumerate(zip(windows, scores, strict=True))]


def _archive(root: Path, windows: list[TelemetryWindow]) -> Path:
    write_flush(root, "edgewatch.telemetry", 0, [window_row(w, 0, i) for i, w in enumerate(windows)])
    return root


def _store(path: Path) -> Path:
    """An incident store with d3's incident labelled true-positive, d4's false-positive and an unlabelled one."""
    store = open_store(StoreSection(backend="sqlite", sqlite_path=str(path)))
    rows = [IncidentRow(make_incident_id("incident", d, a), "incident", "", d, (d,), a, b + 300, b, 5, 9.0, "pump", "1.0.0")
            for d, (a, b) in (("d3", TP_SPAN), ("d4", FP_SPAN), ("d1", (T0 + 50.0, T0 + 60.0)))]
    store.upsert_incidents(rows, time.time())
    store.label_incident(rows[0].incident_id, "true_positive", time.time())
    store.label_incident(rows[1].incident_id, "false_positive", time.time())
    store.close()
    return path


def _in_span(w: TelemetryWindow, span: tuple[float, float]) -> bool:
    return w.ts[0] <= span[1] + PAD and w.ts[-1] >= span[0] - PAD


def _fault_run() -> np.ndarray:
    return simulate(600, seed=13, faults=[Fault("spike", "pressure", 100, 50, 1.0)])[0]


def test_retrain_registers_signed_candidate_and_publishes(production: Path, tmp_path: Path, mqtt_port: int, unique: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    reg = _registry(tmp_path, production)
    det = OnnxDetector.load(reg.production_dir("pump"))
    windows = (_telemetry(det, "d1", simulate(1200, seed=11)[0], T0) + _telemetry(det, "d2", simulate(1200, seed=12)[0], T0)
               + _telemetry(det, "d3", _fault_run(), T0) + _telemetry(det, "d4", simulate(600, seed=14)[0], T0))
    archive = _archive(tmp_path / "archive", windows)
    key, _ = generate_keypair(tmp_path / "keys")
    (tmp_path / "retrain.toml").write_text("[retrain]\nmax_far_increase = 0.05\n[train]\nepochs = 3\n")
    # since 08:05 = T0 + 300: d3's incident is older; its windows still come in as evaluation evidence
    code = main(["retrain", "--model", "pump", "--since", "2025-11-27T08:05:00Z", "--archive", str(archive),
                 "--registry", str(reg.root), "--store", str(_store(tmp_path / "store.db")),
                 "--config", str(tmp_path / "retrain.toml"), "--key", str(key), "--publish", "--group", f"g{unique}",
                 "--mqtt-port", str(mqtt_port), "--progress", "false"])
    out = capsys.readouterr()
    assert code == 0, out
    assert "registered pump 1.1.0 as candidate, signed, published" in out.out
    assert reg.stages("pump").candidates == ["1.1.0"] and reg.stages("pump").production == "1.0.0"
    folder = reg.version_dir("pump", "1.1.0")
    expected = {"model.onnx", "manifest.json", "weights.pt", "model_card.json", "report.json", "report.png"}
    assert expected <= {p.name for p in folder.iterdir()}
    assert (folder / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    verify_manifest(load_manifest(folder), load_trusted_keys(tmp_path / "keys"))
    assert OnnxDetector.load(folder, trusted_keys=load_trusted_keys(tmp_path / "keys")).manifest.version == "1.1.0"
    report = json.loads((folder / "report.json").read_text())
    counts = report["data"]["counts"]
    old_tp = [w for w in windows if w.ts[-1] < T0 + 300 and w.device_id == "d3" and _in_span(w, TP_SPAN)]
    assert counts["archived"] == sum(w.ts[-1] >= T0 + 300 for w in windows) + len(old_tp) and len(old_tp) > 0
    assert counts["true_positive"] == sum(w.device_id == "d3" and _in_span(w, TP_SPAN) for w in windows) > 0
    assert counts["false_positive"] == sum(w.device_id == "d4" and _in_span(w, FP_SPAN) for w in windows) > 0
    assert report["decision"] == "registered" and report["lineage"]["fine_tuned"] is True
    assert report["lineage"]["parent_version"] == "1.0.0"
    ev = report["evaluation"]
    assert ev["candidate"]["tp_incidents"] == 1 and ev["production"]["tp_recall"] == 1.0 and ev["candidate"]["tp_recall"] == 1.0
    assert all(g["passed"] for g in ev["gates"]) and {g["name"] for g in ev["gates"] if g["applied"]} == {
        "finite_scores", "holdout_far", "tp_recall", "fp_window_rate"}
    card = json.loads((folder / "model_card.json").read_text())
    assert card["lineage"]["parent_sha256"] == load_manifest(reg.version_dir("pump", "1.0.0")).sha256
    expected_alerts = load_manifest(folder).expected_alerts  # the backtest's prediction, under the signature
    assert card["backtest"]["decision"] == "passed" and expected_alerts is not None and expected_alerts.devices == 4
    _assert_announced(mqtt_port, f"g{unique}", tmp_path, "1.1.0")


def _assert_announced(port: int, group: str, tmp: Path, version: str) -> None:
    """A device of the group downloads and verifies the published candidate (retained announce and chunks)."""
    from edge.updates import ModelDownloader

    ready = threading.Event()
    got: list[Path] = []
    refused: list[str] = []

    def on_ready(path: Path, announce: object) -> None:
        got.append(path)
        ready.set()

    def on_refused(name: str, v: str, reason: str) -> None:
        refused.append(reason)
        ready.set()

    d = ModelDownloader(host="127.0.0.1", port=port, group=group, state_dir=tmp / "device", client_id=f"dl-{group}",
                        trusted_keys=load_trusted_keys(tmp / "keys"), on_ready=on_ready, on_refused=on_refused)
    d.start()
    try:
        assert ready.wait(30), "no announce arrived"
    finally:
        d.stop()
    assert not refused and load_manifest(got[0]).version == version


@pytest.mark.parametrize("kind", ["noise", "constant"])
def test_garbage_data_gives_a_worse_candidate_that_is_not_registered(production: Path, tmp_path: Path, kind: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    reg = _registry(tmp_path, production)
    det = OnnxDetector.load(reg.production_dir("pump"))
    rng = np.random.default_rng(5)

    def garbage(seed: int) -> np.ndarray:
        normal = simulate(1200, seed=seed)[0]
        return normal + rng.normal(0, 50, normal.shape) if kind == "noise" else np.full_like(normal, 3.0)

    # d3 is all true-positive incident (a real fault), d4 all false-positive (normal behaviour an operator confirmed):
    # never trained on, the gates' evidence
    faults = simulate(200, seed=13, faults=[Fault("spike", "pressure", 60, 80, 1.0)])[0]
    windows = (_telemetry(det, "d1", garbage(11), T0) + _telemetry(det, "d2", garbage(12), T0)
               + _telemetry(det, "d3", faults, T0 + 40.0) + _telemetry(det, "d4", simulate(100, seed=14)[0], T0 + 380.0))
    archive = _archive(tmp_path / "archive", windows)
    store = _store(tmp_path / "store.db")
    args = ["retrain", "--model", "pump", "--archive", str(archive), "--registry", str(reg.root), "--store", str(store),
            "--epochs", "3", "--progress", "false"]
    # the live model flagged the garbage: left out of training, nothing left to train on
    assert main(args) == 4, capsys.readouterr()
    assert "not enough data" in capsys.readouterr().out
    # an operator includes flagged windows: the candidate trains on garbage and fails a gate
    (tmp_path / "retrain.toml").write_text("[retrain]\nexclude_flagged = false\n")
    assert main([*args, "--config", str(tmp_path / "retrain.toml")]) == 3
    out = capsys.readouterr().out
    assert "not registered" in out and ("fp_window_rate" in out if kind == "noise" else "with a constant channel" in out)
    assert reg.versions("pump") == ["1.0.0"] and reg.stages("pump").candidates == []
    reports = sorted((reg.root / "pump" / "runs").glob("*/report.json"))
    assert [json.loads(p.read_text())["decision"] for p in reports] == ["no_data", "rejected"]
    if kind == "noise":
        rejected = json.loads(reports[-1].read_text())["evaluation"]
        assert rejected["production"]["fp_window_rate"] < 0.5 < rejected["candidate"]["fp_window_rate"]
        assert [g["name"] for g in rejected["gates"] if not g["passed"]] == ["fp_window_rate"]
        assert (reports[-1].parent / "report.png").exists()


def test_without_torch_weights_trains_from_scratch(production: Path, tmp_path: Path) -> None:
    reg = _registry(tmp_path, production, weights=False)
    det = OnnxDetector.load(reg.production_dir("pump"))
    windows = [ArchivedWindow(w.device_id, w.channels, np.array(w.ts), np.array(w.values), w.score, w.threshold, w.anomalous)
               for seed in (21, 22) for w in _telemetry(det, f"d{seed}", simulate(800, seed=seed)[0], T0)]
    lines: list[str] = []
    config = RetrainConfig(retrain=RetrainSection(max_far_increase=0.05), train={"epochs": 3})
    result = retrain("pump", registry=reg.root, inputs=RetrainInputs(windows=windows, incidents=[]), config=config,
                     watch=Watch(progress=lines.append))
    assert result.status == "registered" and result.exit_code == 0 and not result.fine_tuned and not result.signed
    assert any("has no torch weights" in line and "training from scratch" in line for line in lines)
    assert [line.split()[3] for line in lines] == ["production:", "dataset:", "train:", "export:", "evaluate:", "gates:",
                                                   "report:", "register:"]
    m = load_manifest(result.registry_dir)  # type: ignore[arg-type]
    assert (m.family, m.window_length, m.channel_names) == ("dense_ae", L, CHANNEL_NAMES)
    assert m.metrics["retrain_holdout_windows"] == result.counts["holdout_windows"] > 0


def test_dataset_rules_keep_incidents_and_holdout_out_of_training() -> None:
    def win(device: str, start: float, value: float, anomalous: bool = False) -> ArchivedWindow:
        ts = start + np.arange(8.0)
        return ArchivedWindow(device, ("b", "a"), ts, np.column_stack([ts * 0 + value, ts * 0 - value]), 0.0, 1.0, anomalous)

    windows = [win("x", 100.0 + 4 * i, 1.0) for i in range(40)]  # overlapping windows, stride 4
    windows[10] = win("x", 140.0, 7.0, anomalous=True)  # flagged by the live model, unlabelled
    windows += [win("y", 100.0 + 8 * i, 1000.0 if 5 <= i < 9 else 2.0) for i in range(20)]  # y: a labelled fault at 140..172
    windows += [ArchivedWindow("z", ("a",), np.arange(8.0), np.ones((8, 1)), 0.0, 1.0, False)]  # lacks channel b
    incidents = [LabelledIncident("i" * 32, "true_positive", ("y",), 150.0, 160.0)]
    d = build_dataset(windows, incidents, channels=("a", "b"), window_length=8, train_stride=2, eval_stride=4,
                      sample_period_s=1.0, holdout_share=0.25, incident_pad_s=10.0, exclude_flagged=True)
    c = d.counts
    assert (c["archived"], c["skipped_channels"], c["flagged"]) == (61, 1, 1)
    assert c["true_positive"] == 4  # y windows starting at 140, 148, 156, 164 overlap [150 - 10, 160 + 10]
    assert c["holdout"] == 10 + 4 and c["train"] == 29 + 12
    rows = np.concatenate(d.train_segments)
    assert not np.any(np.abs(rows) >= 7.0)  # neither the fault, nor the flagged window's rows
    assert set(np.unique(rows[:, 0])) == {-1.0, -2.0}  # model channel order: a first
    assert d.incident_windows["i" * 32].shape == (4, 8, 2) and np.abs(d.incident_windows["i" * 32]).max() == 1000.0
    assert d.holdout.shape == (14, 8, 2)
    assert all(len(s) >= 8 for s in d.train_segments)


def test_config_and_times(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text("[retrain]\nholdout_share = 0.3\n[trigger]\ncooldown_s = 5\n[train]\nepochs = 2\n")
    c = load_retrain_config(path, env={"EDGEWATCH_TRIGGER__LOOKBACK_S": "60", "EDGEWATCH_TRAIN__LR": "0.01"})
    assert (c.retrain.holdout_share, c.trigger.cooldown_s, c.trigger.lookback_s) == (0.3, 5.0, 60.0)
    assert c.train == {"epochs": 2, "lr": 0.01}  # typed, the environment's too
    path.write_text("[retrain]\nholdout_shar = 0.3\n")
    with pytest.raises(ConfigError, match=r"r.toml: unknown key 'retrain.holdout_shar'"):
        load_retrain_config(path, env={})
    path.write_text("[train]\nepoch = 2\n")
    with pytest.raises(ConfigError, match=r"r.toml: unknown key 'train.epoch'"):
        load_retrain_config(path, env={})
    path.write_text("[trigger]\nbootstrap = 'not a host:port:xx'\n")
    with pytest.raises(ConfigError, match=r"r.toml: 'trigger.bootstrap' = 'not a host:port:xx'"):
        load_retrain_config(path, env={})
    with pytest.raises(ConfigError, match=r"'trigger.bootstrap' = '127.0.0.1'"):  # --kafka-bootstrap replaces the loaded one
        DriftTrigger(TriggerSection(bootstrap="127.0.0.1"), lambda model, alert, stop: 0)
    assert parse_time("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_time("2025-11-27T08:00:00Z", now=0) == T0 == parse_time("2025-11-27T08:00:00", now=0)
    assert parse_time("1764230400", now=0) == T0
    with pytest.raises(ConfigError, match="yesterday"):
        parse_time("yesterday", now=0)


def test_cli_refuses_publish_without_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["retrain", "--model", "pump", "--registry", str(tmp_path), "--archive", str(tmp_path), "--publish"]) == 2
    assert "--publish needs --key" in capsys.readouterr().err


def _drift(model: str, device: str, opened_at: float = T0) -> Alert:
    return Alert(kind="drift", action="open", incident_id=make_incident_id("drift", f"{device}/1.0.0", opened_at), site="",
                 device_ids=(device,), opened_at=opened_at, model_name=model, model_version="1.0.0", statistic="anomaly_rate",
                 observed=30.0, expected=3.6)


def _produce(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for p in payloads:
        producer.send(topic, p)
    producer.flush(30)
    producer.close()


def _wait(predicate: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_drift_trigger_cooldown_per_model_on_kafka(kafka_bootstrap: str, kafka_topic: str, group_id: str) -> None:
    now = [1000.0]
    release = threading.Event()
    calls: list[tuple[str, str]] = []

    def runner(model: str, alert: Alert, should_stop: object) -> int:
        calls.append((model, alert.device_ids[0]))
        if model == "pump":
            release.wait(30)
        return 0

    section = TriggerSection(bootstrap=kafka_bootstrap, alerts_topic=kafka_topic, group_id=group_id,
                             auto_offset_reset="earliest", cooldown_s=600.0, max_jobs=2, poll_timeout_s=0.2)
    registry = CollectorRegistry()
    trigger = DriftTrigger(section, runner, registry=registry, clock=lambda: now[0])
    thread = threading.Thread(target=trigger.run, daemon=True)
    thread.start()
    incident = Alert(kind="incident", action="open", incident_id="a" * 32, site="", device_ids=("d1",), opened_at=T0,
                     model_name="pump", model_version="1.0.0")
    _produce(kafka_bootstrap, kafka_topic, [encode_alert(_drift("pump", "d1")), encode_alert(_drift("pump", "d2")),
                                             encode_alert(_drift("fan", "f1")), encode_alert(incident), b"not json"])
    _wait(lambda: len(trigger.decisions) == 5)
    assert [d for _, d in trigger.decisions] == ["started", "skipped_running", "started", "ignored", "invalid"]
    release.set()
    _wait(lambda: not trigger.models["pump"].busy and not trigger.models["fan"].busy)
    now[0] += 599.0  # still inside pump's cool-down
    _produce(kafka_bootstrap, kafka_topic, [encode_alert(_drift("pump", "d3"))])
    _wait(lambda: len(trigger.decisions) == 6)
    now[0] += 2.0  # cool-down over
    _produce(kafka_bootstrap, kafka_topic, [encode_alert(_drift("pump", "d4"))])
    _wait(lambda: len(trigger.decisions) == 7)
    trigger.stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert [d for _, d in trigger.decisions[5:]] == ["skipped_cooldown", "started"]
    assert sorted(calls) == [("fan", "f1"), ("pump", "d1"), ("pump", "d4")]
    value = registry.get_sample_value
    assert value("edgewatch_retrain_alerts_total", {"decision": "started"}) == 3
    assert value("edgewatch_retrain_alerts_total", {"decision": "skipped_running"}) == 1
    assert value("edgewatch_retrain_alerts_total", {"decision": "skipped_cooldown"}) == 1
    assert value("edgewatch_retrain_jobs_total", {"outcome": "registered"}) == 3
    assert value("edgewatch_retrain_jobs_running") == 0


def test_on_drift_cli_retrains_and_stops_on_sigterm(production: Path, tmp_path: Path, kafka_bootstrap: str, kafka_topic: str,
                                                    group_id: str) -> None:
    reg = _registry(tmp_path, production)
    det = OnnxDetector.load(reg.production_dir("pump"))
    windows = [w for seed in (31, 32) for w in _telemetry(det, f"d{seed}", simulate(800, seed=seed)[0], T0)]
    archive = _archive(tmp_path / "archive", windows)
    (tmp_path / "retrain.toml").write_text('[retrain]\nmax_far_increase = 0.05\n[train]\nepochs = 2\n'
                                          '[trigger]\nauto_offset_reset = "earliest"\n')
    env = {**os.environ, "EDGEWATCH_RETRAIN_REGISTRY": str(reg.root), "EDGEWATCH_RETRAIN_ARCHIVE": str(archive)}
    proc = subprocess.Popen([sys.executable, "-m", "cloud.cli", "retrain", "--on-drift", "--config", str(tmp_path / "retrain.toml"),
                             "--kafka-bootstrap", kafka_bootstrap, "--alerts-topic", kafka_topic, "--group-id", group_id,
                             "--lookback-s", "3600", "--progress", "false"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # two drift alerts of one model: one job; the archive ends at T0 + 800
        _produce(kafka_bootstrap, kafka_topic, [encode_alert(_drift("pump", "d31", T0 + 800)),
                                                 encode_alert(_drift("pump", "d32", T0 + 800))])
        _wait(lambda: reg.stages("pump").candidates or proc.poll() is not None, timeout_s=180)
        assert reg.stages("pump").candidates == ["1.1.0"]
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "decision=started" in output and output.count("decision=started") == 1, output
    assert "retrain_trigger_stopped" in output
    card = json.loads((reg.version_dir("pump", "1.1.0") / "model_card.json").read_text())
    assert card["lineage"]["trigger"].startswith("drift alert ")
    report = json.loads((reg.version_dir("pump", "1.1.0") / "report.json").read_text())
    assert report["config"]["retrain"]["exclude_flagged"] is False  # the trigger's setting, not [retrain]'s default
    assert report["data"]["since"] == T0 + 800 - 3600
