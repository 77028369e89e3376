"""``edgewatch-agent``: the device side. Runs with only the ``edge`` extra installed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edge import agent_cli, simulate_cli
from edge.cliutil import run_main, setup_logging
from edge.sysinfo import agent_version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgewatch-agent",
        description="edgewatch edge agent: scores MQTT sensor streams with an ONNX model and forwards anomalies to Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"edgewatch-agent {agent_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    agent_cli.register(sub)
    simulate_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run one command; quiet with 141 when the output pipe closes (:func:`edge.cliutil.run_main`)."""
    return run_main(lambda: _run(argv))


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
