"""The compiler's first stage: ONNX in (load.py), calibration (calibrate.py), int8 quantisation (quantize.py)."""
