"""``edgewatch incidents list | show | label`` on a store the pipeline filled; ``edgewatch process`` exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cloud.cli import main
from cloud.processor.backends import open_store
from cloud.processor.metrics import ProcessorMetrics
from cloud.processor.pipeline import IncidentPipeline
from edge.contract import encode_event
from tests.cloud.processor_streams import T0, config, fleet_stream, write_config
from tests.cloud.test_processor_store import Rec


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    path = write_config(tmp_path / "cloud.toml", bootstrap="127.0.0.1:1", topic="t", group="g", sqlite_path=tmp_path / "s.db")
    cfg = config(path, bootstrap="127.0.0.1:1", topic="t", group="g", sqlite_path=tmp_path / "s.db")
    store = open_store(cfg.store)
    recs = [Rec(i, encode_event(e)) for i, e in enumerate(fleet_stream(4, partitions=1, duration_s=1200))]
    IncidentPipeline(cfg, store, ProcessorMetrics(CollectorRegistry()), clock=lambda: T0 + 86_400).process("t", 0, recs)
    store.close()
    return path


def test_list_show_and_label(cfg_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["incidents", "list", "--json", "--limit", "500", "--config", str(cfg_path)]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert listed and all(d["label"] is None for d in listed)
    first = next(d for d in listed if d["kind"] == "incident")
    assert main(["incidents", "label", first["incident_id"], "--false-positive", "--config", str(cfg_path)]) == 0
    assert main(["incidents", "show", first["incident_id"], "--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert '"label": "false_positive"' in out and out.count(first["device_id"]) >= first["event_count"]
    assert main(["incidents", "list", "--config", str(cfg_path)]) == 0
    assert "label=false_positive" in capsys.readouterr().out
    assert main(["incidents", "show", "0" * 32, "--config", str(cfg_path)]) == 1


def test_label_needs_a_verdict(cfg_path: Path) -> None:
    with pytest.raises(SystemExit) as err:
        main(["incidents", "label", "x", "--config", str(cfg_path)])
    assert err.value.code == 2


def test_process_with_a_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka]\nbootstrapp = 'x'\n")
    assert main(["process", "--config", str(bad)]) == 2
    assert "kafka.bootstrapp" in capsys.readouterr().err
