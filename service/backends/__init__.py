"""Segment backends of the cascade (service/segment_runner.py), one module per runtime, all behind
`base.SegmentBackend`: onnxruntime (CPU, CUDA) in `onnxruntime.py`, OpenVINO (CPU) in `openvino.py`;
`choice.py` picks which one serves a model on this machine."""
