"""``edgewatch stack up | down | status | fetch``: the local Mosquitto + Kafka for development."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from cloud import stack
from edge.cliutil import EXIT_FAILURE, EXIT_OK, add_flag


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "stack", help="run the local brokers (Mosquitto, Kafka KRaft) on loopback",
        description="Start, stop or inspect the local development stack: Mosquitto from Debian's package and "
                    "a single-node Kafka (KRaft) assembled from Maven Central jars, on 127.0.0.1 only. "
                    "`up` returns once both brokers accept connections and leaves them running.",
    )
    p.add_argument("action", choices=["up", "down", "status", "fetch"],
                   help="up: start and print addresses; down: stop; status: show; fetch: only resolve the Kafka jars")
    add_flag(p, "--stack-dir", default=str(stack.cache_dir() / "stack"), help="state folder (configs, data, logs)")
    add_flag(p, "--mqtt-port", type=int, help="Mosquitto port (default: a free port)")
    add_flag(p, "--kafka-port", type=int, help="Kafka port (default: a free port)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    state = Path(args.stack_dir)
    if args.action == "fetch":
        print(f"kafka jars: {stack.ensure_kafka_jars()}")
        return EXIT_OK
    if args.action == "down":
        stopped = stack.stop_detached(state)
        print("stopped: " + ", ".join(stopped) if stopped else "no stack was running")
        return EXIT_OK
    info = stack.load_info(state)
    if args.action == "status":
        if info is None:
            print("no stack is running (edgewatch stack up)")
            return EXIT_FAILURE
        mq = "up" if stack.port_open(info.mqtt_port) else "DOWN"
        kf = "up" if stack.port_open(int(info.kafka_bootstrap.rsplit(":", 1)[1])) else "DOWN"
        print(f"mqtt   127.0.0.1:{info.mqtt_port}  {mq}  (pid {info.mosquitto_pid})")
        print(f"kafka  {info.kafka_bootstrap}  {kf}  (pid {info.kafka_pid})")
        print(f"logs   {info.state_dir}")
        return EXIT_OK if mq == kf == "up" else EXIT_FAILURE
    if info is not None and stack.pid_alive(info.kafka_pid):
        print(f"already running: mqtt 127.0.0.1:{info.mqtt_port}, kafka {info.kafka_bootstrap}")
        return EXIT_OK
    started = time.monotonic()
    local = stack.LocalStack(state, mqtt_port=args.mqtt_port, kafka_port=args.kafka_port)
    info = local.start()
    print(f"stack ready in {time.monotonic() - started:.1f} s")
    print(f"mqtt   127.0.0.1:{info.mqtt_port}")
    print(f"kafka  {info.kafka_bootstrap}")
    print(f"logs   {state}")
    print("stop with: edgewatch stack down")
    return EXIT_OK
