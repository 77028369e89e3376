"""Operator commands to one agent over MQTT, signed like model manifests.

``edgewatch incidents label ID --new-normal`` publishes a :class:`DeviceCommand` at QoS 1, not
retained, on ``<prefix>/commands/<agent_id>`` (:func:`command_topic`): the agent named by the
incident's events rebaselines the incident's device. The Ed25519 signature covers
:func:`command_bytes`: every field but the signature, the target agent included, so a command
signed for one agent or device cannot be aimed at another. ``command_id`` (random, 32 hex
digits) and ``issued_at`` let the agent refuse a replay or a stale command
(:mod:`edge.commands`). What the agent did is a status event on ``edgewatch.status``
(:class:`edge.contract.update.ModelStatus`, action ``rebaselined`` or ``command_refused``, with
the ``device_id`` and ``command_id``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from edge.contract import _fields as f
from edge.contract.errors import ContractError
from edge.contract.manifest import Signature
from edge.contract.manifest import _signature as signature_from

COMMAND_SCHEMA = 1
CommandAction = Literal["new_normal"]
COMMAND_ACTIONS: tuple[CommandAction, ...] = ("new_normal",)
COMMAND_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_DOMAIN = b"edgewatch-command\n"  # signed bytes can never be a manifest's canonical bytes
_MAX_COMMAND_BYTES = 4096


def command_topic(agent_id: str, prefix: str = "edgewatch") -> str:
    return f"{prefix}/commands/{f.name(agent_id, 'agent_id')}"


@dataclass(frozen=True)
class DeviceCommand:
    """One operator decision about one device held by one agent."""

    action: CommandAction
    agent_id: str
    device_id: str
    incident_id: str
    issued_at: float
    command_id: str
    signature: Signature | None = None
    schema: int = COMMAND_SCHEMA

    def unsigned(self) -> DeviceCommand:
        return replace(self, signature=None)


def _to_dict(command: DeviceCommand) -> dict[str, Any]:
    data = asdict(command)
    if command.signature is None:
        del data["signature"]
    return data


def command_bytes(command: DeviceCommand) -> bytes:
    """The bytes a signature covers: a domain prefix and the command without its signature, canonical JSON."""
    return _DOMAIN + f.dump_json(_to_dict(command.unsigned()))


def encode_command(command: DeviceCommand) -> bytes:
    return f.dump_json(_to_dict(command))


def decode_command(payload: bytes | str) -> DeviceCommand:
    """Parse a command; raises :class:`ContractError` naming the field. An unsigned command
    decodes (its refusal is the verifier's, with its own reason)."""
    data = f.parse_json(payload, max_bytes=_MAX_COMMAND_BYTES)
    f.schema(data, COMMAND_SCHEMA)
    f.no_extra(data, {"schema", "action", "agent_id", "device_id", "incident_id", "issued_at", "command_id", "signature"}, "")
    action = f.req(data, "action", "")
    if action not in COMMAND_ACTIONS:
        raise ContractError("action", action, f"must be one of {', '.join(COMMAND_ACTIONS)}")
    command_id = f.req(data, "command_id", "")
    if not isinstance(command_id, str) or not COMMAND_ID_RE.match(command_id):
        raise ContractError("command_id", command_id, "must be 32 lowercase hex digits")
    return DeviceCommand(
        action=action, agent_id=f.name(f.req(data, "agent_id", ""), "agent_id"),
        device_id=f.name(f.req(data, "device_id", ""), "device_id"),
        incident_id=f.name(f.req(data, "incident_id", ""), "incident_id"),
        issued_at=f.number(f.req(data, "issued_at", ""), "issued_at", min_value=0.0),
        command_id=command_id, signature=signature_from(data.get("signature")),
    )
