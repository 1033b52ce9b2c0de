"""Checking what the chip computed: against onnxruntime (compare.py), the run report (report.py), segment by segment (segments.py)."""
