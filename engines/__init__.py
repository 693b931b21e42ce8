"""Affectline engines: ONNX export, INT8 quantization and TensorRT engine builds."""
