"""Affectline calibration data: real person/scene view pairs for INT8 quantization."""
