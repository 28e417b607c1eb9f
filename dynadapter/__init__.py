"""dyn-adapter: PETL vision transformers with early exits, exported as per-stage ONNX segments and
served with input-adaptive compute. The rooms of this namespace are described in
docs/architecture.md.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dyn-adapter")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0+unknown"
