"""The adaptive layer's state on disk: one SQLite file beside the outbox, a row per device.

Each row is one device's :class:`edge.adaptive.DeviceState` as JSON, keyed by the sha256 of the
model it belongs to: after a restart the agent resumes each device where it was, and after a
model swap the rows of the old model are deleted (the new model starts from its own prior). The
file holds at most the devices the agent holds (``agent.max_devices``): a forgotten device's row
is deleted with the next save.

Durability: ``synchronous=NORMAL`` in WAL mode. A crash loses at most the changes since the last
save (``adaptive.save_interval_s``); losing them only costs a device some learning, never an
event. Worker thread only (the pipeline saves between rounds).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def state_path(outbox_path: Path | str) -> Path:
    """Where the state of the agent whose outbox is ``outbox_path`` lives: beside it."""
    p = Path(outbox_path)
    return p.with_name(f"{p.stem}.adaptive.sqlite")


class AdaptiveStore:
    """Rows of adaptive state per (model, device)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS device_state (model_sha256 TEXT NOT NULL, device_id TEXT NOT NULL, "
                         "state TEXT NOT NULL, PRIMARY KEY (model_sha256, device_id))")

    def load(self, model_sha256: str) -> dict[str, dict[str, Any]]:
        """Every device's row for ``model_sha256``; a row that is not a JSON object is skipped and logged."""
        out: dict[str, dict[str, Any]] = {}
        for device, text in self._db.execute("SELECT device_id, state FROM device_state WHERE model_sha256 = ?", (model_sha256,)):
            try:
                row = json.loads(text)
            except ValueError as exc:
                log.warning("adaptive_state_unreadable device_id=%s error=%s", device, exc)
                continue
            if isinstance(row, dict):
                out[device] = row
        return out

    def save(self, model_sha256: str, rows: Mapping[str, Mapping[str, Any]], gone: Iterable[str] = ()) -> None:
        """Upsert ``rows`` and delete ``gone`` devices for ``model_sha256``, and every row of any
        other model, in one transaction."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM device_state WHERE model_sha256 != ?", (model_sha256,))
            self._db.executemany("DELETE FROM device_state WHERE model_sha256 = ? AND device_id = ?",
                                 [(model_sha256, d) for d in gone])
            self._db.executemany("INSERT OR REPLACE INTO device_state VALUES (?, ?, ?)",
                                 [(model_sha256, d, json.dumps(row, allow_nan=True)) for d, row in rows.items()])

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM device_state").fetchone()[0])

    def close(self) -> None:
        self._db.close()
