"""Agent config: typed TOML, environment twins, unknown keys named with their file, secrets."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import Config, default_model_dir, load_config
from edge.config_parse import check_host_ports
from edge.contract import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_file_values_are_typed_and_paths_resolve_against_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
[agent]
id = "gw-7"
overflow = "drop_newest"
[mqtt]
port = 1884
reconnect_max_s = 3
[decision]
k = 2
n = 3
device_thresholds = { "pump-1" = 4.5, "pump-2" = 7 }
[outbox]
path = "state/outbox.sqlite"
[model]
path = "zoo/m1"
""")
    c = load_config(path, env={})
    assert c.agent.id == "gw-7" and c.agent.overflow == "drop_newest"
    assert c.mqtt.port == 1884 and c.mqtt.reconnect_max_s == 3.0 and isinstance(c.mqtt.reconnect_max_s, float)
    assert c.mqtt.client_id == "edgewatch-gw-7" and c.kafka.client_id == "edgewatch-gw-7"
    assert (c.decision.k, c.decision.n) == (2, 3)
    assert c.decision.device_thresholds == {"pump-1": 4.5, "pump-2": 7.0}
    assert c.outbox.path == str(tmp_path / "state" / "outbox.sqlite")
    assert c.model.path == str(tmp_path / "zoo" / "m1")
    with pytest.raises(AttributeError):
        c.mqtt.port = 1  # type: ignore[misc]


def test_no_model_configured_means_the_default_zoo_model(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, "[agent]\nid = 'a'\n"), env={})
    assert Path(c.model.path) == default_model_dir()
    assert default_model_dir().parts[-3:] == ("models", "zoo", "default")


@pytest.mark.parametrize("text, key", [
    ("[mqtt]\nprot = 1883\n", "'mqtt.prot'"),
    ("[mqqt]\nport = 1883\n", "'mqqt'"),
    ("[decision]\nk = 1\nkk = 2\n", "'decision.kk'"),
    ("top = 1\n", "'top'"),
])
def test_unknown_key_names_file_and_dotted_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(path) in str(err.value) and key in str(err.value)


@pytest.mark.parametrize("text, needle", [
    ("[mqtt]\nport = '1883'\n", "'mqtt.port': expected an integer"),
    ("[mqtt]\nport = 1.5\n", "'mqtt.port': expected an integer"),
    ("[agent]\ntick_s = true\n", "'agent.tick_s': expected a number"),
    ("[agent]\noverflow = 'drop_all'\n", "must be one of 'drop_newest', 'drop_oldest'"),
    ("[outbox]\nsynchronous = 'OFF'\n", "'outbox.synchronous'"),
    ("[decision]\nk = 3\nn = 2\n", "'decision.k' = 3 must be 1 <= k <= n (2)"),
    ("[mqtt]\nport = 70000\n", "'mqtt.port' = 70000 must be 1-65535"),
    ("[decision]\ndevice_thresholds = { 'p1' = 'high' }\n", "'decision.device_thresholds.p1': expected a number"),
    ("[mqtt\n", "invalid TOML"),
    ("[agent]\nmax_devices = 0\n", "'agent.max_devices' = 0 must be >= 1"),
    ("[agent]\nmax_devices = 1.5\n", "'agent.max_devices': expected an integer"),
    ("[agent]\ndevice_idle_evict_s = 0\n", "'agent.device_idle_evict_s' = 0.0 must be > 0"),
    ("[windows]\nmax_clock_skew_s = -1\n", "'windows.max_clock_skew_s' = -1.0 must be >= 0"),
    ("[updates]\nmax_artifact_bytes = 0\n", "'updates.max_artifact_bytes' = 0 must be >= 1"),
    ("[updates]\nmax_download_bytes = -1\n", "'updates.max_download_bytes' = -1 must be >= 1"),
])
def test_bad_values_are_config_errors_naming_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert needle in str(err.value) and str(path) in str(err.value)


def test_bounds_on_hostile_input_have_defaults_and_a_bad_one_exits_2(tmp_path: Path) -> None:
    d = load_config(None, env={})
    assert (d.agent.max_devices, d.agent.device_idle_evict_s, d.windows.max_clock_skew_s) == (2_000, 3600.0, 5.0)
    path = write(tmp_path, "[agent]\nid = 'a'\nmax_devices = 0\n")
    out = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "'agent.max_devices' = 0" in out.stderr and "Traceback" not in out.stderr


def test_environment_twins_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[mqtt]\nport = 1884\nhost = 'a'\n")
    env = {"EDGEWATCH_MQTT__PORT": "1999", "EDGEWATCH_AGENT__TICK_S": "0.2", "EDGEWATCH_DECISION__THRESHOLD": "3.5",
           "EDGEWATCH_DECISION__DEVICE_THRESHOLDS": "p1=2, p2=4.5", "EDGEWATCH_OUTBOX__SYNCHRONOUS": "NORMAL",
           "EDGEWATCH_CACHE": "/elsewhere"}
    c = load_config(path, env=env)
    assert c.mqtt.port == 1999 and c.mqtt.host == "a"
    assert c.agent.tick_s == 0.2 and c.decision.threshold == 3.5
    assert c.decision.device_thresholds == {"p1": 2.0, "p2": 4.5}
    assert c.outbox.synchronous == "NORMAL"


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, ""), env={"EDGEWATCH_MQTT__PORT": "eighteen"})
    assert "EDGEWATCH_MQTT__PORT" in str(err.value) and "'mqtt.port'" in str(err.value)


def test_unknown_environment_key_is_logged_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        c = load_config(write(tmp_path, ""), env={"EDGEWATCH_MQTT__PROT": "1"})
    assert c.mqtt.port == 1883
    assert "EDGEWATCH_MQTT__PROT" in caplog.text


def test_secrets_only_from_environment_and_masked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "[kafka]\npassword = 'hunter2'\n"), env={})
    assert "EDGEWATCH_KAFKA__PASSWORD" in str(err.value) and "hunter2" not in str(err.value)
    c = load_config(write(tmp_path, "[mqtt]\nusername = 'u'\n"),
                    env={"EDGEWATCH_MQTT__PASSWORD": "s3cret", "EDGEWATCH_KAFKA__PASSWORD": "k3y"})
    assert c.mqtt.password == "s3cret" and c.kafka.password == "k3y"
    shown = f"{c!r} {c.describe()}"
    assert "s3cret" not in shown and "k3y" not in shown
    assert c.describe()["mqtt"]["password"] == "***"


def test_defaults_need_no_file() -> None:
    c = load_config(None, env={"EDGEWATCH_AGENT__ID": "edge-1"})
    assert isinstance(c, Config) and c.agent.id == "edge-1" and c.mqtt.port == 1883
    assert c.kafka.anomalies_topic == "edgewatch.anomalies"
    assert (c.updates.max_artifact_bytes, c.updates.max_download_bytes) == (64 << 20, 128 << 20)


def test_the_example_config_loads_and_states_the_defaults() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "agent.example.toml"
    c = load_config(example, env={})
    d = load_config(None, env={})
    def paths_out(x: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
        return x | {"model": {}, "outbox": {}, "updates": {k: v for k, v in x["updates"].items() if k != "state_dir"}}

    assert paths_out(c.describe()) == paths_out(d.describe())
    assert Path(c.outbox.path) == example.parent / "edgewatch-outbox.sqlite"


@pytest.mark.parametrize("value, needle", [
    ("not a host:port:xx", "host 'not a host:port'"),
    ("broker", "without a port"),
    ("broker:", "port ''"),
    ("broker:port", "port 'port'"),
    ("broker:0", "port '0'"),
    ("broker:65536", "port '65536'"),
    ("a:9092,,b:9092", "entry ''"),
    ("::1:9092", "host '::1'"),
    (" ", "must not be empty"),
])
def test_a_bad_bootstrap_list_fails_at_load_naming_the_key(tmp_path: Path, value: str, needle: str) -> None:
    path = write(tmp_path, f"[kafka]\nbootstrap = {value!r}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(path) in str(err.value) and "'kafka.bootstrap'" in str(err.value) and needle in str(err.value)
    with pytest.raises(ConfigError, match="kafka.bootstrap"):
        load_config(None, env={"EDGEWATCH_KAFKA__BOOTSTRAP": value})


def test_good_bootstrap_lists_pass_the_shared_check() -> None:
    for value in ("127.0.0.1:9092", "a.example.com:9093, b.example.com:9093", "kafka_1:1,[::1]:9092", "[fe80::1%eth0]:9092"):
        check_host_ports(value, "kafka.bootstrap", "test")
        assert load_config(None, env={"EDGEWATCH_KAFKA__BOOTSTRAP": value}).kafka.bootstrap == value


def test_the_deprecated_bootstrap_servers_key_still_works_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the agent's kafka.bootstrap_servers is now kafka.bootstrap, as in the processor and the retraining trigger
    path = write(tmp_path, "[kafka]\nbootstrap_servers = 'old.example.com:9092'\n")
    assert load_config(path, env={}).kafka.bootstrap == "old.example.com:9092"
    assert "config_key_deprecated" in caplog.text and "bootstrap_servers" in caplog.text
    old_env = {"EDGEWATCH_KAFKA__BOOTSTRAP_SERVERS": "env.example.com:9092"}
    assert load_config(None, env=old_env).kafka.bootstrap == "env.example.com:9092"
    both = write(tmp_path, "[kafka]\nbootstrap_servers = 'a:1'\nbootstrap = 'b:1'\n")
    with pytest.raises(ConfigError, match="'kafka.bootstrap_servers' is the deprecated name of"):
        load_config(both, env={})


def test_agent_run_with_a_bad_bootstrap_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[agent]\nid = 'a'\n[kafka]\nbootstrap = 'not a host:port:xx'\n")
    out = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "kafka.bootstrap" in out.stderr and "Traceback" not in out.stderr
