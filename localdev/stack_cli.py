"""``edgewatch stack up | down | restart | status | fetch``: the local Mosquitto + Kafka for development."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from edge.cliutil import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, add_flag
from localdev import kafka_admin, stack, stack_detached


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "stack", help="run the local brokers (Mosquitto, Kafka KRaft) on loopback",
        description="Start, stop or inspect the local development stack: Mosquitto from Debian's package and "
                    "Kafka (KRaft) assembled from Maven Central jars, a single node or a three-node cluster "
                    "(--brokers 3), on 127.0.0.1 only. "
                    "`up` returns once both brokers accept connections and leaves them running; on a folder "
                    "whose stack is partly alive it starts only what is dead, on the same ports.",
    )
    p.add_argument("action", choices=["up", "down", "restart", "status", "fetch"],
                   help="up: start what is not running and print addresses; down: stop everything up started; "
                        "restart: stop one broker and start it on the same port; status: show; "
                        "fetch: only resolve the Kafka jars")
    p.add_argument("service", nargs="?", choices=list(stack.SERVICE_NAMES), help="the broker to restart (restart only)")
    add_flag(p, "--stack-dir", default=str(default_dir()), help="state folder (configs, data, logs)")
    add_flag(p, "--mqtt-port", type=int, help="Mosquitto port (default: the recorded one, else a free port)")
    add_flag(p, "--kafka-port", type=int, help="Kafka port (default: the recorded one, else a free port)")
    add_flag(p, "--brokers", type=int, choices=[1, 3],
             help="Kafka nodes of a new stack (up only): 1, or 3 for a cluster with replication factor 3 and "
                  "min.insync.replicas 2 (default: the recorded number, else 1)")
    p.set_defaults(func=run)


def default_dir() -> Path:
    return stack.cache_dir() / "stack"


def run(args: argparse.Namespace) -> int:
    state = Path(args.stack_dir).absolute()
    if (args.service is not None) != (args.action == "restart"):
        print("edgewatch stack: name the broker to restart (kafka or mosquitto), and only for restart", file=sys.stderr)
        return EXIT_CONFIG
    if args.action == "fetch":
        print(f"kafka jars: {stack.ensure_kafka_jars()}")
        return EXIT_OK
    if args.action == "down":
        stopped = stack_detached.stop(state)
        print("stopped: " + ", ".join(stopped) if stopped else "no stack was running")
        return EXIT_OK
    if args.action == "status":
        return _status(state)
    started_at = time.monotonic()
    if args.action == "restart":
        info = stack_detached.restart(state, args.service)
        print(f"{args.service} restarted in {time.monotonic() - started_at:.1f} s")
    else:
        info, started = stack_detached.up(state, mqtt_port=args.mqtt_port, kafka_port=args.kafka_port, brokers=args.brokers)
        print(f"started {' and '.join(started)} in {time.monotonic() - started_at:.1f} s" if started else "already running")
    print(f"mqtt   127.0.0.1:{info.mqtt_port}  (pid {info.mosquitto_pid})")
    pids = ", ".join(str(n.pid) for n in info.kafka_nodes) or str(info.kafka_pid)
    print(f"kafka  {info.kafka_bootstrap}  (pid {pids})")
    print(f"logs   {state}")
    where = "" if state == default_dir().absolute() else f" --stack-dir {shlex.quote(str(state))}"
    print(f"stop with: edgewatch stack down{where}")
    return EXIT_OK


def _status(state: Path) -> int:
    info = stack.load_info(state)
    if info is None:
        print("no stack is running (edgewatch stack up)")
        return EXIT_FAILURE
    mq = "up" if stack.port_open(info.mqtt_port) else "DOWN"
    print(f"mqtt   127.0.0.1:{info.mqtt_port}  {mq}  (pid {info.mosquitto_pid})")
    if len(info.kafka_nodes) <= 1:
        kf = "up" if stack.port_open(int(info.kafka_bootstrap.rsplit(":", 1)[1])) else "DOWN"
        print(f"kafka  {info.kafka_bootstrap}  {kf}  (pid {info.kafka_pid})")
        print(f"logs   {info.state_dir}")
        return EXIT_OK if mq == kf == "up" else EXIT_FAILURE
    logging.getLogger("kafka").setLevel(logging.WARNING)  # the admin client's connection chatter
    leader = kafka_admin.quorum_leader(info.kafka_bootstrap)
    states = []
    for node in info.kafka_nodes:
        states.append("up" if stack.port_open(node.port) else "DOWN")
        role = "  quorum leader" if node.node_id == leader else ""
        print(f"kafka-{node.node_id}  127.0.0.1:{node.port}  {states[-1]}  (pid {node.pid}){role}")
    print(f"kafka  {info.kafka_bootstrap}  quorum leader: {f'kafka-{leader}' if leader is not None else 'none'}")
    print(f"logs   {info.state_dir}")
    return EXIT_OK if mq == "up" and set(states) == {"up"} and leader is not None else EXIT_FAILURE
