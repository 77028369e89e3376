"""Training side of edgewatch: PyTorch model families, preprocessing, training, calibration,
ONNX export and the default model zoo. Imports torch; the edge never imports this package.

Public entry points (import them from their modules; nothing happens at import):
``models.fit.fit`` (train a family on rows), ``models.export.write_artifact`` (model.onnx +
manifest.json), ``models.registry.build_family`` / ``family_names``, ``models.config.TrainConfig``.
"""
