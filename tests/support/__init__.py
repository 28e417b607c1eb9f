"""What the tests share, and nothing else: no test module imports another (tests/test_layout.py holds it).

- ``service``: the service as the tests drive it (readiness, /metrics samples, the JSON error shape, a real
  server process);
- ``stand_ins``: a runner's slow segments and a gated cascade;
- ``tiny_onnx_model``: the tiny model repository written without torch, and PNG images;
- ``tiny``: tiny timm ViTs and a real tiny run directory;
- ``folders``: image folders as users have them, and tiny training options;
- ``bench``: ``dynadapter bench ...`` with the tiny flags;
- ``k8s``: the Kubernetes versions the manifests are validated against.
"""
