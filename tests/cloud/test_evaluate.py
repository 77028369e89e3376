"""Benchmark evaluation: metric functions on hand-made cases, NAB scoring, and the SKAB and NAB
runners end to end on tiny synthetic files (never the shared data sets)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from cloud.cli import main
from cloud.evaluate.agent_path import agent_config
from cloud.evaluate.metrics import Counts, confusion, micro, rising_edges
from cloud.evaluate.nab import hold_off
from cloud.evaluate.nab_score import PROFILES, Layout, best_threshold, scaled_sigmoid, score_corpus, score_file
from cloud.evaluate.normal import normal_chunks, normal_ratios, scale_for_far
from cloud.evaluate.skab import changepoint_layout, read_skab
from cloud.evaluate.skab_run import family_config
from edge.contract.errors import ConfigError

STANDARD = PROFILES["standard"]


def _sigma(y: float) -> float:
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


# ---- point metrics -------------------------------------------------------------------------

def test_confusion_and_ratios_on_a_hand_made_case() -> None:
    c = confusion(np.array([1, 1, 1, 0, 0, 0, 0]), np.array([1, 1, 0, 1, 0, 0, 0]))
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 1, 3)
    assert c.f1 == pytest.approx(2 / (2 + (1 + 1) / 2))
    assert c.far == pytest.approx(1 / 4)
    assert c.mar == pytest.approx(1 / 3)


def test_micro_average_sums_counts_before_the_ratios() -> None:
    a = confusion(np.array([1, 1, 0, 0]), np.array([1, 1, 0, 0]))  # perfect: per-file F1 1.0
    b = confusion(np.array([1, 0, 0, 0]), np.array([0, 1, 1, 1]))  # per-file F1 0.0
    total = micro([a, b])
    assert total == Counts(tp=2, fp=3, fn=1, tn=2)
    assert total.f1 == pytest.approx(2 / (2 + 2))  # not the macro mean 0.5
    assert total.far == pytest.approx(3 / 5)


def test_ratio_without_denominator_is_nan_not_a_number() -> None:
    c = confusion(np.ones(5), np.ones(5))
    assert c.f1 == 1.0 and c.mar == 0.0 and math.isnan(c.far)
    with pytest.raises(ValueError):
        confusion(np.ones(3), np.ones(4))


def test_rising_edges() -> None:
    assert rising_edges(np.array([1, 1, 0, 1, 0, 0, 1, 1])).tolist() == [0, 3, 6]
    assert rising_edges(np.array([1, 1, 0, 1]), initial=True).tolist() == [3]
    assert rising_edges(np.zeros(4)).tolist() == []


# ---- NAB scoring ---------------------------------------------------------------------------

def test_scaled_sigmoid_shape() -> None:
    assert float(scaled_sigmoid(0.0)) == pytest.approx(0.0)
    assert float(scaled_sigmoid(-1.0)) == pytest.approx(_sigma(-1.0))
    assert float(scaled_sigmoid(3.5)) == -1.0


def _layout() -> Layout:
    return Layout.build(100, [(20, 29), (60, 69)])


def _detect(*rows: int, n: int = 100) -> np.ndarray:
    d = np.zeros(n, dtype=bool)
    d[list(rows)] = True
    return d


def test_perfect_detector_scores_100_and_null_scores_0() -> None:
    layout = _layout()
    for profile in PROFILES.values():
        assert score_file(layout, _detect(20, 60), profile).normalised == pytest.approx(100.0)
        assert score_file(layout, _detect(), profile).normalised == pytest.approx(0.0)


def test_nab_score_of_a_known_case() -> None:
    # first window hit in its middle (row 25, y = (25 - 29 - 1) / 10, reward divided by sigma(-1)), second
    # window missed, (row 27 is a second detection in the same window: ignored), one false positive before
    # any window (-A_FP) and one after the last window at y = (99 - 69) / 9 > 3 (-A_FP)
    result = score_file(_layout(), _detect(5, 25, 27, 99), STANDARD)
    assert (result.tp, result.fp, result.fn) == (1, 2, 1)
    assert result.raw == pytest.approx(_sigma(-0.5) / _sigma(-1.0) - 1.0 - 0.11 - 0.11)
    perfect, null = 2.0, -2.0
    assert result.normalised == pytest.approx(100 * (result.raw - null) / (perfect - null))


def test_earlier_detection_scores_higher_and_false_positive_just_after_a_window_costs_little() -> None:
    layout = _layout()
    early, late = score_file(layout, _detect(21, 60), STANDARD), score_file(layout, _detect(29, 60), STANDARD)
    assert early.raw > late.raw
    clean = score_file(layout, _detect(20, 60), STANDARD).raw
    just_after = score_file(layout, _detect(20, 60, 30), STANDARD).raw - clean
    long_after = score_file(layout, _detect(20, 60, 55), STANDARD).raw - clean
    assert just_after == pytest.approx(0.11 * _sigma(1 / 9))  # y = (30 - 29) / (10 - 1)
    assert 0 > just_after > long_after == pytest.approx(-0.11, abs=1e-5)


def test_probation_ignores_detections_and_profiles_weigh_differently() -> None:
    layout = Layout.build(100, [(20, 29), (60, 69)], probation=15)
    assert score_file(layout, _detect(3, 20, 60), STANDARD).fp == 0
    fp_heavy = _detect(20, 60, 90, 91, 92, 93)
    assert score_file(layout, fp_heavy, PROFILES["reward_low_fp"]).normalised < score_file(layout, fp_heavy, STANDARD).normalised
    miss = _detect(20)
    assert score_file(layout, miss, PROFILES["reward_low_fn"]).raw < score_file(layout, miss, STANDARD).raw


def test_layout_rejects_overlapping_windows() -> None:
    with pytest.raises(ValueError):
        Layout.build(100, [(10, 30), (25, 40)])


def test_best_threshold_finds_the_separating_score() -> None:
    layout = _layout()
    scores = np.full(100, 0.1)
    scores[[20, 60]] = 0.9
    scores[[40]] = 0.5  # one false-positive bump the best threshold must stay above
    t, result = best_threshold([layout], [scores], STANDARD)
    assert 0.5 < t <= 0.9
    assert result.normalised == pytest.approx(100.0)
    assert score_corpus([layout], [scores >= 0.5], STANDARD).normalised < 100.0


def test_hold_off_is_causal_and_quiets_repeats() -> None:
    scores = np.array([0.1, 0.6, 0.9, 0.7, 0.2, 0.8, 0.3, 0.55])
    assert hold_off(scores, 2).tolist() == [0.1, 0.6, 0.0, 0.0, 0.2, 0.8, 0.0, 0.0]
    assert hold_off(scores, 0).tolist() == scores.tolist()
    assert hold_off(scores[:4], 2).tolist() == hold_off(scores, 2)[:4].tolist()  # no look-ahead


def test_changepoint_windows_are_cut_at_the_next_changepoint() -> None:
    times = np.datetime64("2020-01-01T00:00:00") + np.arange(300).astype("timedelta64[s]")
    cps = np.zeros(300, dtype=np.int8)
    cps[[100, 130, 250]] = 1
    layout = changepoint_layout(times, cps, 60.0)
    assert layout.windows == ((100, 129), (130, 190), (250, 299))


# ---- runners end to end ----------------------------------------------------------------------

def _write_skab(path: Path, *, seed: int, n: int = 520, start: int = 440, end: int = 480, crlf: bool = False) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    load = np.sin(t / 15.0)
    data = np.stack([load + 0.05 * rng.standard_normal(n), 2 * load + 0.05 * rng.standard_normal(n),
                     10 + 0.1 * rng.standard_normal(n)], axis=1)
    data[start:end, 1] += 3.0  # broken correlation
    anomaly = ((t >= start) & (t < end)).astype(float)
    cp = np.zeros(n)
    cp[[start, end]] = 1.0
    times = np.datetime64("2020-03-09T10:00:00") + t.astype("timedelta64[s]")
    lines = ["datetime;Sensor A;SensorB;Temp;anomaly;changepoint"]
    for i in range(n):
        stamp = str(times[i]).replace("T", " ")
        lines.append(f"{stamp};{data[i, 0]:.5f};{data[i, 1]:.5f};{data[i, 2]:.5f};{anomaly[i]:.1f};{cp[i]:.1f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\r\n" if crlf else "\n").join(lines).encode() + b"\n")


def test_read_skab_rejects_a_file_without_labels(tmp_path: Path) -> None:
    bad = tmp_path / "x.csv"
    bad.write_text("datetime;a\n2020-01-01 00:00:00;1.0\n")
    with pytest.raises(ConfigError, match="anomaly"):
        read_skab(bad)


def test_skab_runner_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, out = tmp_path / "skab", tmp_path / "out"
    _write_skab(data / "valve9" / "0.csv", seed=1)
    _write_skab(data / "valve9" / "1.csv", seed=2, crlf=True)
    _write_normal(data / "anomaly-free" / "free.csv", 1100)  # excluded from the labelled files by default
    code = main(["evaluate", "skab", "--data", str(data), "--out", str(out), "--family", "dense_ae", "--window", "8",
                 "--epochs", "3", "--seeds", "2", "--no-progress", "--normal", str(data / "anomaly-free" / "free.csv"),
                 "--far-target", "0.1,0.3"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"]["files"] == 2 and metrics["protocol"]["test_rows"] == 2 * 120
    fam = metrics["families"]["dense_ae"]
    assert len(fam["per_seed"]) == 2
    for key in ("f1", "far", "mar", "nab_standard", "nab_reward_low_fp", "nab_reward_low_fn", "fit_seconds_per_file"):
        assert key in fam["mean"] and key in fam["sd"]
    seed0 = fam["per_seed"][0]
    assert seed0["tp"] + seed0["fn"] == 80 and seed0["fp"] + seed0["tn"] == 160
    assert seed0["threshold_scale"] > 0 and {"unscaled_f1", "unscaled_far", "far0.3_f1", "far0.3_nab_standard"} <= set(seed0)
    assert seed0["far0.3_far"] >= seed0["far"]  # a looser false-alarm target flags at least as much
    assert metrics["baseline_all_anomaly"]["far"] == 1.0 and metrics["baseline_all_anomaly"]["f1"] == pytest.approx(80 / (80 + 80))
    assert sorted(p.relative_to(out / "predictions").as_posix() for p in (out / "predictions").rglob("*.csv")) == [
        "valve9/0.csv", "valve9/1.csv"]
    with (out / "predictions" / "valve9" / "1.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["datetime", "score", "anomaly"] and len(rows) == 121
    assert rows[1][0] == "2020-03-09 10:06:40"  # row 400
    assert {r[2] for r in rows[1:]} <= {"0", "1"} and all(float(r[1]) >= 0 for r in rows[1:])
    assert (out / "plot.png").stat().st_size > 1000
    assert "dense_ae" in capsys.readouterr().out


def _write_normal(path: Path, n: int) -> None:
    """An anomaly-free file in SKAB's format: no label columns."""
    _write_skab(path, seed=5, n=n, start=0, end=0)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line.rsplit(";", 2)[0] for line in lines) + "\n")


def test_normal_chunks_and_threshold_scale(tmp_path: Path) -> None:
    _write_normal(tmp_path / "free.csv", 1150)
    chunks = normal_chunks(tmp_path / "free.csv", length=520, min_rows=500)
    assert [len(c.rows) for c in chunks] == [520, 520]  # the 110-row tail is dropped
    assert chunks[1].times[0] == chunks[0].times[0] + np.timedelta64(520, "s")
    config = family_config("dense_ae", 0, {"window_length": 8, "epochs": 2})
    run = normal_ratios(chunks, config, agent_config(), n_train=400, progress=False)
    ratios = run.ratios
    assert ratios.shape == (240,) and np.all(ratios >= 0)
    assert run.agent_fires.shape == (240,) and 0.0 <= run.agent_far <= 1.0
    strict, loose = scale_for_far(ratios, 0.02), scale_for_far(ratios, 0.5)
    assert strict > loose > 0
    assert np.mean(ratios > loose) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ConfigError):
        scale_for_far(ratios, 1.5)
    _write_skab(tmp_path / "labelled.csv", seed=1)
    with pytest.raises(ConfigError, match="anomalous"):
        normal_chunks(tmp_path / "labelled.csv", length=520, min_rows=500)


def test_skab_cli_rejects_bad_usage_with_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_skab(tmp_path / "skab" / "v" / "0.csv", seed=1)
    assert main(["evaluate", "skab", "--data", str(tmp_path / "skab"), "--out", str(tmp_path / "o"), "--family", "nope"]) == 2
    assert main(["evaluate", "skab", "--data", str(tmp_path / "skab")]) == 2  # no --out
    assert main(["evaluate", "skab", "--data", str(tmp_path / "skab"), "--out", str(tmp_path / "o"), "--far-target", "2"]) == 2
    assert main(["evaluate", "skab", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_nab_runner_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    windows: dict[str, list[list[str]]] = {}
    start = np.datetime64("2014-04-01T00:00:00")
    for cat, name, spike in (("artificialWithAnomaly", "a.csv", 300), ("artificialNoAnomaly", "b.csv", None)):
        n = 400
        values = np.sin(np.arange(n) / 10.0) + 0.05 * rng.standard_normal(n)
        times = start + (np.arange(n) * 300).astype("timedelta64[s]")
        if spike is not None:
            values[spike:spike + 5] += 4.0
            windows[f"{cat}/{name}"] = [[f"{str(times[spike - 10]).replace('T', ' ')}.000000",
                                         f"{str(times[spike + 10]).replace('T', ' ')}.000000"]]
        else:
            windows[f"{cat}/{name}"] = []
        target = tmp_path / "nab" / "data" / cat / name
        target.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(f"{str(t).replace('T', ' ')},{v:.5f}\n" for t, v in zip(times, values, strict=True))
        target.write_text("timestamp,value\n" + body)
    (tmp_path / "nab" / "labels").mkdir()
    (tmp_path / "nab" / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    out = tmp_path / "out"
    assert main(["evaluate", "nab", "--data", str(tmp_path / "nab"), "--out", str(out), "--family", "dense_ae",
                 "--window", "8", "--epochs", "3", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    standard = metrics["families"]["dense_ae"]["per_seed"][0]["standard"]
    assert set(standard) == {"optimised_threshold", "artificialWithAnomaly", "artificialNoAnomaly", "corpus"}
    assert standard["artificialNoAnomaly"]["optimised"]["score"] is None  # no windows: normalised score undefined
    assert -1000 < standard["artificialWithAnomaly"]["optimised"]["score"] <= 100
    with (out / "scores" / "artificialWithAnomaly" / "a.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["timestamp", "value", "anomaly_score", "label"] and len(rows) == 401
    scores = np.array([float(r[2]) for r in rows[1:]])
    assert np.all((scores >= 0) & (scores <= 1))
    assert sum(int(r[3]) for r in rows[1:]) == 21


def test_skab_defaults_floor_the_scale_and_a_config_can_override_it() -> None:
    assert family_config("dense_ae", 0, {}).scale_floor > 0  # docs/benchmarks.md: the setting adopted for SKAB
    assert family_config("dense_ae", 0, {"scale_floor": 0.0}).scale_floor == 0.0
    assert family_config("conv_ae", 0, {"window_transform": "center"}).window_transform == "center"
    with pytest.raises(ConfigError, match="level_weight"):
        family_config("dense_ae", 0, {"level_weight": 0.1})  # a level weight needs a window transform
