"""``edgewatch backtest``: replay the telemetry archive through the agent's decision path.

:mod:`~cloud.backtest.replay` streams the archive (:func:`backtest`), :mod:`~cloud.backtest.result`
holds what it counts and the prediction signed into a manifest, :mod:`~cloud.backtest.gate` is the
registration gate (``registry register --archive``, ``retrain``), :mod:`~cloud.backtest.report`
writes the table, ``backtest.json`` and the plot.
"""

from cloud.backtest.replay import backtest
from cloud.backtest.result import BacktestResult

__all__ = ["BacktestResult", "backtest"]
