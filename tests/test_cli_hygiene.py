"""Command-line hygiene: a closed output pipe, a missing store or registry, bad paths and bad
simulator arguments end in one line and the documented exit code, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.cli import main
from cloud.processor.backends import open_sqlite
from cloud.processor.store import IncidentRow
from edge.cliutil import EXIT_PIPE_CLOSED
from tests.cloud.processor_streams import T0

ROOT = Path(__file__).resolve().parents[1]


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("EDGEWATCH_")]:
        monkeypatch.delenv(var)


def _closed_pipe_run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m module args`` with stdout a pipe whose reader has already gone (``| head -0``)."""
    read, write = os.pipe()
    os.close(read)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEWATCH_")} | {"PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "-m", module, *args], stdout=write, stderr=subprocess.PIPE, cwd=cwd,
                              env=env, timeout=60)
    finally:
        os.close(write)


@pytest.fixture
def many_incidents(tmp_path: Path) -> Path:
    """A processor config whose SQLite store holds 2,000 incidents (far more than a pipe buffer of output)."""
    store = open_sqlite(tmp_path / "s.db")
    store.migrate()
    store.upsert_incidents([IncidentRow(f"{i:032x}", "incident", "", f"pump-{i}", (f"pump-{i}",), T0 + i, None, T0 + i, 3, 5.0)
                            for i in range(2000)], T0)
    store.close()
    path = tmp_path / "cloud.toml"
    path.write_text(f"[store]\nsqlite_path = '{tmp_path / 's.db'}'\n")
    return path


def test_a_closed_output_pipe_ends_quietly_with_141(many_incidents: Path, tmp_path: Path) -> None:
    """``edgewatch incidents list | head -1``; the agent's side is in tests/test_cli_examples.py (it needs a broker)."""
    out = _closed_pipe_run("cloud.cli", "incidents", "list", "--limit", "2000", "--config", str(many_incidents), cwd=tmp_path)
    assert (out.returncode, out.stderr.decode()) == (EXIT_PIPE_CLOSED, "")
    for module in ("cloud.cli", "edge.cli"):  # argparse drops a help text it cannot write: 0 or 141, quiet either way
        out = _closed_pipe_run(module, "--help", cwd=tmp_path)
        assert out.returncode in (0, EXIT_PIPE_CLOSED) and out.stderr.decode() == "", module


def test_incidents_without_a_store_refuse_and_create_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    _clean_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert main(["incidents", "list"]) == 2
    assert "--config" in capsys.readouterr().err
    missing = tmp_path / "cloud.toml"
    missing.write_text("[store]\nsqlite_path = 'nothing-here.db'\n")
    assert main(["incidents", "list", "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "store.sqlite_path" in err and str(tmp_path / "nothing-here.db") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cloud.toml"]  # no edgewatch.db, no nothing-here.db


def test_incidents_say_which_store_they_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _clean_env(monkeypatch)
    open_sqlite(tmp_path / "empty.db").close()
    monkeypatch.setenv("EDGEWATCH_STORE__SQLITE_PATH", str(tmp_path / "empty.db"))
    assert main(["incidents", "list"]) == 0
    assert f"no incidents in the sqlite {tmp_path / 'empty.db'} store" in capsys.readouterr().out


def test_registry_bad_paths_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _clean_env(monkeypatch)
    assert main(["registry", "list", "--root", str(tmp_path / "missing")]) == 2
    assert "no registry there" in capsys.readouterr().err
    assert main(["registry", "register", str(tmp_path / "nonexistent"), "--root", str(tmp_path / "reg")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["registry", "register", str(tmp_path), "--root", str(tmp_path / "reg")]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert not (tmp_path / "reg").exists()


@pytest.mark.parametrize("args, needle", [
    (["--devices", "0"], "--devices"),
    (["--rate", "-1"], "--rate"),
    (["--duration", "0"], "--duration"),
    (["--port", "70000"], "--port"),
    (["--faults-per-device", "-1"], "--faults-per-device"),
    (["--batch", "0"], "--batch"),
    (["--replay", "missing.csv"], "missing.csv"),
    (["--replay", "no-time.csv"], "'datetime' column"),
    (["--replay", "bad-value.csv"], "line 3"),
    (["--truth", "no/such/folder/truth.json"], "--truth"),
])
def test_simulate_bad_arguments_are_usage_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "no-time.csv").write_text("time,pressure\n1,2\n")
    (tmp_path / "bad-value.csv").write_text("datetime;pressure\n2026-01-01 00:00:00;1.5\n2026-01-01 00:00:01;high\n")
    out = subprocess.run([sys.executable, "-m", "edge.cli", "simulate", "--port", "1", *args], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_simulate_to_an_unreachable_broker_is_one_line_and_exit_1(tmp_path: Path) -> None:
    from localdev.stack import free_port

    out = subprocess.run([sys.executable, "-m", "edge.cli", "simulate", "--port", str(free_port()), "--duration", "1"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    said = [line for line in out.stderr.splitlines() if line.startswith("edgewatch-agent simulate:")]
    assert len(said) == 1 and "cannot connect to MQTT 127.0.0.1:" in said[0]


def test_a_bad_environment_twin_is_a_usage_error_of_its_own_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _clean_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEWATCH_REGISTRY_MQTT_PORT", "abc")
    with pytest.raises(SystemExit) as exit_:
        main(["registry", "list", "--root", str(tmp_path)])
    assert exit_.value.code == 2 and "--mqtt-port" in capsys.readouterr().err
    assert main(["incidents", "list"]) == 2  # every parser is built; the other commands are not affected
