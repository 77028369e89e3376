"""Announcing a rollout's waves, and its abort, over MQTT (retained, QoS 1).

A wave below 100 % announces the candidate on each wave agent's own topic
(:func:`~edge.contract.update.agent_announce_topic`) while the group announce keeps the
production version, so an agent outside the wave never sees the candidate. The 100 % wave puts
the candidate on the group announce (the agents skipped get it too: they refuse it by their own
checks for onnxruntime, opset and disk, not memory), makes it production in the registry, and clears the
per-agent announces (an empty retained payload). Chunks go first, announces last, as in
:mod:`cloud.distribute`. An abort announces the previous version on the wave agents' topics:
the agent swaps a version it ran before back in without a trial (:mod:`edge.modelswap`).

Targets are the agents of the group that reported to the store (the group is in their
:class:`~edge.contract.update.AgentInfo`: an agent that sends no report is not a target); one
whose report says it cannot load the bundle (:func:`cloud.rollout.compat.refusal`) is skipped
with the reason, and a bundle no target can load is refused (:class:`ConfigError`).
Functions block on the broker and the store; :class:`BrokerUnavailable` when the broker does
not acknowledge.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from types import SimpleNamespace

from cloud.distribute import build_announce, publish_messages
from cloud.processor.store import Store
from cloud.registry import Registry
from cloud.rollout import state
from cloud.rollout.compat import refusal
from cloud.rollout.waves import wave_members
from edge.contract import ConfigError, ModelManifest
from edge.contract.update import agent_announce_topic, announce_topic, chunk_topic, encode_announce

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Broker:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "edgewatch"
    username: str | None = None
    password: str | None = None
    tls_ca_file: str | None = None

    def publish(self, messages: list[tuple[str, bytes]], client_id: str) -> None:
        publish_messages(messages, host=self.host, port=self.port, client_id=client_id, retain=True,
                         username=self.username, password=self.password, tls_ca_file=self.tls_ca_file)


def targets(store: Store, group: str, manifest: ModelManifest, model_bytes: int) -> tuple[list[str], dict[str, str]]:
    """The agents of ``group`` that can load the bundle, and those that cannot with the reason."""
    ok, skipped = [], {}
    for agent, report in sorted(state.reports(store, group).items()):
        why = refusal(manifest, model_bytes, SimpleNamespace(**report.info)) if report.info else None
        if why:
            skipped[agent] = why
        else:
            ok.append(agent)
    return ok, skipped


def _bundle(registry: Registry, name: str, version: str, prefix: str) -> tuple[list[tuple[str, bytes]], bytes, ModelManifest, int]:
    """The version's chunk messages, its announce payload, manifest and size."""
    folder = registry.version_dir(name, version)
    announce, chunks = build_announce(folder)
    m = announce.manifest
    return [(chunk_topic(m.name, m.version, i, prefix), c) for i, c in enumerate(chunks)], encode_announce(announce), m, announce.size


def publish_wave(store: Store, registry: Registry, broker: Broker, *, name: str, version: str, group: str, percent: float,
                 now: float | None = None, by: str = "operator") -> state.Rollout:
    """Announce the ``percent`` wave of ``name`` ``version`` to ``group``, starting the rollout if it is new.

    Raises :class:`ConfigError` for a rollout that cannot go on: no production version to compare
    with, a percentage below the last wave's, a rollout aborted or done, no agent of the group
    reported, or no target that can load the bundle (each skipped agent with its reason).
    """
    now = time.time() if now is None else now
    rid = state.rollout_id(group, name, version)
    current = state.rollout(store, rid)
    if current is not None and current.state in ("aborted", "done"):
        raise ConfigError(f"rollout {rid} is {current.state}; register a new version to roll out again")
    if current is not None and percent < current.percent:
        raise ConfigError(f"rollout {rid} is at {current.percent:g}%; a wave cannot shrink it to {percent:g}%")
    previous = current.previous_version if current else registry.stages(name).production
    if previous is None or previous == version:
        raise ConfigError(f"{name} {version}: a wave needs another production version for the rest of the group "
                          f"(production is {previous or 'none'}); publish without --wave")
    chunk_msgs, payload, manifest, size = _bundle(registry, name, version, broker.prefix)
    ok, skipped = targets(store, group, manifest, size)
    if not ok:
        if not skipped:
            raise ConfigError(f"no agent of group {group} has reported to the store; nothing to roll out to")
        raise ConfigError(f"no agent of group {group} can load {name} {version}: "
                          + "; ".join(f"{a}: {why}" for a, why in skipped.items()))
    already = [m.agent_id for m in state.members(store, rid) if m.skipped is None]
    members = wave_members(ok, percent, already)
    new = [a for a in members if a not in already]
    msgs = chunk_msgs if current is None or percent == 100 else []
    if percent < 100:
        msgs += [(agent_announce_topic(group, a, broker.prefix), payload) for a in new]
    else:
        msgs.append((announce_topic(group, broker.prefix), payload))
        msgs += [(agent_announce_topic(group, a, broker.prefix), b"") for a in already]
    broker.publish(msgs, f"edgewatch-rollout-{name}-{version}")  # first: a refused publish leaves no rollout behind
    if current is None:
        state.start_rollout(store, state.Rollout(rid, name, version, previous, group, (), "running", now, now),
                            f"rollout of {name} {version} to group {group} started by {by}, previous version {previous}")
    state.record_wave(store, rid, percent, new, {a: why for a, why in skipped.items() if a not in already}, now,
                      f"{by}: wave {percent:g}% announced to {len(new)} more agents ({len(members)} of {len(ok)} targets, "
                      f"{len(skipped)} skipped)")
    if percent == 100:
        registry.promote(name, version, note=f"rollout {rid} reached 100%")
        state.set_state(store, rid, "done", now, "done", f"{version} announced to the whole group and made production")
    log.info("rollout_wave name=%s version=%s group=%s percent=%g members=%d new=%d skipped=%d", name, version, group, percent,
             len(members), len(new), len(skipped))
    result = state.rollout(store, rid)
    assert result is not None
    return result


def abort(store: Store, registry: Registry, broker: Broker, rollout: state.Rollout, *, now: float | None = None,
          reason: str = "aborted by the operator") -> list[str]:
    """Announce the previous version to the wave's agents and mark the rollout aborted; returns those agents."""
    if rollout.state in ("aborted", "done"):
        raise ConfigError(f"rollout {rollout.rollout_id} is {rollout.state}; nothing to abort")
    now = time.time() if now is None else now
    msgs, payload, _, _ = _bundle(registry, rollout.name, rollout.previous_version, broker.prefix)
    agents = [m.agent_id for m in state.members(store, rollout.rollout_id) if m.skipped is None]
    msgs += [(agent_announce_topic(rollout.group, a, broker.prefix), payload) for a in agents]
    broker.publish(msgs, f"edgewatch-rollout-{rollout.name}-{rollout.version}-abort")
    state.set_state(store, rollout.rollout_id, "aborted", now, "abort",
                    f"{reason}; {rollout.previous_version} announced again to {len(agents)} agents")
    log.warning("rollout_aborted name=%s version=%s group=%s agents=%d", rollout.name, rollout.version, rollout.group, len(agents))
    return agents
