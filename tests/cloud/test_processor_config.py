"""The processor's config: the example file is the defaults, typos fail naming file and key, env twins apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.cli import main
from cloud.processor.config import ProcessorConfig, load_config
from edge.contract import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "cloud.example.toml"


def test_example_file_documents_exactly_the_defaults() -> None:
    assert load_config(EXAMPLE, env={}) == ProcessorConfig()


@pytest.mark.parametrize(("text", "key"), [
    ("[kafka]\nbootstrapp = 'x'\n", "kafka.bootstrapp"),
    ("[storage]\n", "'storage'"),
    ("[incidents]\nmin_events = 'three'\n", "incidents.min_events"),
    ("[store]\nbackend = 'mysql'\n", "store.backend"),
    ("[incidents]\nmin_events = 0\n", "incidents.min_events"),
    ("[fleet.sites]\nnorth = 'pump-1'\n", "fleet.sites.north"),
    ("[fleet]\nevaluate_interval_s = -1\n", "fleet.evaluate_interval_s"),
    ("[store]\nbackend = 'postgres'\n", "store.postgres_dsn"),
    ("[kafka]\nbootstrap = 'not a host:port:xx'\n", "'kafka.bootstrap' = 'not a host:port:xx'"),
    ("[kafka]\nbootstrap = '127.0.0.1:9092,kafka'\n", "'kafka.bootstrap'"),
])
def test_bad_keys_and_values_name_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(path) in str(err.value) and key in str(err.value)


def test_environment_twins_override_the_file_and_typos_fail(tmp_path: Path) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text("[kafka]\nbootstrap = 'file:1'\n[fleet.sites]\nnorth = ['pump-1']\n")
    cfg = load_config(path, env={"EDGEWATCH_KAFKA__BOOTSTRAP": "env:2", "EDGEWATCH_INCIDENTS__QUIET_S": "42",
                                 "EDGEWATCH_DRIFT__ENABLED": "false", "EDGEWATCH_STORE__BACKEND": "postgres",
                                 "EDGEWATCH_STORE__POSTGRES_DSN": "postgresql://u:secret@h/db"})
    assert (cfg.kafka.bootstrap, cfg.incidents.quiet_s, cfg.drift.enabled) == ("env:2", 42.0, False)
    assert cfg.fleet.site_of("pump-1") == "north"
    assert "secret" not in str(cfg.masked()) and "postgresql://u:***@h/db" in str(cfg.masked())
    with pytest.raises(ConfigError, match="EDGEWATCH_KAFKA__BOOTSTRAPP"):
        load_config(path, env={"EDGEWATCH_KAFKA__BOOTSTRAPP": "x"})
    with pytest.raises(ConfigError, match="EDGEWATCH_INCIDENTS__QUIET_S"):
        load_config(path, env={"EDGEWATCH_INCIDENTS__QUIET_S": "soon"})


def test_a_bad_bootstrap_from_the_environment_names_the_key_and_process_exits_2(tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="kafka.bootstrap"):
        load_config(None, env={"EDGEWATCH_KAFKA__BOOTSTRAP": "127.0.0.1:port"})
    path = tmp_path / "cloud.toml"
    path.write_text("[kafka]\nbootstrap = 'not a host:port:xx'\n[archive]\nenabled = true\n")
    assert main(["process", "--config", str(path)]) == 2
    assert "'kafka.bootstrap'" in capsys.readouterr().err
