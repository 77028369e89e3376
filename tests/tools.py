"""Small tools every test module shares: what a test does when a real broker or tool it needs is
missing, how it waits for something a real process does, and a clock it moves by hand."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NoReturn

import pytest


class ManualClock:
    """An injected clock (``clock=`` of the agent, pipeline or processor parts) that stands where the test puts it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason`` locally; under ``CI=true`` fail instead, so CI is never green while testing nothing."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing tool is a failure, not a skip)")
    pytest.skip(reason)


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str, *, every_s: float = 0.1,
             state: Callable[[], object] | None = None) -> None:
    """Poll ``cond`` until true; on timeout, fail naming ``what`` and (if given) what ``state()`` says then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}" + (f"; state: {state()}" if state else ""))
