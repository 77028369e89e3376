"""A local stack that outlives the command that started it: ``edgewatch stack up | restart | down``.

``<state_dir>/stack.json`` records the ports and the pid of each broker. Every command reads it
and adopts the brokers still alive (:meth:`localdev.stack.Service.adopt`, which refuses a pid the
system has since given to another program), then writes it again with the pid of every broker
running when it returns, also when a start failed. So:

- ``up`` on a folder whose stack is partly alive starts only what is dead, on the recorded ports,
  and never a second Mosquitto on the same persistence folder;
- ``restart NAME`` stops one broker and starts it again on its port and data;
- ``down`` stops every broker ``stack.json`` names, which is every broker these commands started.

A cluster (``up --brokers 3``) records each Kafka node; ``up`` starts the dead nodes together (a
quorum of three elects its leader only once two run), ``restart kafka`` restarts every node.

Not guaranteed: a broker started some other way on the same folder (a :class:`LocalStack` of a
test) is unknown here, and its port makes a start fail with :class:`BrokerUnavailable`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge.contract.errors import BrokerUnavailable, ConfigError
from localdev.stack import LocalStack, ServiceName, StackInfo, ensure_kafka_jars, load_info

log = logging.getLogger(__name__)


def attach(state_dir: Path, *, mqtt_port: int | None = None, kafka_port: int | None = None,
           brokers: int | None = None) -> LocalStack:
    """The stack of ``state_dir`` on the ports ``stack.json`` records, its live brokers adopted.

    A port given for a broker that is alive on another port raises :class:`ConfigError`; for a broker
    that is not running, the given port replaces the recorded one (the first node's, on a cluster).
    ``brokers`` other than the recorded number of Kafka nodes raises :class:`ConfigError`. Starts nothing."""
    info = load_info(state_dir)
    if info is None:
        return LocalStack(state_dir, mqtt_port=mqtt_port, kafka_port=kafka_port, brokers=brokers or 1)
    recorded_kafka_port = int(info.kafka_bootstrap.split(",")[0].rsplit(":", 1)[1])
    nodes = info.kafka_nodes or []
    if brokers is not None and brokers != max(1, len(nodes)):
        raise ConfigError(f"the stack in {state_dir} has {max(1, len(nodes))} Kafka node(s), not {brokers}: "
                          "stop it first (edgewatch stack down) or use another --stack-dir")
    ports: list[tuple[int, int | None]] = [(n.port, n.controller_port) for n in nodes]
    ports = ports or [(recorded_kafka_port, info.kafka_controller_port or None)]
    ports[0] = (kafka_port or ports[0][0], ports[0][1])
    local = LocalStack(state_dir, mqtt_port=mqtt_port or info.mqtt_port, brokers=len(ports), kafka_ports=ports)
    pids = [n.pid for n in nodes] or [info.kafka_pid]
    recorded_ports = [n.port for n in nodes] or [recorded_kafka_port]
    recorded = [(local.mosquitto, info.mosquitto_pid, info.mqtt_port), *zip(local.cluster.nodes, pids, recorded_ports, strict=True)]
    for service, pid, recorded_port in recorded:
        if service.adopt(pid) and service.port != recorded_port:
            raise ConfigError(f"{service.name} of the stack in {state_dir} runs on port {recorded_port} (pid {pid}), "
                              f"not {service.port}: stop it first (edgewatch stack down) or leave the port out")
    return local


def up(state_dir: Path, *, mqtt_port: int | None = None, kafka_port: int | None = None,
       brokers: int | None = None) -> tuple[StackInfo, list[str]]:
    """Start the brokers of ``state_dir`` that are not running (``brokers`` Kafka nodes for a new stack,
    default 1); returns ``stack.json``'s record and the names of the brokers started (empty when all were
    running). Blocks until each is ready.

    Raises :class:`BrokerUnavailable` when a broker does not come up; the brokers this call started
    are stopped again, the ones it found running keep running and stay recorded."""
    local = attach(state_dir, mqtt_port=mqtt_port, kafka_port=kafka_port, brokers=brokers)
    ensure_kafka_jars()
    names = [name for name, service in local.processes() if service.pid is None]
    mosquitto_started = False
    try:
        if local.mosquitto.pid is None:
            local.mosquitto.start()
            mosquitto_started = True
        local.cluster.start()
    except BaseException:
        if mosquitto_started:
            local.mosquitto.stop()
        _record(local)
        raise
    info = _record(local)
    log.info("stack_services_started names=%s kafka=%s state_dir=%s", ",".join(names), info.kafka_bootstrap, state_dir)
    return info, names


def restart(state_dir: Path, name: ServiceName) -> StackInfo:
    """Stop broker ``name`` of the stack in ``state_dir`` (if it runs) and start it again on its port and
    data; returns the new record. Raises :class:`BrokerUnavailable` when there is no stack there or the
    broker does not come up (then it is recorded as not running)."""
    if load_info(state_dir) is None:
        raise BrokerUnavailable(f"no stack in {state_dir}: start it with edgewatch stack up")
    local = attach(state_dir)
    try:
        local.restart(name)
    finally:
        _record(local)
    return local.info()


def stop(state_dir: Path) -> list[str]:
    """Stop every broker ``stack.json`` of ``state_dir`` records and remove it; returns what was stopped."""
    info = load_info(state_dir)
    if info is None:
        return []
    local = attach(state_dir)
    stopped = [f"{name} (pid {service.pid})" for name, service in reversed(local.processes()) if service.pid is not None]
    local.stop()
    (Path(state_dir) / "stack.json").unlink()
    return stopped


def _record(local: LocalStack) -> StackInfo:
    """Save what runs now; a folder where nothing runs keeps no ``stack.json``."""
    if all(service.pid is None for _, service in local.processes()):
        (local.state_dir / "stack.json").unlink(missing_ok=True)
        return local.info()
    return local.save_info()
