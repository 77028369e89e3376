"""The fleet watch's rows in the processor's store (migration 5 of :mod:`cloud.processor.schema`).

``peer_state`` and ``silence_state`` hold one JSON state per device, ``retired_devices`` the devices an
operator retired (``edgewatch devices retire``), ``fleetwatch_meta`` the peer scorer's progress (last tick,
latest telemetry time). Each function is one statement, or one transaction where it says so, on the calling
thread's :class:`~cloud.processor.store.Store`; the driver's errors pass through.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from cloud.processor.store import Store

STATE_TABLES = {"peer_state": "group_key", "silence_state": "agent_id"}  # table -> its second column


def load_states(store: Store, table: str) -> dict[str, dict[str, Any]]:
    assert table in STATE_TABLES
    return {r[0]: orjson.loads(r[1]) for r in store.execute(f"SELECT device_id, state FROM {table}")}


def save_states(store: Store, table: str, states: Mapping[str, Mapping[str, Any]], devices: Iterable[str],
                dropped: Iterable[str], now: float) -> None:
    """Upsert the states of ``devices`` and delete the rows of ``dropped`` (inside the caller's transaction)."""
    second = STATE_TABLES[table]
    key = "g" if table == "peer_state" else "agent"
    rows = [(d, str(states[d][key]), orjson.dumps(states[d]).decode(), now) for d in sorted(devices) if d in states]
    store.executemany(f"INSERT INTO {table} (device_id, {second}, state, updated_at) VALUES (?, ?, ?, ?) "
                      f"ON CONFLICT (device_id) DO UPDATE SET {second} = excluded.{second}, state = excluded.state, "
                      "updated_at = excluded.updated_at", rows)
    store.executemany(f"DELETE FROM {table} WHERE device_id = ?", [(d,) for d in sorted(set(dropped))])


def retired(store: Store) -> dict[str, tuple[float, str]]:
    """Retired devices: device id -> (retired at, reason)."""
    return {r[0]: (float(r[1]), str(r[2])) for r in store.execute("SELECT device_id, retired_at, reason FROM retired_devices")}


def retire(store: Store, device_id: str, now: float, reason: str) -> bool:
    """Retire a device (one transaction); False if it was retired already."""
    with store.transaction():
        if store.execute("SELECT 1 FROM retired_devices WHERE device_id = ?", (device_id,)):
            return False
        store.execute("INSERT INTO retired_devices (device_id, retired_at, reason) VALUES (?, ?, ?)", (device_id, now, reason))
    return True


def unretire(store: Store, device_id: str) -> bool:
    """Bring a retired device back (one transaction); False if it was not retired."""
    with store.transaction():
        found = bool(store.execute("SELECT 1 FROM retired_devices WHERE device_id = ?", (device_id,)))
        store.execute("DELETE FROM retired_devices WHERE device_id = ?", (device_id,))
    return found


def load_meta(store: Store) -> dict[str, Any]:
    return {r[0]: orjson.loads(r[1]) for r in store.execute("SELECT name, value FROM fleetwatch_meta")}


def save_meta(store: Store, values: Mapping[str, Any]) -> None:
    store.executemany("INSERT INTO fleetwatch_meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                      [(k, orjson.dumps(v).decode()) for k, v in sorted(values.items())])
