"""Evaluation of model families on public benchmarks (SKAB leaderboard protocol, NAB streaming
protocol), computed from what onnxruntime outputs for the exported artifact, never from torch.

Modules: :mod:`~cloud.evaluate.metrics` (point metrics, edges), :mod:`~cloud.evaluate.nab_score`
(the NAB scoring function), :mod:`~cloud.evaluate.protocol` (fit, export, score one file),
:mod:`~cloud.evaluate.skab` and :mod:`~cloud.evaluate.nab` (the two benchmarks),
:mod:`~cloud.evaluate.report` (aggregation over seeds, plots).
"""
