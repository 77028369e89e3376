"""Model updates over MQTT, and the status events agents report about them.

Distribution reuses the broker the devices already use. The registry publishes, retained at
QoS 1:

- ``<prefix>/models/<group>/announce``: a :class:`ModelAnnounce`: the signed manifest, the
  artifact's size, the chunk size and the sha256 of every chunk;
- ``<prefix>/models/<name>/<version>/chunks/<i>``: the bytes of ``model.onnx``, in chunks.

Because every message is retained, a device that connects late or loses its connection gets
the announce and the chunks again on (re)subscribing; it keeps the chunks it has verified on
disk, so a dropped transfer resumes instead of restarting. The assembled file must match the
manifest's sha256, and the manifest its signature, before anything is loaded.

The announce's size, chunk size and chunk hashes are signed too: the manifest's ``transfer``
holds the size, the chunk size and :func:`chunk_list_sha256` of the chunk hashes, and a device
refuses an announce that differs from them, or whose manifest has no ``transfer``, before it
writes anything. So a replayed trusted manifest cannot declare another size or other chunks.

Every decision an agent makes about a model (``downloaded``, ``refused``, ``shadow_started``,
``promoted``, ``rejected``, ``rolled_back``) is a :class:`ModelStatus` on ``edgewatch.status``;
so is what it does with an operator's command (``rebaselined``, ``command_refused``; see
:mod:`edge.contract.command`), which also names the ``device_id`` and the ``command_id``. Every
``updates.report_interval_s`` an agent also sends a ``report``: its live version and an
:class:`AgentInfo` (runtime, opset, architecture, memory, disk, devices served), what a rollout
needs to choose the agents that can load a bundle.

Besides its group's announce, an agent listens on :func:`agent_announce_topic`, where a rollout
announces a version to that one agent (waves, and the abort that announces the previous version).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from edge.contract import _fields as f
from edge.contract.errors import ContractError
from edge.contract.manifest import ModelManifest, Transfer, decode_manifest, manifest_to_dict

ANNOUNCE_SCHEMA = 1
STATUS_SCHEMA = 1
MAX_CHUNK_BYTES = 256 * 1024
StatusAction = Literal["downloaded", "refused", "shadow_started", "promoted", "rejected", "rolled_back", "loaded",
                       "rebaselined", "command_refused", "report"]
STATUS_ACTIONS: tuple[StatusAction, ...] = ("downloaded", "refused", "shadow_started", "promoted", "rejected",
                                            "rolled_back", "loaded", "rebaselined", "command_refused", "report")


def announce_topic(group: str, prefix: str = "edgewatch") -> str:
    return f"{prefix}/models/{f.name(group, 'group')}/announce"


def agent_announce_topic(group: str, agent_id: str, prefix: str = "edgewatch") -> str:
    """Where a version is announced to one agent of ``group`` (a rollout's wave, or its abort)."""
    return f"{prefix}/models/{f.name(group, 'group')}/agents/{f.name(agent_id, 'agent_id')}/announce"


def chunk_topic(name: str, version: str, index: int, prefix: str = "edgewatch") -> str:
    return f"{prefix}/models/{name}/{version}/chunks/{index}"


def chunk_hashes(data: bytes, chunk_size: int) -> tuple[str, ...]:
    """The sha256 of each ``chunk_size`` slice of ``data``, in order (the last may be shorter)."""
    return tuple(hashlib.sha256(data[i: i + chunk_size]).hexdigest() for i in range(0, len(data), chunk_size))


def chunk_list_sha256(hashes: Sequence[str]) -> str:
    """The sha256 over a chunk list: each chunk's hex sha256 followed by a newline, in order."""
    return hashlib.sha256("".join(h + "\n" for h in hashes).encode("ascii")).hexdigest()


def transfer_of(data: bytes, chunk_size: int = MAX_CHUNK_BYTES) -> Transfer:
    """What a signed manifest says about sending ``data`` (``model.onnx``) in ``chunk_size`` chunks."""
    if not 1 <= chunk_size <= MAX_CHUNK_BYTES:
        raise ContractError("chunk_size", chunk_size, f"must be 1-{MAX_CHUNK_BYTES}")
    return Transfer(len(data), chunk_size, chunk_list_sha256(chunk_hashes(data, chunk_size)))


@dataclass(frozen=True)
class ModelAnnounce:
    manifest: ModelManifest
    size: int
    chunk_size: int
    chunk_sha256: tuple[str, ...]
    schema: int = ANNOUNCE_SCHEMA


def encode_announce(announce: ModelAnnounce) -> bytes:
    return f.dump_json({"schema": announce.schema, "manifest": manifest_to_dict(announce.manifest), "size": announce.size,
                        "chunk_size": announce.chunk_size, "chunk_sha256": list(announce.chunk_sha256)})


def decode_announce(payload: bytes | str) -> ModelAnnounce:
    """Parse an announce; raises :class:`ContractError` naming the field."""
    data = f.parse_json(payload)
    f.schema(data, ANNOUNCE_SCHEMA)
    f.no_extra(data, {"schema", "manifest", "size", "chunk_size", "chunk_sha256"}, "")
    manifest_doc = f.obj(data, "manifest", "")
    try:
        manifest = decode_manifest(f.dump_json(manifest_doc))
    except ContractError as exc:
        raise ContractError(f"manifest.{exc.field}", exc.value, exc.rule, exc.kind) from None
    size = f.integer(f.req(data, "size", ""), "size", min_value=1)
    chunk_size = f.integer(f.req(data, "chunk_size", ""), "chunk_size", min_value=1)
    if chunk_size > MAX_CHUNK_BYTES:
        raise ContractError("chunk_size", chunk_size, f"must be at most {MAX_CHUNK_BYTES}")
    hashes = f.req(data, "chunk_sha256", "")
    expected = -(-size // chunk_size)
    if not isinstance(hashes, list) or len(hashes) != expected:
        raise ContractError("chunk_sha256", hashes, f"must list {expected} chunk hashes for {size} bytes")
    return ModelAnnounce(manifest, size, chunk_size, tuple(f.sha256(h, f"chunk_sha256[{i}]") for i, h in enumerate(hashes)))


@dataclass(frozen=True)
class AgentInfo:
    """What an agent's ``report`` says about the machine it runs on (:func:`edge.sysinfo.agent_info`)."""

    agent_version: str       # edgewatch's version
    onnxruntime: str         # onnxruntime.__version__
    max_opset: int           # highest ai.onnx opset this onnxruntime runs
    arch: str                # platform.machine()
    mem_total_bytes: int
    mem_available_bytes: int
    disk_free_bytes: int     # of updates.state_dir's file system
    devices: int             # sensor devices seen in the last report interval
    group: str               # updates.group
    last_seen: Mapping[str, float] = field(default_factory=dict)
    """Device id -> unix time (the agent's clock) of its last valid payload, for every device the agent
    holds, most recent first, at most :data:`MAX_LAST_SEEN`; absent from the JSON when empty."""


MAX_LAST_SEEN = 1000
_AGENT_FIELDS = tuple(f_.name for f_ in fields(AgentInfo))


@dataclass(frozen=True)
class ModelStatus:
    agent_id: str
    action: StatusAction
    model_name: str
    model_version: str
    reason: str
    at: float
    live_version: str = ""
    schema: int = STATUS_SCHEMA
    device_id: str = ""   # set for a command's status only (absent from a model's: its bytes stay as before)
    command_id: str = ""
    agent: AgentInfo | None = None  # set for a report only (absent from the others: their bytes stay as before)


def encode_status(status: ModelStatus) -> bytes:
    data = {"schema": status.schema, "agent_id": status.agent_id, "action": status.action, "model_name": status.model_name,
            "model_version": status.model_version, "reason": status.reason, "at": status.at, "live_version": status.live_version}
    for optional in ("device_id", "command_id"):
        if getattr(status, optional):
            data[optional] = getattr(status, optional)
    if status.agent is not None:
        data["agent"] = agent = asdict(status.agent)
        if agent["last_seen"]:
            agent["last_seen"] = dict(status.agent.last_seen)
        else:  # absent when empty: a report's bytes stay as before last_seen existed
            del agent["last_seen"]
    return f.dump_json(data)


def decode_status(payload: bytes | str) -> ModelStatus:
    data: dict[str, Any] = f.parse_json(payload)
    f.schema(data, STATUS_SCHEMA)
    f.no_extra(data, {"schema", "agent_id", "action", "model_name", "model_version", "reason", "at", "live_version",
                      "device_id", "command_id", "agent"}, "")
    action = f.req(data, "action", "")
    if action not in STATUS_ACTIONS:
        raise ContractError("action", action, f"must be one of {', '.join(STATUS_ACTIONS)}")
    return ModelStatus(
        agent_id=f.name(f.req(data, "agent_id", ""), "agent_id"), action=action,
        model_name=f.name(f.req(data, "model_name", ""), "model_name"),
        model_version=f.name(f.req(data, "model_version", ""), "model_version"),
        reason=f.text(f.req(data, "reason", ""), "reason", max_len=1000, empty=True),
        at=f.number(f.req(data, "at", ""), "at", min_value=0.0),
        live_version=f.text(data.get("live_version", ""), "live_version", max_len=128, empty=True),
        device_id=f.name(data["device_id"], "device_id") if "device_id" in data else "",
        command_id=f.text(data.get("command_id", ""), "command_id", max_len=64, empty=True),
        agent=None if data.get("agent") is None else _agent_info(data["agent"]),
    )


def _agent_info(value: Any) -> AgentInfo:
    """Decode a report's ``agent`` object; raises :class:`ContractError` naming the field (``agent.devices``)."""
    path = "agent"
    if not isinstance(value, dict):
        raise ContractError(path, value, f"must be an object with {', '.join(_AGENT_FIELDS)}", "wrong_type")
    f.no_extra(value, set(_AGENT_FIELDS), path)

    def text(key: str) -> str:
        return f.text(f.req(value, key, path), f"{path}.{key}", max_len=64)

    def count(key: str, min_value: int = 0) -> int:
        return f.integer(f.req(value, key, path), f"{path}.{key}", min_value=min_value)

    info = AgentInfo(agent_version=text("agent_version"), onnxruntime=text("onnxruntime"), max_opset=count("max_opset", 1),
                     arch=text("arch"), mem_total_bytes=count("mem_total_bytes"), mem_available_bytes=count("mem_available_bytes"),
                     disk_free_bytes=count("disk_free_bytes"), devices=count("devices"),
                     group=f.name(f.req(value, "group", path), f"{path}.group"),
                     last_seen=_last_seen(value.get("last_seen", {}), f"{path}.last_seen"))
    if info.mem_available_bytes > info.mem_total_bytes:
        raise ContractError(f"{path}.mem_available_bytes", info.mem_available_bytes,
                            f"must be at most mem_total_bytes ({info.mem_total_bytes})")
    return info


def _last_seen(value: Any, path: str) -> dict[str, float]:
    """Device id -> unix time, at most :data:`MAX_LAST_SEEN` entries; raises naming ``agent.last_seen.<device>``."""
    if isinstance(value, Mapping) and len(value) > MAX_LAST_SEEN:
        raise ContractError(path, f"<{len(value)} devices>", f"must hold at most {MAX_LAST_SEEN} devices")
    seen = f.number_map(value, path, allow_empty=True)
    for device, at in seen.items():
        if at < 0:
            raise ContractError(f"{path}.{device}", at, "must be >= 0")
    return seen
