"""Segment backends of the runner (service/segment_runner.py): onnxruntime (CPU, CUDA) and OpenVINO (CPU)."""
