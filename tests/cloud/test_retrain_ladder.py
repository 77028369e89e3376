"""Retraining with labels (issue 18 item 4): ``--family ladder`` trains from scratch on the archive
plus the earlier labelled incidents, the latest of each label stays the gates' evidence; the
config threshold picks it; contradictory labels or no unlabelled data exit 2 and write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud.cli import main
from cloud.registry import Registry
from cloud.retrain.config import RetrainConfig, RetrainSection
from cloud.retrain.dataset import LabelledIncident, build_dataset, labelled_set
from cloud.retrain.job import RetrainInputs, retrain
from edge.contract import ConfigError
from edge.contract.samples import TelemetryWindow
from edge.detector import OnnxDetector
from edge.synth import CHANNEL_NAMES, Fault, simulate
from tests.cloud.test_retrain import T0, _archive, _registry, _telemetry, production  # noqa: F401  (a fixture)

TP = [(T0 + 100.0, T0 + 130.0), (T0 + 500.0, T0 + 530.0), (T0 + 900.0, T0 + 930.0)]  # on d3: spikes
FP = [(T0 + 200.0, T0 + 230.0), (T0 + 600.0, T0 + 630.0)]  # on d4: normal behaviour


def _incidents(tp: list[tuple[float, float]] = TP, fp: list[tuple[float, float]] = FP) -> list[LabelledIncident]:
    return ([LabelledIncident(f"tp{i}", "true_positive", ("d3",), a, b) for i, (a, b) in enumerate(tp)]
            + [LabelledIncident(f"fp{i}", "false_positive", ("d4",), a, b) for i, (a, b) in enumerate(fp)])


def _windows(reg: Registry, *, normal: bool = True) -> list[TelemetryWindow]:
    det = OnnxDetector.load(reg.production_dir("pump"))
    faults = [Fault("spike", "pressure", int(a - T0), 30, 1.0) for a, _ in TP]
    out = _telemetry(det, "d3", simulate(1100, seed=13, faults=faults)[0], T0) + _telemetry(det, "d4", simulate(800, seed=14)[0], T0)
    if normal:
        out += _telemetry(det, "d1", simulate(1200, seed=11)[0], T0) + _telemetry(det, "d2", simulate(1200, seed=12)[0], T0)
    return out


def test_labelled_set_trains_on_earlier_incidents_and_keeps_the_latest_for_evaluation() -> None:
    rows = simulate(1100, seed=3)[0]
    windows = [w for w in _archived(rows, "d3") + _archived(rows, "d4")]
    d = build_dataset(windows, _incidents(), channels=CHANNEL_NAMES, window_length=16, train_stride=4, eval_stride=8,
                      sample_period_s=1.0, holdout_share=0.2, incident_pad_s=10.0, exclude_flagged=False)
    x, y, kept = labelled_set(d, 0.2)
    assert set(kept.incident_labels) == {"tp2", "fp1"}  # the latest of each label
    n_tp = len(d.incident_windows["tp0"]) + len(d.incident_windows["tp1"])
    assert x.shape == (n_tp + len(d.incident_windows["fp0"]), 16, len(CHANNEL_NAMES)) and y.sum() == n_tp
    assert not d.contradictions


def test_a_window_labelled_both_ways_is_a_contradiction() -> None:
    rows = simulate(400, seed=3)[0]
    both = [LabelledIncident("a", "true_positive", ("d3",), T0 + 100, T0 + 120),
            LabelledIncident("b", "false_positive", ("d3",), T0 + 110, T0 + 150)]
    d = build_dataset(_archived(rows, "d3"), both, channels=CHANNEL_NAMES, window_length=16, train_stride=4, eval_stride=8,
                      sample_period_s=1.0, holdout_share=0.2, incident_pad_s=0.0, exclude_flagged=False)
    assert d.contradictions and {(c[2], c[3]) for c in d.contradictions} == {("a", "b")}


def _archived(rows: np.ndarray, device: str) -> list:  # type: ignore[type-arg]
    from cloud.retrain.dataset import ArchivedWindow

    return [ArchivedWindow(device, CHANNEL_NAMES, T0 + np.arange(i, i + 16, dtype=np.float64), rows[i:i + 16], 0.0, 1.0, False)
            for i in range(0, len(rows) - 15, 8)]


def test_family_ladder_learns_from_labels_and_goes_through_the_gates(production: Path, tmp_path: Path) -> None:  # noqa: F811
    reg = _registry(tmp_path, production)
    cfg = RetrainConfig(retrain=RetrainSection(max_far_increase=0.05), train={"family": "ladder", "epochs": 6, "lr": 1e-2})
    inputs = RetrainInputs(archive=_archive(tmp_path / "archive", _windows(reg)), incidents=_incidents())
    result = retrain("pump", registry=reg.root, inputs=inputs, config=cfg)
    report = json.loads(Path(str(result.report_json)).read_text())
    assert report["training"]["config"]["family"] == "ladder" and report["lineage"]["fine_tuned"] is False
    counts = report["data"]["counts"]
    assert counts["labelled_anomalies"] > 0 and counts["labelled_normals"] > 0
    assert report["evaluation"]["candidate"]["tp_incidents"] == 1  # tp2 only: tp0, tp1 were trained on
    assert result.status in ("registered", "rejected") and {g.name for g in result.gates} >= {"holdout_far", "tp_recall"}


def test_threshold_of_labelled_incidents_picks_ladder(production: Path, tmp_path: Path) -> None:  # noqa: F811
    reg = _registry(tmp_path, production)
    inputs = RetrainInputs(archive=_archive(tmp_path / "archive", _windows(reg)), incidents=_incidents())
    cfg = RetrainConfig(retrain=RetrainSection(ladder_min_labelled=5, max_far_increase=1.0), train={"epochs": 1})
    report = json.loads(Path(str(retrain("pump", registry=reg.root, inputs=inputs, config=cfg).report_json)).read_text())
    assert report["training"]["config"]["family"] == "ladder"
    cfg = RetrainConfig(retrain=RetrainSection(ladder_min_labelled=6, max_far_increase=1.0), train={"epochs": 1})
    report = json.loads(Path(str(retrain("pump", registry=reg.root, inputs=inputs, config=cfg).report_json)).read_text())
    assert report["training"]["config"]["family"] == "dense_ae" and report["lineage"]["fine_tuned"] is True


@pytest.mark.parametrize(("case", "message"), [("contradiction", "contradictory labels"), ("no_unlabelled", "no unlabelled data")])
def test_bad_labels_exit_2_and_write_nothing(production: Path, tmp_path: Path, case: str, message: str,  # noqa: F811
                                              capsys: pytest.CaptureFixture[str]) -> None:
    reg = _registry(tmp_path, production)
    if case == "contradiction":
        windows, incidents = _windows(reg), _incidents(fp=[*FP, (TP[0][0] + 5, TP[0][1])])
        incidents[-1] = LabelledIncident("fp9", "false_positive", ("d3",), TP[0][0] + 5, TP[0][1])
    else:  # every archived window belongs to a labelled incident
        windows, incidents = _windows(reg, normal=False), _incidents(tp=[(T0, T0 + 1100)], fp=[(T0, T0 + 800)])
    store = tmp_path / "store.db"
    _labelled_store(store, incidents)
    archive = _archive(tmp_path / "archive", windows)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(["retrain", "--model", "pump", "--archive", str(archive),
                 "--registry", str(reg.root), "--store", str(store), "--family", "ladder", "--progress", "false"])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    with pytest.raises(ConfigError, match=message):
        retrain("pump", registry=reg.root, inputs=RetrainInputs(archive=archive, incidents=incidents),
                config=RetrainConfig(train={"family": "ladder"}))


def _labelled_store(path: Path, incidents: list[LabelledIncident]) -> None:
    import time

    from cloud.processor.backends import open_store
    from cloud.processor.config import StoreSection
    from cloud.processor.store import IncidentRow
    from edge.contract import make_incident_id

    store = open_store(StoreSection(backend="sqlite", sqlite_path=str(path)))
    rows = [IncidentRow(make_incident_id("incident", i.device_ids[0], i.start), "incident", "", i.device_ids[0], i.device_ids,
                        i.start, i.end + 300, i.end, 5, 9.0, "pump", "1.0.0") for i in incidents]
    store.upsert_incidents(rows, time.time())
    for row, inc in zip(rows, incidents, strict=True):
        store.label_incident(row.incident_id, inc.label, time.time())
    store.close()
