"""Training data in: rows from CSV (``,`` or ``;``), NAB CSV (``timestamp,value``) or ``.npy``;
sliding windows; the training-data fingerprint written to the manifest."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge.contract.errors import ConfigError

_TIME_COLUMNS = {"timestamp", "datetime", "time", "date", "ts"}


def load_rows(path: Path | str, *, channels: Sequence[str] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """``(n, channels)`` float64 rows and the channel names. CSV: the delimiter is detected from
    the header; the time column and non-numeric columns are skipped unless named in ``channels``;
    a NAB file yields one channel, ``value``. ``.npy``: 1-D or 2-D, channels ``ch0, ch1, ...``."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--data {path}: no such file")
    if path.suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        array = array.reshape(-1, 1) if array.ndim == 1 else array
        if array.ndim != 2:
            raise ConfigError(f"{path}: expected a 1-D or 2-D array, got shape {array.shape}")
        return _select(np.asarray(array, dtype=np.float64), tuple(f"ch{i}" for i in range(array.shape[1])), channels, path)
    with path.open(newline="", encoding="utf-8") as fh:
        header_line = fh.readline()
        delimiter = ";" if header_line.count(";") > header_line.count(",") else ","
        fh.seek(0)
        reader = csv.reader(fh, delimiter=delimiter)
        header = [h.strip() for h in next(reader)]
        body = [row for row in reader if row]
    if not body:
        raise ConfigError(f"{path}: no data rows")
    wanted = list(channels) if channels else [h for h in header if h.lower() not in _TIME_COLUMNS]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ConfigError(f"{path}: channels {missing} not in header {header}")
    columns: list[np.ndarray] = []
    names: list[str] = []
    for name in wanted:
        j = header.index(name)
        try:
            columns.append(np.array([float(row[j]) for row in body]))
            names.append(name)
        except ValueError:
            if channels:
                raise ConfigError(f"{path}: column {name!r} is not numeric") from None
    if not columns:
        raise ConfigError(f"{path}: no numeric columns")
    return np.stack(columns, axis=1), tuple(names)


def _select(array: np.ndarray, names: tuple[str, ...], channels: Sequence[str] | None, path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    if not channels:
        return array, names
    missing = [c for c in channels if c not in names]
    if missing:
        raise ConfigError(f"{path}: channels {missing} not among {names}")
    return array[:, [names.index(c) for c in channels]], tuple(channels)


def make_windows(rows: np.ndarray, window_length: int, stride: int) -> np.ndarray:
    """``(n_windows, window_length, channels)`` float32 copies; the last incomplete window is dropped."""
    rows = np.asarray(rows)
    if len(rows) < window_length:
        return np.empty((0, window_length, rows.shape[1]), dtype=np.float32)
    view = np.lib.stride_tricks.sliding_window_view(rows, window_length, axis=0)[::stride]
    return np.ascontiguousarray(view.transpose(0, 2, 1), dtype=np.float32)


def fingerprint(segments: Sequence[np.ndarray]) -> str:
    """``sha256:<hex>`` over every segment's shape, dtype and bytes, in order."""
    digest = hashlib.sha256()
    for seg in segments:
        arr = np.ascontiguousarray(seg)
        digest.update(f"{arr.dtype.str}{arr.shape}".encode())
        digest.update(arr.tobytes())
    return "sha256:" + digest.hexdigest()
