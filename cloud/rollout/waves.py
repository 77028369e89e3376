"""Wave membership: agents ranked by a stable hash of their id.

A ``percent`` wave over ``n`` targets holds the ``ceil(percent x n / 100)`` targets of lowest
place, where an agent's place is sha256 of its id (not :func:`hash`, which is salted per
process): the same agents from one run, machine and Python to the next, and cumulative (the
10 % wave's agents are in the 50 % one). The store keeps who was announced, so an agent stays
in its wave even if the fleet changes between two waves.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable


def place(agent_id: str) -> float:
    """The agent's place in [0, 100): the first 8 bytes of sha256(agent id), scaled."""
    return int.from_bytes(hashlib.sha256(agent_id.encode()).digest()[:8], "big") / 2**64 * 100


def wave_members(targets: Iterable[str], percent: float, already: Iterable[str] = ()) -> list[str]:
    """The agents of a ``percent`` wave over ``targets`` plus those ``already`` announced, sorted."""
    ranked = sorted(set(targets), key=lambda a: (place(a), a))
    return sorted(set(ranked[: math.ceil(percent * len(ranked) / 100 - 1e-9)]) | set(already))


def parse_percent(text: str) -> float:
    """``"10%"`` or ``"10"`` -> 10.0; raises ValueError outside (0, 100]."""
    value = float(text.strip().removesuffix("%"))
    if not 0 < value <= 100:
        raise ValueError(f"a wave is a percentage in (0, 100], got {text!r}")
    return value
