"""Small helpers shared by the two command lines (``edgewatch`` and ``edgewatch-agent``).

Every flag has an environment twin (``EDGEWATCH_<FLAG>``) shown in ``--help``; exit codes are
0 on a clean stop, 2 on bad configuration or usage, 1 on a runtime failure.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def add_flag(parser: argparse.ArgumentParser, flag: str, *, help: str, default: Any = None, env_prefix: str = "",
             **kw: Any) -> None:
    """Add ``--flag`` whose default comes from ``EDGEWATCH_<ENV_PREFIX><FLAG>`` when that is set."""
    env = "EDGEWATCH_" + env_prefix + flag.lstrip("-").replace("-", "_").upper()
    value = os.environ.get(env, default)
    if value is not None and kw.get("type") is not None and isinstance(value, str):
        value = kw["type"](value)
    shown = f" (default: {default})" if default is not None else ""
    parser.add_argument(flag, default=value, help=f"{help}{shown} [env: {env}]", **kw)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger; only entry points call this."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
