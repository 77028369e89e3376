"""Signed operator commands without a broker: the contract, and every check the agent makes
before a ``new_normal`` reaches the pipeline (delivery over MQTT: tests/cloud/test_new_normal.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.commands import new_normal_command, sign_command
from cloud.keys import generate_keypair, load_private_key
from edge.commands import REFUSALS, CommandReceiver
from edge.config import MqttSection
from edge.contract import ContractError
from edge.contract.command import command_topic, decode_command, encode_command
from edge.contract.update import ModelStatus, decode_status, encode_status
from edge.detector import load_manifest
from edge.signing import load_trusted_keys
from tests.edge.agent_util import TINY_MODEL

NOW = 1_800_000_000.0


class Rig:
    def __init__(self, tmp: Path, adaptive: bool = True) -> None:
        self.key = load_private_key(generate_keypair(tmp / "keys")[0])
        self.other = load_private_key(generate_keypair(tmp / "other")[0])
        self.adaptive = adaptive
        self.rebaselined: list[str] = []
        self.statuses: list[ModelStatus] = []
        self.now = NOW
        manifest = load_manifest(TINY_MODEL)
        self.receiver = CommandReceiver(
            MqttSection(), agent_id="agent-1", trusted_keys=load_trusted_keys(tmp / "keys"),
            rebaseline=self.rebaseline,
            report=self.statuses.append, live=lambda: manifest, max_age_s=600.0, max_skew_s=5.0, clock=lambda: self.now)

    def rebaseline(self, device: str) -> bool:  # what Pipeline.rebaseline does, seen from outside
        if self.adaptive:
            self.rebaselined.append(device)
        return self.adaptive

    def command(self, *, agent: str = "agent-1", device: str = "pump-7", age_s: float = 1.0, key: object = None) -> bytes:
        c = new_normal_command(agent_id=agent, device_id=device, incident_id="inc-1", issued_at=self.now - age_s)
        return encode_command(sign_command(c, key or self.key))  # type: ignore[arg-type]

    def send(self, payload: bytes) -> ModelStatus | None:
        before = len(self.statuses)
        self.receiver.on_payload(payload)
        self.receiver.poll()
        return self.statuses[-1] if len(self.statuses) > before else None


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_a_signed_command_rebaselines_its_device_on_poll_and_reports_it(rig: Rig) -> None:
    payload = rig.command()
    rig.receiver.on_payload(payload)
    assert rig.rebaselined == [] and rig.statuses == []  # paho's thread only queues it
    rig.receiver.poll()
    assert rig.rebaselined == ["pump-7"]
    status = rig.statuses[-1]
    assert (status.action, status.device_id, status.agent_id) == ("rebaselined", "pump-7", "agent-1")
    assert status.command_id == decode_command(payload).command_id and status.model_name == "tiny-zscore"
    assert decode_status(encode_status(status)) == status


def _tampered(payload: bytes) -> bytes:
    doc = json.loads(payload)
    doc["device_id"] = "pump-8"
    return json.dumps(doc).encode()


def _unsigned(payload: bytes) -> bytes:
    doc = json.loads(payload)
    del doc["signature"]
    return json.dumps(doc).encode()


@pytest.mark.parametrize("make, reason", [
    (lambda r: b"not json", "malformed"),
    (lambda r: _unsigned(r.command()), "unsigned"),
    (lambda r: r.command(key=r.other), "unknown_key"),
    (lambda r: _tampered(r.command()), "bad_signature"),
    (lambda r: r.command(agent="agent-2"), "wrong_agent"),
    (lambda r: r.command(age_s=601.0), "stale"),
    (lambda r: r.command(age_s=-6.0), "future"),
])
def test_a_bad_command_is_refused_counted_reported_and_changes_nothing(rig: Rig, make: object, reason: str) -> None:
    status = rig.send(make(rig))  # type: ignore[operator]
    assert status is not None and status.action == "command_refused" and status.reason.startswith(reason + ":")
    assert rig.rebaselined == [] and rig.receiver.refused == {reason: 1} and rig.receiver.applied == 0
    assert reason in REFUSALS


def test_a_replayed_command_is_refused(rig: Rig) -> None:
    payload = rig.command()
    assert rig.send(payload).action == "rebaselined"  # type: ignore[union-attr]
    status = rig.send(payload)
    assert status is not None and status.action == "command_refused" and status.reason.startswith("replayed:")
    assert rig.rebaselined == ["pump-7"]


def test_with_the_adaptive_layer_off_the_command_is_refused(tmp_path: Path) -> None:
    rig = Rig(tmp_path, adaptive=False)
    status = rig.send(rig.command())
    assert status is not None and status.action == "command_refused" and status.reason.startswith("adaptive_off:")


def test_the_signature_binds_every_field(rig: Rig) -> None:
    signed = decode_command(rig.command())
    for change in ({"agent_id": "agent-2"}, {"incident_id": "inc-2"}, {"issued_at": signed.issued_at + 1},
                   {"command_id": "0" * 32}):
        forged = dataclasses.replace(signed, **change)  # type: ignore[arg-type]
        assert rig.send(encode_command(forged)).reason.startswith("bad_signature")  # type: ignore[union-attr]


def test_command_round_trip_and_topic(rig: Rig) -> None:
    payload = rig.command()
    c = decode_command(payload)
    assert encode_command(c) == payload and c.action == "new_normal"
    assert command_topic("agent-1", "site") == "site/commands/agent-1"
    with pytest.raises(ContractError):
        command_topic("a/b")


@pytest.mark.parametrize("patch, field", [
    ({"action": "reboot"}, "action"), ({"command_id": "x"}, "command_id"), ({"device_id": "a/b"}, "device_id"),
    ({"issued_at": "now"}, "issued_at"), ({"schema": 2}, "schema"), ({"extra": 1}, "extra"),
    ({"signature": {"key_id": "k"}}, "signature.value"),
])
def test_a_malformed_command_names_the_field(rig: Rig, patch: dict[str, object], field: str) -> None:
    doc = json.loads(rig.command()) | patch
    with pytest.raises(ContractError) as err:
        decode_command(json.dumps(doc))
    assert err.value.field == field


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(st.text(max_size=12), st.none()
                                                                                              | st.integers() | st.text())))
def test_arbitrary_bytes_raise_only_contract_error(payload: bytes) -> None:
    try:
        decode_command(payload)
    except ContractError:
        pass


def test_a_model_status_keeps_its_bytes() -> None:
    status = ModelStatus(agent_id="a", action="promoted", model_name="m", model_version="2", reason="ok", at=1.0)
    assert b"device_id" not in encode_status(status) and decode_status(encode_status(status)) == status
