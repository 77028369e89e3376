"""Where a retraining's data comes from: labelled incidents from the processor's store, and
archived telemetry windows from the processor's Parquet archive. Both read-only."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cloud.processor.config import StoreSection
from cloud.retrain.dataset import ArchivedWindow, LabelledIncident
from edge.contract import ConfigError

log = logging.getLogger(__name__)


def labelled_incidents(section: StoreSection) -> list[LabelledIncident]:
    """Device and fleet incidents an operator labelled (drift incidents are not faults of a window)."""
    from cloud.processor.backends import open_store

    if section.backend == "sqlite" and not Path(section.sqlite_path).exists():
        raise ConfigError(f"--store {section.sqlite_path}: no such SQLite file")
    store = open_store(section, migrate=False)
    try:
        rows = store.incidents(limit=10_000_000)
    finally:
        store.close()
    out = [LabelledIncident(r.incident_id, r.label, r.device_ids, float(r.opened_at), float(max(r.last_event_at, r.opened_at)))
           for r in rows if r.label in ("true_positive", "false_positive") and r.kind in ("incident", "fleet_incident")]
    log.info("retrain_labels_loaded incidents=%d true_positive=%d", len(out), sum(i.label == "true_positive" for i in out))
    return out


def store_section(spec: str) -> StoreSection:
    """``--store``: a PostgreSQL DSN (``postgresql://...`` or ``host=... dbname=...``) or a SQLite file path."""
    if spec.startswith(("postgres://", "postgresql://")) or "dbname=" in spec:
        return StoreSection(backend="postgres", postgres_dsn=spec)
    return StoreSection(backend="sqlite", sqlite_path=spec)


def read_archive(root: Path, *, since: float | None = None, until: float | None = None,
                 devices: Sequence[str] | None = None) -> list[ArchivedWindow]:
    """Every window of the processor's telemetry archive (:mod:`cloud.processor.archive`: Parquet,
    ``device_id=<device>/date=<YYYY-MM-DD>/*.parquet``) that ends at or after ``since`` and starts
    before ``until`` (event time, seconds). Day folders wholly outside the range are not opened.
    Raises :class:`ConfigError` when ``root`` does not exist or a file is not an archive file."""
    import pyarrow.parquet as pq

    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--archive {root}: no such directory")
    filters = [f for f in (("window_end", ">=", since) if since is not None else None,
                           ("window_start", "<", until) if until is not None else None) if f is not None]
    out: list[ArchivedWindow] = []
    files = 0
    for path in _files(root, since, until, devices):
        try:
            table = pq.read_table(path, columns=list(_COLUMNS), filters=filters or None, partitioning=None)
        except (OSError, ValueError, KeyError) as exc:  # pyarrow: ArrowInvalid is a ValueError
            raise ConfigError(f"{path}: not a telemetry archive file ({exc})") from None
        files += 1
        out.extend(_windows(table))
    log.info("retrain_archive_read root=%s files=%d windows=%d", root, files, len(out))
    return out


_COLUMNS = ("device_id", "channels", "ts", "values", "score", "threshold", "anomalous", "model_sha256")
_PARTS = re.compile(r"^device_id=(?P<device>[^/]+)/date=(?P<day>\d{4}-\d{2}-\d{2})/")


def _files(root: Path, since: float | None, until: float | None, devices: Sequence[str] | None) -> Iterator[Path]:
    for path in sorted(root.glob("device_id=*/date=*/*.parquet")):
        m = _PARTS.match(path.relative_to(root).as_posix())
        if m is None:
            continue
        day = dt.datetime.strptime(m["day"], "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()
        # the day folder is the window's start day: a window starting late on the day before may end after since
        if (since is not None and day + 86400 + 3600 < since) or (until is not None and day >= until):
            continue
        if devices is not None and m["device"] not in devices:
            continue
        yield path


def _windows(table: Any) -> Iterator[ArchivedWindow]:
    """Rows of an archive table as windows; the nested lists are flattened once per table, not per value."""
    n = table.num_rows
    if n == 0:
        return
    ts_col = table.column("ts").combine_chunks()
    ts_all = ts_col.flatten().to_numpy(zero_copy_only=False)
    ts_off = ts_col.offsets.to_numpy() - ts_col.offsets[0].as_py()
    rows_all = table.column("values").combine_chunks().flatten()  # one list per row of a window
    values_all = rows_all.flatten().to_numpy(zero_copy_only=False)
    row_off = rows_all.offsets.to_numpy() - rows_all.offsets[0].as_py()
    values_col = table.column("values").combine_chunks()
    values_off = values_col.offsets.to_numpy() - values_col.offsets[0].as_py()
    cols = {c: table.column(c).to_pylist() for c in ("device_id", "channels", "score", "threshold", "anomalous", "model_sha256")}
    for i in range(n):
        channels = tuple(cols["channels"][i])
        ts = ts_all[ts_off[i]:ts_off[i + 1]]
        first, last = values_off[i], values_off[i + 1]
        flat = values_all[row_off[first]:row_off[last]]
        if len(ts) == 0 or last - first != len(ts) or len(flat) != len(ts) * len(channels):
            log.warning("retrain_archive_row_skipped device=%s reason=shape", cols["device_id"][i])
            continue
        yield ArchivedWindow(device_id=cols["device_id"][i], channels=channels, ts=ts.astype(np.float64),
                             values=flat.reshape(len(ts), len(channels)).astype(np.float64), score=float(cols["score"][i]),
                             threshold=float(cols["threshold"][i]), anomalous=bool(cols["anomalous"][i]),
                             model_sha256=cols["model_sha256"][i] or "")
