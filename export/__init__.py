"""The exporter room: a trained run directory -> a model repository version (per-stage ONNX
segments, gated exit heads, manifest, parity check), and the demo build that does it for the
committed runs. Everything it writes is defined by `dynadapter.contract`."""
