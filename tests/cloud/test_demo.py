"""The demo runs end to end on its own brokers and reports what it found."""

from __future__ import annotations

from pathlib import Path

import pytest

from localdev.stack import missing_tools
from tests.tools import unavailable


def test_demo_finds_injected_faults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if missing_tools():
        unavailable(f"demo needs {missing_tools()}")
    from localdev.demo import run_demo

    result = run_demo(tmp_path, devices=10, groups=2, rate_hz=40, duration_s=20, seed=3)
    out = capsys.readouterr().out
    # 10 x 800 readings less those the dropout (64), slow-rate (106) and silent (160) devices did not send
    assert result.readings_sent == 10 * 800 - 64 - 106 - 160
    assert result.windows_scored > 0 and result.faults == 8  # 3 process faults, 5 sensor faults
    assert result.found >= 6, out  # the default model's synthetic recall is ~0.9 per fault
    assert result.false_alarms <= 2, out
    assert "=== edgewatch demo summary ===" in out and "faults injected        8" in out
    kinds = result.kinds
    assert (kinds["incident"].injected, kinds["sensor_fault"].injected, kinds["peer_outlier"].injected) == (3, 5, 1)
    assert kinds["incident"].found >= 2 and kinds["sensor_fault"].found >= 4, out
    assert kinds["sensor_fault"].note == "0 process anomalies inside them", out  # a sensor fault is never a process anomaly
    assert kinds["peer_outlier"].found == 1, out  # the drifting pump leaves its site's peers within the run
    assert kinds["device_silent"].note.startswith("not judged here"), out
    assert "by incident kind" in out and "  peer_outlier" in out
    assert "\x1b" not in out and "\r" not in out  # captured output is not a terminal: plain progress lines
    assert any(line.startswith("demo: ") and "% " in line for line in out.splitlines())  # progress, a plain line
    assert result.plot is not None and result.plot.stat().st_size > 10_000


def test_a_fleet_too_small_for_its_groups_is_refused_before_anything_starts(tmp_path: Path) -> None:
    from localdev.demo import run_demo

    with pytest.raises(ValueError, match="7 devices with a role .* but only 5 devices"):
        run_demo(tmp_path / "demo", devices=5, groups=4)
    assert not (tmp_path / "demo").exists()
