"""Retraining: archived telemetry -> fine-tuned candidate -> evaluation gates -> registry, and the drift trigger.

Modules: ``config`` (typed TOML), ``dataset`` (archive windows minus labelled incidents, holdout split),
``evaluate`` (both models through onnxruntime, the gates), ``report`` (JSON + PNG), ``job``
(:func:`~cloud.retrain.job.retrain`, the in-process entry point), ``trigger`` (the drift-alert
consumer with a per-model cool-down). Nothing is imported here: no work at import.
"""
