"""INT8 calibration: calibration images to explicit Q/DQ ONNX and a TensorRT 10 cache.

Not built yet: see the export and calibration issue.
"""
