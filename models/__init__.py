"""edgewatch models: PyTorch detector families, training, calibration and ONNX export."""
