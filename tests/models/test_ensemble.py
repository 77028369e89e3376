"""Ensembles (``train.members``): one artifact of several models of one family, each member the
very model a single fit with its seed gives; the agent decides each member with its own adaptive
threshold and fires on their majority, and the benchmarks' decision path is the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cloud.cli import main
from cloud.evaluate.agent_path import agent_config, agent_decisions, decide_run
from cloud.evaluate.protocol import fit_and_score
from edge.adaptive import EnsembleLayer
from edge.config import load_config
from edge.contract import Channel, ConfigError, decode_event
from edge.detector import OnnxDetector
from edge.intake import Message
from edge.metrics import AgentMetrics
from edge.pipeline import Pipeline
from edge.synth import Fault, simulate
from models.config import config_from_mapping
from models.export import write_artifact
from models.fit import FittedModel, fit
from tests.edge.agent_util import fleet_readings, payloads
from tests.models.conftest import WINDOW, tiny_config


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory, train_rows: list[np.ndarray],
             channels: list[Channel]) -> tuple[FittedModel, Path, OnnxDetector]:
    fitted = fit(train_rows, tiny_config(members=3, seed=1), channels=channels)
    out = tmp_path_factory.mktemp("ensemble")
    write_artifact(fitted, out, name="test-ensemble", created_at="2026-01-01T00:00:00Z")
    return fitted, out, OnnxDetector.load(out)


def test_members_are_the_single_fits_of_their_seeds_and_the_graph_outputs_all_three(
        ensemble: tuple[FittedModel, Path, OnnxDetector], train_rows: list[np.ndarray], channels: list[Channel]) -> None:
    fitted, _, onnx = ensemble
    windows = np.stack([train_rows[0][i:i + WINDOW] for i in range(0, 600, 9)]).astype(np.float32)
    score, channel_scores, members = onnx.score_members(windows)
    assert onnx.manifest.members is not None and fitted.members == onnx.manifest.members
    for j in range(3):  # seed 1 x 3 members: seeds 3, 4, 5
        single = fit(train_rows, tiny_config(seed=3 + j), channels=channels)
        assert onnx.manifest.members[j].threshold == single.threshold
        np.testing.assert_allclose(members[:, j], single.score(windows)[0], rtol=1e-4)
    thresholds = np.array([m.threshold for m in onnx.manifest.members])
    np.testing.assert_allclose(score, np.median(members / thresholds, axis=1), rtol=1e-5)
    np.testing.assert_allclose(score, fitted.score(windows)[0], rtol=1e-4)  # the torch twin
    np.testing.assert_allclose(channel_scores.sum(axis=1), 1.0, rtol=1e-4)
    assert np.array_equal(onnx.score(windows)[0], score)


def test_members_must_be_one_or_an_odd_number_of_at_least_three(ensemble: tuple[FittedModel, Path, OnnxDetector]) -> None:
    for bad in (0, 2, 4):
        with pytest.raises(ConfigError, match=r"train\.members"):
            config_from_mapping({"members": bad})
    rows = simulate(300, seed=1)[0]
    with pytest.raises(ConfigError, match="not those of an ensemble of 5"):
        fit(rows, tiny_config(members=5), init_from=ensemble[0])


def test_an_ensemble_is_fine_tuned_member_by_member(ensemble: tuple[FittedModel, Path, OnnxDetector]) -> None:
    fitted, model_dir, _ = ensemble
    rows = simulate(400, seed=2)[0]
    tuned = fit(rows, tiny_config(members=3, seed=1, epochs=1), init_from=fitted)
    assert tuned.members is not None and len(tuned.members) == 3
    for j in range(3):  # each member starts from its own weights: one epoch moves them only a little
        before = fitted.detector.state_dict()[f"members.{j}.net.encoder.0.0.weight"]
        after = tuned.detector.state_dict()[f"members.{j}.net.encoder.0.0.weight"]
        others = [fitted.detector.state_dict()[f"members.{k}.net.encoder.0.0.weight"] for k in range(3) if k != j]
        assert float((after - before).abs().mean()) < min(float((after - o).abs().mean()) for o in others)


def test_the_agent_fires_on_the_majority_of_its_members(ensemble: tuple[FittedModel, Path, OnnxDetector]) -> None:
    _, _, onnx = ensemble
    config = load_config(None, env={"EDGEWATCH_AGENT__ID": "gw-1", "EDGEWATCH_TELEMETRY__EVERY_N_WINDOWS": "0",
                                    "EDGEWATCH_ADAPTIVE__WARMUP_WINDOWS": "40"})
    pipe = Pipeline(config, onnx, AgentMetrics(CollectorRegistry()), clock=lambda: 2_000_000_000.0)
    assert isinstance(pipe.adaptive, EnsembleLayer)
    fault = Fault("spike", "pressure", start=1500, duration=80, magnitude=6.0)
    readings = fleet_readings("pump-7", 2000, seed=3, faults=[fault])
    records = pipe.process([Message(t, p, 1000.0) for t, p in payloads(readings, batch=20)])
    events = [decode_event(r.value) for r in records if r.kind == "anomaly"]
    t0 = readings[0].ts
    inside = [e for e in events if e.window_end >= t0 + fault.start and e.window_start < t0 + fault.start + fault.duration]
    assert inside, "the fault was not detected"
    assert len(events) - len(inside) <= 2
    # every member's state is kept, and a majority of members was over each firing window
    assert all("pump-7" in layer.devices for layer in pipe.adaptive.members)
    assert all(e.score > 0 and e.threshold > 0 for e in events)


def test_the_benchmark_decides_an_ensemble_as_the_majority_of_its_members_single_paths(train_rows: list[np.ndarray]) -> None:
    rows = np.concatenate(train_rows[:2])
    config = tiny_config(members=3)
    run = fit_and_score(rows, 900, config, channels=[f"c{i}" for i in range(rows.shape[1])])
    assert run.member_scores is not None and run.member_scores.shape == (len(rows), 3)
    assert run.members is not None and len(run.members) == 3
    agent = agent_config(None)
    times = (60 * np.arange(len(rows))).astype("datetime64[s]")
    ensemble = decide_run(run, times, rows, start=900, window_length=WINDOW, config=agent)
    singles = [agent_decisions(run.member_scores[:, j], times.astype(np.float64), start=900, window_length=WINDOW,
                               threshold=t, calibration=c, config=agent, values=rows) for j, (t, c) in enumerate(run.members)]
    assert np.array_equal(ensemble.fire, np.sum([s.fire for s in singles], axis=0) >= 2)
    assert np.array_equal(ensemble.surprise, np.median([s.surprise for s in singles], axis=0))
    for j, (threshold, _c) in enumerate(run.members):  # each member's prior is its own single fit's
        single = fit_and_score(rows, 900, config.with_(members=1, seed=j), channels=[f"c{i}" for i in range(rows.shape[1])])
        assert threshold == pytest.approx(single.threshold, rel=1e-5)
        np.testing.assert_allclose(run.member_scores[:, j], single.scores, rtol=1e-4)


def test_edgewatch_train_writes_an_ensemble_and_fine_tunes_it(tmp_path: Path, small_rows: np.ndarray) -> None:
    np.save(tmp_path / "rows.npy", small_rows)
    fast = ["--family", "dense_ae", "--window", "16", "--epochs", "2", "--progress", "false", "--members", "3"]
    assert main(["train", "--data", str(tmp_path / "rows.npy"), "--out", str(tmp_path / "a"), *fast]) == 0
    first = OnnxDetector.load(tmp_path / "a")
    assert first.manifest.members is not None and len(first.manifest.members) == 3
    assert (tmp_path / "a" / "training" / "report.png").exists()
    assert main(["train", "--data", str(tmp_path / "rows.npy"), "--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a"),
                 *fast]) == 0
    tuned = OnnxDetector.load(tmp_path / "b").manifest.members
    assert tuned is not None and [m.threshold for m in tuned] != [m.threshold for m in first.manifest.members]
    assert main(["train", "--data", str(tmp_path / "rows.npy"), "--out", str(tmp_path / "c"), "--init-from", str(tmp_path / "a"),
                 *fast[:-1], "5"]) == 2  # five members cannot start from three: a config error
