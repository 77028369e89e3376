"""Training data readers (CSV with , or ;, NAB CSV, .npy) and windowing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.contract.errors import ConfigError
from models.data import load_rows, make_windows


def test_semicolon_csv_skips_time_column_and_selects_channels(tmp_path: Path) -> None:
    path = tmp_path / "skab.csv"
    path.write_text("datetime;A;B;C\n2020-01-01 00:00:00;1;2;3\n2020-01-01 00:00:01;4;5;6\n")
    rows, names = load_rows(path)
    assert names == ("A", "B", "C") and rows.tolist() == [[1, 2, 3], [4, 5, 6]]
    rows, names = load_rows(path, channels=["C", "A"])
    assert names == ("C", "A") and rows.tolist() == [[3, 1], [6, 4]]
    with pytest.raises(ConfigError, match="not in header"):
        load_rows(path, channels=["D"])


def test_nab_csv_has_one_value_channel(tmp_path: Path) -> None:
    path = tmp_path / "nab.csv"
    path.write_text("timestamp,value\n2014-04-01 00:00:00,20.5\n2014-04-01 00:05:00,21.0\n")
    rows, names = load_rows(path)
    assert names == ("value",) and rows[:, 0].tolist() == [20.5, 21.0]


def test_non_numeric_columns_are_skipped_unless_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text("a,label,b\n1,x,2\n3,y,4\n")
    assert load_rows(path)[1] == ("a", "b")
    with pytest.raises(ConfigError, match="not numeric"):
        load_rows(path, channels=["label"])


def test_npy_one_and_two_dimensional(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.arange(5.0))
    np.save(tmp_path / "two.npy", np.arange(12.0).reshape(4, 3))
    assert load_rows(tmp_path / "one.npy")[0].shape == (5, 1)
    rows, names = load_rows(tmp_path / "two.npy", channels=["ch2"])
    assert names == ("ch2",) and rows[:, 0].tolist() == [2, 5, 8, 11]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_rows(tmp_path / "nope.csv")


def test_make_windows_stride_and_layout() -> None:
    rows = np.arange(20.0).reshape(10, 2)
    w = make_windows(rows, 4, 3)
    assert w.shape == (3, 4, 2) and w.dtype == np.float32
    np.testing.assert_array_equal(w[1], rows[3:7])
    assert make_windows(rows[:3], 4, 1).shape == (0, 4, 2)
