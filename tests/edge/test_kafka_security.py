"""Kafka TLS/SASL settings of the agent: the TOML keys and their environment twins, the checks at
load time (each error names the file and the dotted key), and the kafka-python arguments they map to.
Delivery over TLS against a real broker is in tests/cloud/test_kafka_security.py."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edge.config import load_config
from edge.contract import ConfigError
from edge.kafka_security import KafkaSecurity, check_security, client_kwargs, diagnose


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_client_kwargs_map_each_protocol_to_kafka_python_arguments() -> None:
    assert client_kwargs(KafkaSecurity()) == {"security_protocol": "PLAINTEXT"}
    assert client_kwargs(KafkaSecurity("SSL", ssl_cafile="/ca.pem", ssl_certfile="/c.pem", ssl_keyfile="/k.pem",
                                       ssl_check_hostname=False)) == {
        "security_protocol": "SSL", "ssl_cafile": "/ca.pem", "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem",
        "ssl_check_hostname": False}
    assert client_kwargs(KafkaSecurity("SASL_SSL", sasl_mechanism="SCRAM-SHA-512", username="u", password="p")) == {
        "security_protocol": "SASL_SSL", "ssl_check_hostname": True, "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "u", "sasl_plain_password": "p"}
    plain = client_kwargs(KafkaSecurity("SASL_PLAINTEXT", username="u", password="p"))
    assert plain["sasl_mechanism"] == "PLAIN" and not any(k.startswith("ssl_") for k in plain)
    assert "hunter2" not in repr(KafkaSecurity(password="hunter2"))


def test_agent_kafka_tls_keys_from_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    for name in ("ca.pem", "agent.pem", "agent.key", "other-ca.pem"):
        (tmp_path / "pki" / name).write_text("x")
    path = write(tmp_path, '[kafka]\nsecurity_protocol = "SASL_SSL"\nssl_cafile = "pki/ca.pem"\nssl_certfile = "pki/agent.pem"\n'
                           'ssl_keyfile = "pki/agent.key"\nsasl_mechanism = "SCRAM-SHA-512"\nusername = "gw-1"\n')
    c = load_config(path, env={"EDGEWATCH_KAFKA__PASSWORD": "s3cret"})
    assert (c.kafka.ssl_cafile, c.kafka.ssl_keyfile) == (str(tmp_path / "pki" / "ca.pem"), str(tmp_path / "pki" / "agent.key"))
    assert client_kwargs(c.kafka)["sasl_plain_password"] == "s3cret" and c.describe()["kafka"]["password"] == "***"
    c = load_config(path, env={"EDGEWATCH_KAFKA__PASSWORD": "s3cret", "EDGEWATCH_KAFKA__SSL_CAFILE": str(tmp_path / "pki" / "other-ca.pem"),
                               "EDGEWATCH_KAFKA__SSL_CHECK_HOSTNAME": "false"})
    assert c.kafka.ssl_cafile == str(tmp_path / "pki" / "other-ca.pem") and c.kafka.ssl_check_hostname is False


@pytest.mark.parametrize(("text", "env", "key", "detail"), [
    ('security_protocol = "SSL"\nssl_cafile = "missing.pem"\n', {}, "kafka.ssl_cafile", "no such file"),
    ('security_protocol = "SSL"\n', {"EDGEWATCH_KAFKA__SSL_CERTFILE": "nope.pem"}, "kafka.ssl_certfile", "no such file"),
    ('ssl_cafile = "ca.pem"\n', {}, "kafka.ssl_cafile", "'kafka.security_protocol' is 'PLAINTEXT'"),
    ('security_protocol = "SSL"\nssl_keyfile = "ca.pem"\n', {}, "kafka.ssl_keyfile", "without 'kafka.ssl_certfile'"),
    ('security_protocol = "SASL_SSL"\n', {"EDGEWATCH_KAFKA__PASSWORD": "p"}, "kafka.username", "must be set"),
    ('security_protocol = "SASL_PLAINTEXT"\nusername = "u"\n', {}, "kafka.password", "EDGEWATCH_KAFKA__PASSWORD"),
    ('security_protocol = "TLS"\n', {}, "kafka.security_protocol", "must be one of"),
    ('sasl_mechanism = "SCRAM-SHA-1"\n', {}, "kafka.sasl_mechanism", "must be one of"),
    ('security_protocol = "SASL_SSL"\nusername = "u"\npassword = "in-the-file"\n', {}, "kafka.password", "environment only"),
])
def test_bad_kafka_security_settings_name_the_file_and_key(tmp_path: Path, text: str, env: dict[str, str], key: str,
                                                            detail: str) -> None:
    (tmp_path / "ca.pem").write_text("x")
    path = write(tmp_path, "[kafka]\n" + text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env=env)
    assert str(path) in str(err.value) and key in str(err.value) and detail in str(err.value)


def test_check_security_resolves_against_the_base_and_leaves_plaintext_alone(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    sec = check_security(KafkaSecurity("SSL", ssl_cafile="ca.pem"), section="kafka", where="w", base=tmp_path)
    assert sec.ssl_cafile == str(tmp_path / "ca.pem")
    assert check_security(KafkaSecurity(), section="kafka", where="w") == KafkaSecurity()


def test_diagnose_names_an_unreachable_broker_without_raising() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    text = diagnose(f"127.0.0.1:{port},127.0.0.1:1", KafkaSecurity("SSL"), timeout_s=2)
    assert text.startswith(f"cannot reach 127.0.0.1:{port}") and "ConnectionRefused" in text
    assert diagnose("no-port", KafkaSecurity()).startswith("cannot reach no-port")
