"""A local stack that outlives the command that started it: ``edgewatch stack up | restart | down``.

``<state_dir>/stack.json`` records the ports and the pid of each broker. Every command reads it
and adopts the brokers still alive (:meth:`localdev.stack.Service.adopt`, which refuses a pid the
system has since given to another program), then writes it again with the pid of every broker
running when it returns, also when a start failed. So:

- ``up`` on a folder whose stack is partly alive starts only what is dead, on the recorded ports,
  and never a second Mosquitto on the same persistence folder;
- ``restart NAME`` stops one broker and starts it again on its port and data;
- ``down`` stops every broker ``stack.json`` names, which is every broker these commands started.

Not guaranteed: a broker started some other way on the same folder (a :class:`LocalStack` of a
test) is unknown here, and its port makes a start fail with :class:`BrokerUnavailable`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge.contract.errors import BrokerUnavailable, ConfigError
from localdev.stack import SERVICE_NAMES, LocalStack, ServiceName, StackInfo, ensure_kafka_jars, load_info

log = logging.getLogger(__name__)


def attach(state_dir: Path, *, mqtt_port: int | None = None, kafka_port: int | None = None) -> LocalStack:
    """The stack of ``state_dir`` on the ports ``stack.json`` records, its live brokers adopted.

    A port given for a broker that is alive on another port raises :class:`ConfigError`; for a broker
    that is not running, the given port replaces the recorded one. Starts nothing."""
    info = load_info(state_dir)
    if info is None:
        return LocalStack(state_dir, mqtt_port=mqtt_port, kafka_port=kafka_port)
    recorded_kafka_port = int(info.kafka_bootstrap.rsplit(":", 1)[1])
    local = LocalStack(state_dir, mqtt_port=mqtt_port or info.mqtt_port, kafka_port=kafka_port or recorded_kafka_port,
                       controller_port=info.kafka_controller_port or None)
    for service, pid, recorded in ((local.mosquitto, info.mosquitto_pid, info.mqtt_port),
                                   (local.kafka, info.kafka_pid, recorded_kafka_port)):
        if service.adopt(pid) and service.port != recorded:
            raise ConfigError(f"{service.name} of the stack in {state_dir} runs on port {recorded} (pid {pid}), "
                              f"not {service.port}: stop it first (edgewatch stack down) or leave the port out")
    return local


def up(state_dir: Path, *, mqtt_port: int | None = None, kafka_port: int | None = None) -> tuple[StackInfo, list[ServiceName]]:
    """Start the brokers of ``state_dir`` that are not running; returns ``stack.json``'s record and the
    names of the brokers started (empty when all were running). Blocks until each is ready.

    Raises :class:`BrokerUnavailable` when a broker does not come up; the brokers this call started
    are stopped again, the ones it found running keep running and stay recorded."""
    local = attach(state_dir, mqtt_port=mqtt_port, kafka_port=kafka_port)
    ensure_kafka_jars()
    started: list[ServiceName] = []
    try:
        for name in SERVICE_NAMES:
            service = local.service(name)
            if service.pid is None:
                service.start()
                started.append(name)
                log.info("stack_service_started name=%s port=%d pid=%s state_dir=%s", name, service.port, service.pid, state_dir)
    except BaseException:
        for name in started:
            local.service(name).stop()
        _record(local)
        raise
    return _record(local), started


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
    stopped = []
    for name in reversed(SERVICE_NAMES):
        service = local.service(name)
        if service.pid is not None:
            stopped.append(f"{name} (pid {service.pid})")
            service.stop()
    (Path(state_dir) / "stack.json").unlink()
    return stopped


def _record(local: LocalStack) -> StackInfo:
    """Save what runs now; a folder where nothing runs keeps no ``stack.json``."""
    if local.mosquitto.pid is None and local.kafka.pid is None:
        (local.state_dir / "stack.json").unlink(missing_ok=True)
        return local.info()
    return local.save_info()
