"""``edgewatch backtest`` and the registration gate, on small archives written here with the
archive's own writer (:mod:`tests.cloud.archive_util`) and the tiny test model."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cloud.backtest.replay as bt
from cloud.backtest import backtest
from cloud.cli import main
from cloud.evaluate.agent_path import agent_config, agent_decisions
from cloud.processor.archive import write_flush
from cloud.processor.backends import open_sqlite
from cloud.processor.store import IncidentRow
from cloud.registry import Registry
from cloud.retrain.dataset import LabelledIncident
from edge.config import Config
from edge.contract import decode_manifest
from edge.detector import OnnxDetector, load_manifest
from tests.cloud.archive_util import T0, TINY_MODEL, tiny_model_as, window_rows, write_archive


def _scores(windows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    det = OnnxDetector.load(TINY_MODEL)
    return {d: np.asarray(det.score(w.astype(np.float32))[0], dtype=np.float64) for d, w in windows.items()}


def _fixed(config: Config) -> Config:
    return dataclasses.replace(config, adaptive=dataclasses.replace(config.adaptive, enabled=False))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """6 devices (3 sites) x 4 days x 96 windows a day; each device's windows and tiny-model scores."""
    root = tmp_path_factory.mktemp("archive") / "archive"
    windows = write_archive(root, devices=6, days=4, per_day=96)
    return root, windows, _scores(windows)


@pytest.mark.parametrize("adaptive", [True, False])
def test_the_replay_decides_as_the_agent_path(fleet: Any, tmp_path: Path, adaptive: bool) -> None:
    """Day by day and device by device, the backtest fires exactly where agent_path's decisions fire
    on the same windows in the same order (adaptive layer, k-of-n 2 of 3)."""
    root, _windows, scores = fleet
    threshold = float(np.quantile(np.concatenate(list(scores.values())), 0.9))
    model = tiny_model_as(tmp_path, "2.0", threshold)
    config = agent_config()
    config = dataclasses.replace(config, decision=dataclasses.replace(config.decision, k=2, n=3))
    config = config if adaptive else _fixed(config)
    seen: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    result = backtest(root, model, config=config, on_decided=lambda d, ends, s, fire: seen.setdefault(d, []).append((ends, s, fire)))
    assert len(seen) == 6 and all(len(days) == 4 for days in seen.values())
    m = load_manifest(model)
    fired = 0
    for device, days in seen.items():
        ends, got_scores, fire = (np.concatenate([day[i] for day in days]) for i in range(3))
        np.testing.assert_allclose(got_scores, scores[device], rtol=1e-6)
        last_rows = _windows[device][:, -1, :]
        expected = agent_decisions(scores[device], ends, start=0, window_length=1, threshold=m.threshold,
                                   calibration=m.calibration.params, config=config, values=last_rows)
        np.testing.assert_array_equal(fire, expected.fire)
        assert result.devices[device].alerts == int(expected.fire.sum())
        fired += int(fire.sum())
    assert fired > 0


def test_a_threshold_set_too_low_shows_3x_and_is_refused_at_registration(fleet: Any, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    root, _windows, scores = fleet
    every = np.concatenate(list(scores.values()))
    prod = tiny_model_as(tmp_path, "1.0", float(np.quantile(every, 0.97)))
    low = tiny_model_as(tmp_path, "1.1", float(np.quantile(every, 0.91)))
    config = _fixed(agent_config())
    p, c = (backtest(root, m, config=config) for m in (prod, low))
    ratio = c.overall().alerts / p.overall().alerts
    assert 2.5 < ratio < 3.5, ratio
    assert c.overall().alerts_per_device_day["p50"] > 2 * p.overall().alerts_per_device_day["p50"]
    toml = tmp_path / "agent.toml"
    toml.write_text("[adaptive]\nenabled = false\n")
    reg = tmp_path / "registry"
    assert main(["registry", "register", str(prod), "--root", str(reg)]) == 0
    assert main(["registry", "promote", "tiny-zscore", "1.0", "--root", str(reg)]) == 0
    capsys.readouterr()
    gate = ["registry", "register", str(low), "--root", str(reg), "--archive", str(root), "--config", str(toml)]
    assert main(gate) == 3
    err = capsys.readouterr().err
    cand_p50, prod_p50 = c.overall().alerts_per_device_day["p50"], p.overall().alerts_per_device_day["p50"]
    assert "refused" in err and f"{cand_p50:.3g}" in err and f"{prod_p50:.3g}" in err and "--max-alert-ratio 2" in err
    assert Registry(reg).versions("tiny-zscore") == ["1.0"]
    assert main([*gate, "--force"]) == 0
    registered = Registry(reg).version_dir("tiny-zscore", "1.1")
    e = decode_manifest((registered / "manifest.json").read_bytes()).expected_alerts
    assert e is not None and e.devices == 6 and e.max_ratio == 2.0 and 23 < e.device_days <= 24
    assert e.alerts_per_device_day["p50"] == pytest.approx(cand_p50)
    assert e.baseline_window_rate == pytest.approx(p.overall().window_rate["p50"])
    card = json.loads((registered / "model_card.json").read_text())["backtest"]
    assert card["decision"] == "forced" and card["production"]["version"] == "1.0" and card["candidate"]["alerts"] == c.overall().alerts
    assert main(["backtest", "tiny-zscore", "1.1", "--root", str(reg), "--archive", str(root), "--config", str(toml),
                 "--group-pattern", r"^(site\d+)-", "--out", str(tmp_path / "out"), "--progress", "false"]) == 0
    out = capsys.readouterr().out
    assert all(f"site{i}" in out for i in range(3)) and " 1.0 " in out and " 1.1 " in out
    doc = json.loads((tmp_path / "out" / "backtest.json").read_text())
    assert [r["version"] for r in doc["replays"]] == ["1.1", "1.0"] and set(doc["replays"][0]["groups"]) == {"site0", "site1", "site2"}
    assert (tmp_path / "out" / "alerts_per_day.png").stat().st_size > 0


def test_a_range_without_archived_windows_exits_non_zero_and_says_so(fleet: Any, capsys: pytest.CaptureFixture[str]) -> None:
    root = fleet[0]
    assert main(["backtest", str(TINY_MODEL), "--archive", str(root), "--since", "2030-01-01", "--progress", "false"]) == 2
    assert "no archived windows since 2030-01-01T00:00:00+00:00" in capsys.readouterr().err
    assert main(["backtest", str(TINY_MODEL), "--archive", str(root), "--device", "nobody"]) == 2
    assert "for devices nobody" in capsys.readouterr().err


def test_labelled_incidents_caught_and_raised(fleet: Any, tmp_path: Path) -> None:
    root, _windows, scores = fleet
    model = tiny_model_as(tmp_path, "3.0", float(np.quantile(np.concatenate(list(scores.values())), 0.98)))
    config = _fixed(agent_config())
    plain = backtest(root, model, config=config)
    dev = next(d for d in plain.devices.values() if len(d.incidents) >= 2)
    (a0, b0), (a1, b1) = dev.incidents[:2]
    quiet = next(t for t in np.arange(dev.first, dev.last, 600.0)
                 if all(not (a - 700 <= t <= b + 700) for a, b in dev.incidents))
    labels = [LabelledIncident("tp-hit", "true_positive", (dev.device_id,), a0 - 5, b0 + 5),
              LabelledIncident("tp-missed", "true_positive", (dev.device_id,), quiet, quiet + 60),
              LabelledIncident("fp-raised", "false_positive", (dev.device_id, "elsewhere"), a1, b1),
              LabelledIncident("not-replayed", "true_positive", ("elsewhere",), a0, b0)]
    s = backtest(root, model, config=config, labels=labels).overall()
    assert (s.true_positive, s.caught, s.false_positive, s.raised) == (2, 1, 1, 1)
    assert s.caught_share == 0.5
    store = open_sqlite(tmp_path / "store.db")  # the same labels through --store, as the processor stores them
    store.migrate()
    store.upsert_incidents([IncidentRow(f"{i:032x}", "incident", "", inc.device_ids[0], inc.device_ids, inc.start, inc.end, inc.end,
                                        3, 5.0) for i, inc in enumerate(labels)], T0)
    for i, inc in enumerate(labels):
        assert store.label_incident(f"{i:032x}", inc.label, T0)
    store.close()
    toml = tmp_path / "agent.toml"
    toml.write_text("[adaptive]\nenabled = false\n")
    assert main(["backtest", str(model), "--archive", str(root), "--store", str(tmp_path / "store.db"), "--config", str(toml),
                 "--out", str(tmp_path / "out"), "--progress", "false"]) == 0
    overall = json.loads((tmp_path / "out" / "backtest.json").read_text())["replays"][0]["overall"]
    assert (overall["true_positive"], overall["caught"], overall["false_positive"], overall["raised"]) == (2, 1, 1, 1)


def test_the_archive_streams_one_device_day_at_a_time(fleet: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows materialised at once: at most ``batch_size`` per record batch, one device-day per replay
    step; windows of other channels are skipped and counted; the device and range filters hold."""
    root = tmp_path / "archive"
    shutil.copytree(fleet[0], root)
    odd = np.zeros((5, 32, 2))
    write_flush(root, "edgewatch.telemetry", 1, window_rows("site0-dev0", [T0 + 100.0 + i for i in range(5)], odd,
                                                              channels=("a", "b"), offset=10_000))
    batches: list[int] = []
    days: list[int] = []
    batch_windows, read_day = bt._batch_windows, bt._read_day

    def spy_batch(batch: Any, *a: Any) -> Any:
        batches.append(batch.num_rows)
        return batch_windows(batch, *a)

    def spy_day(*a: Any) -> Any:
        w = read_day(*a)
        days.append(len(w.starts))
        return w

    monkeypatch.setattr(bt, "_batch_windows", spy_batch)
    monkeypatch.setattr(bt, "_read_day", spy_day)
    r = backtest(root, TINY_MODEL, config=agent_config(), batch_size=10)
    assert max(batches) <= 10 and sum(batches) == 6 * 4 * 96 + 5
    assert len(days) == 24 and max(days) == 96
    assert r.devices["site0-dev0"].skipped == 5 and r.overall().skipped == 5 and r.overall().windows == 6 * 4 * 96
    days.clear()
    r = backtest(root, TINY_MODEL, config=agent_config(), devices=["site1-dev2"], since=T0 + 86400, until=T0 + 2 * 86400)
    assert list(r.devices) == ["site1-dev2"] and r.devices["site1-dev2"].windows == 96 and sum(days) == 96
    assert r.devices["site1-dev2"].device_days == pytest.approx(1.0, abs=0.02)


def test_a_signed_candidate_loses_its_signature_and_signs_again_with_the_prediction(fleet: Any, tmp_path: Path,
                                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from cloud.keys import generate_keypair, load_private_key, sign_model_dir
    from edge.signing import load_trusted_keys, verify_manifest

    private, _public = generate_keypair(tmp_path / "keys")
    model = tiny_model_as(tmp_path, "4.0", 9.0551)
    sign_model_dir(model, load_private_key(private))
    reg = tmp_path / "registry"
    assert main(["registry", "register", str(model), "--root", str(reg), "--archive", str(fleet[0])]) == 0
    assert "sign it again with `registry publish --key`" in capsys.readouterr().out
    registered = Registry(reg).version_dir("tiny-zscore", "4.0")
    assert load_manifest(registered).signature is None
    signed = sign_model_dir(registered, load_private_key(private))
    verify_manifest(signed, load_trusted_keys(tmp_path / "keys"))
    assert signed.expected_alerts is not None and signed.expected_alerts.baseline_window_rate is None  # no production
