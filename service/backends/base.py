"""The one interface the cascade (dynadapter.service.segment_runner) runs segments through.

A backend holds a model's opened segments (segment k ends at exit k) and offers two calls: `run`
segment k on a batch, and `keep` the rows of a hidden state whose images go on. Exit compaction, the
head gate's rule and the FLOPs bookkeeping are the cascade's, the same for every backend.
"""

from typing import Any, Literal, Protocol

import numpy as np

from dynadapter.cpu import usable_cpus

BackendName = Literal["onnxruntime", "openvino"]


def default_threads() -> int:
    """A runtime's threads when the setting intra_op_threads is 0: the cores this process may use
    (dynadapter.cpu.usable_cpus: its affinity mask capped by its cgroup's CPU quota), never the host's.

    All of them, not one less for the event loop and decoding: with idle threads sleeping between batches
    (onnxruntime's spinning off) the runtime leaves those cores whenever it waits. On the demo model on 2 cores
    (`dynadapter bench threads`, 32 clients, balanced) two threads served 106 req/s against one thread's 72 on
    fp32 onnxruntime, and 215 against 169 on int8 OpenVINO; two *spinning* threads served 67.
    """
    return usable_cpus()


class SegmentBackend(Protocol):
    """A model's opened segments on one runtime.

    `run(k, x, need_logits)`: segment k on a batch (x: float32 [B, 3, H, W] for k = 0, else what the
    previous `run` or `keep` returned) -> (hidden, kept where the backend keeps it, or None after the
    last segment; logits float32 [B, C] numpy, or [0, C] where a gated head was skipped). `keep(hidden,
    rows)`: the rows (int positions) of a hidden state whose images go on. Both are called from one
    inference thread at a time.
    """

    @property
    def name(self) -> BackendName: ...

    @property
    def providers(self) -> list[str]:
        """Where the segments run, most preferred first (onnxruntime's providers, or `openvino:CPU`)."""
        ...

    @property
    def device(self) -> str:
        """ "cuda" or "cpu"."""
        ...

    @property
    def num_segments(self) -> int: ...

    def gated(self, k: int) -> bool:
        """True when segment k's exit head runs only if `run` is told `need_logits`."""
        ...

    def run(self, k: int, x: Any, need_logits: bool) -> tuple[Any, np.ndarray]: ...

    def keep(self, hidden: Any, rows: np.ndarray) -> Any: ...
