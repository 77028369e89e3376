"""``edgewatch-agent run --config agent.toml``: the agent as a long-running process.

Exit codes: 0 after SIGTERM or SIGINT and a graceful drain, 2 on a bad configuration, 1 when
the model fails verification or the agent cannot start.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from edge.cliutil import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, add_flag
from edge.contract import ConfigError, EdgewatchError

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "run", help="run the agent: MQTT readings -> windows -> ONNX model -> anomalies to Kafka",
        description="Run the edge agent until SIGTERM. Every config key has an environment twin "
                    "EDGEWATCH_<SECTION>__<KEY> (e.g. EDGEWATCH_MQTT__PORT); secrets (EDGEWATCH_MQTT__PASSWORD, "
                    "EDGEWATCH_KAFKA__PASSWORD) are read from the environment only. See deploy/agent.example.toml.",
    )
    add_flag(p, "--config", env_prefix="AGENT_", default=None, help="TOML config file (none: defaults and environment only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.agent import Agent
    from edge.config import load_config

    try:
        config = load_config(Path(args.config) if args.config else None)
    except ConfigError as exc:
        print(f"edgewatch-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    agent = Agent(config)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        agent.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.start()
    except ConfigError as exc:
        print(f"edgewatch-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (EdgewatchError, OSError) as exc:
        print(f"edgewatch-agent: cannot start: {exc}", file=sys.stderr)
        agent.stop(0)
        return EXIT_FAILURE
    agent.wait()
    left = agent.stop()
    log.info("agent_exit outbox_rows_left=%d", left)
    return EXIT_OK
