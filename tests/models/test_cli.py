"""``edgewatch train`` end to end, in process, and the configuration it reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud.cli import build_parser, main
from edge.contract.errors import ConfigError
from edge.detector import OnnxDetector
from models.config import TrainConfig, field_help, load_config

FAST = ["--epochs", "2", "--window", "16", "--stride", "8", "--hidden", "8", "--latent", "3", "--progress", "false"]


def test_help_names_every_flag_and_its_env_twin(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, env in (("--family", "EDGEWATCH_FAMILY"), ("--window", "EDGEWATCH_WINDOW"), ("--max-norm", "EDGEWATCH_MAX_NORM"),
                      ("--data", "EDGEWATCH_DATA"), ("--quantize", "EDGEWATCH_QUANTIZE")):
        assert flag in text and f"[env: {env}]" in text
    assert text.count("[env: EDGEWATCH_") >= len(field_help()) + 8


def test_train_on_semicolon_csv_writes_artifact_and_report(tmp_path: Path, small_rows: np.ndarray) -> None:
    data = tmp_path / "pump.csv"
    lines = ["datetime;vib;cur;press;temp"] + [f"t{i};{r[0]};{r[1]};{r[2]};{r[3]}" for i, r in enumerate(small_rows)]
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "model"
    code = main(["train", "--data", str(data), "--out", str(out), "--family", "conv_ae", "--channels", "vib,cur,press",
                 "--units", "mm/s,A,bar", "--calibration", "pot", *FAST])
    assert code == 0
    detector = OnnxDetector.load(out)
    assert detector.manifest.channel_names == ("vib", "cur", "press") and detector.manifest.calibration.method == "pot"
    assert detector.manifest.name == "model"
    report = json.loads((out / "training" / "report.json").read_text())
    assert len(report["history"]["train_loss"]) == 2 and report["config"]["family"] == "conv_ae"
    assert (out / "training" / "report.png").stat().st_size > 10_000
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "training"]


def test_train_on_nab_csv_then_fine_tune_from_it(tmp_path: Path, small_rows: np.ndarray) -> None:
    data = tmp_path / "nab.csv"
    body = "".join(f"2014-01-01 00:{i // 60:02d}:{i % 60:02d},{v}\n" for i, v in enumerate(small_rows[:, 1]))
    data.write_text("timestamp,value\n" + body)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "a"), *FAST]) == 0
    assert OnnxDetector.load(tmp_path / "a").manifest.channel_names == ("value",)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a"), *FAST]) == 0
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "c"), "--init-from", str(tmp_path / "a"),
                 *FAST[:-4], "--hidden", "5", "--progress", "false"]) == 2  # different architecture: a config error


def test_train_on_npy_with_config_file_and_env(tmp_path: Path, small_rows: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    np.save(tmp_path / "rows.npy", small_rows)
    (tmp_path / "train.toml").write_text('[train]\nfamily = "lstm_forecast"\nepochs = 5\n')
    monkeypatch.setenv("EDGEWATCH_TRAIN__EPOCHS", "1")  # env beats the file, a flag beats both
    out = tmp_path / "m"
    assert main(["train", "--data", str(tmp_path / "rows.npy"), "--out", str(out), "--config", str(tmp_path / "train.toml"),
                 "--window", "16", "--stride", "8", "--hidden", "8", "--progress", "false"]) == 0
    report = json.loads((out / "training" / "report.json").read_text())
    assert report["config"]["family"] == "lstm_forecast" and len(report["history"]["train_loss"]) == 1


def test_bad_configuration_exits_2_naming_the_problem(tmp_path: Path, small_rows: np.ndarray, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "rows.npy", small_rows)
    base = ["train", "--data", str(tmp_path / "rows.npy"), "--out", str(tmp_path / "m"), "--progress", "false"]
    assert main([*base, "--family", "transformer"]) == 2
    assert "transformer" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("[train]\nepoch = 3\n")
    assert main([*base, "--config", str(tmp_path / "bad.toml")]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "train.epoch" in err
    assert main([*base, "--dropout", "1.5"]) == 2


def test_load_config_rejects_unknown_keys_and_bad_types(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[train]\nlr = "fast"\n')
    with pytest.raises(ConfigError, match="a.toml"):
        load_config(tmp_path / "a.toml", environ={})
    (tmp_path / "b.toml").write_text("[train]\nlr = 0.01\n[model]\nx = 1\n")
    with pytest.raises(ConfigError, match="model"):
        load_config(tmp_path / "b.toml", environ={})
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")  # type: ignore[arg-type]
    assert load_config(None, environ={"EDGEWATCH_TRAIN__BATCH_NORM": "true"}).batch_norm is True


def test_train_environment_follows_the_one_policy(caplog: pytest.LogCaptureFixture) -> None:
    # an unknown variable is logged and ignored, as for every section; a bad value names the variable
    assert load_config(None, environ={"EDGEWATCH_TRAIN__EPOCS": "3"}) == TrainConfig()
    assert "EDGEWATCH_TRAIN__EPOCS" in caplog.text
    with pytest.raises(ConfigError, match=r"EDGEWATCH_TRAIN__EPOCHS \('train.epochs'\): expected an integer"):
        load_config(None, environ={"EDGEWATCH_TRAIN__EPOCHS": "many"})
