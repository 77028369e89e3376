"""deploy/prometheus: the config and rules load in promtool, and every alert's unit tests pass."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from localdev.stack import DEPLOY_DIR
from tests.tools import unavailable

PROM_DIR = DEPLOY_DIR / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        unavailable("promtool missing: apt-get install prometheus")
    return path


@pytest.mark.parametrize("args", [["check", "config", "prometheus.yml"], ["check", "rules", "edgewatch.rules.yml"],
                                  ["test", "rules", "tests/alerts_test.yml"]])
def test_promtool(promtool: str, args: list[str]) -> None:
    out = subprocess.run([promtool, *args], cwd=PROM_DIR, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_every_alert_has_a_unit_test() -> None:
    rules = (PROM_DIR / "edgewatch.rules.yml").read_text()
    tests = (PROM_DIR / "tests" / "alerts_test.yml").read_text()
    alerts = [line.split(":", 1)[1].strip() for line in rules.splitlines() if line.strip().startswith("- alert:")]
    assert len(alerts) == 11
    for alert in alerts:
        assert f"alertname: {alert}" in tests, f"{alert} has no promtool test"
