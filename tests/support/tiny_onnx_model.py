"""A tiny early-exit model written with onnx.helper (no torch), and its numpy reference.

Segment 0: image [B,3,8,8] -> flatten -> MatMul -> reshape [B,4,16] -> tanh = hidden.
Segment k>0: hidden -> MatMul [16,16] -> tanh. Every exit: logits = mean over tokens @ W + b.
Head weights grow with depth, so later exits are more confident and images spread over exits.
Like the exporter's, the early segments' heads are gated (input `need_logits`, default true).

Also the tests' PNG images: `png_bytes` (random pixels) and `png_header_claiming` (a decompression bomb's header).
"""

import hashlib
import importlib.util
import io
import json
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from dynadapter.export.head_gate import gate_exit_head

#: The OpenVINO backend is tested where openvino is installed (the serving image and `[serve]` have it).
OPENVINO = importlib.util.find_spec("openvino") is not None
IMAGE_SIZE = 8
TOKENS, DIM = 4, 16
NUM_EXITS = 3
NUM_CLASSES = 5
LABELS = ["cat", "dog", "fox", "owl", "yak"]
AFTER_BLOCKS = [2, 4, 6]
HEAD_SCALES = [1.0, 2.0, 4.0]


@dataclass(frozen=True)
class TinyWeights:
    stem: np.ndarray  # [3*8*8, TOKENS*DIM]
    blocks: list[np.ndarray]  # K-1 of [DIM, DIM]
    heads: list[tuple[np.ndarray, np.ndarray]]  # K of ([DIM, C], [C])

    @classmethod
    def random(cls, seed: int = 0) -> "TinyWeights":
        rng = np.random.default_rng(seed)
        stem = rng.normal(0, 0.15, (3 * IMAGE_SIZE * IMAGE_SIZE, TOKENS * DIM)).astype(np.float32)
        blocks = [rng.normal(0, 0.5, (DIM, DIM)).astype(np.float32) for _ in range(NUM_EXITS - 1)]
        heads = [
            (
                rng.normal(0, scale, (DIM, NUM_CLASSES)).astype(np.float32),
                rng.normal(0, 0.1, NUM_CLASSES).astype(np.float32),
            )
            for scale in HEAD_SCALES
        ]
        return cls(stem, blocks, heads)

    def forward_all(self, images: np.ndarray) -> list[np.ndarray]:
        """Logits of every exit for every image (no early exit), float32 like onnxruntime."""
        hidden = np.tanh((images.reshape(len(images), -1) @ self.stem).reshape(-1, TOKENS, DIM))
        logits = [self._head(0, hidden)]
        for k, block in enumerate(self.blocks, start=1):
            hidden = np.tanh(hidden @ block)
            logits.append(self._head(k, hidden))
        return logits

    def _head(self, k: int, hidden: np.ndarray) -> np.ndarray:
        weight, bias = self.heads[k]
        return hidden.mean(axis=1) @ weight + bias


def reference_exits(weights: TinyWeights, images: np.ndarray, thresholds: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(exit, logits) per image: the first exit with max softmax >= threshold (< 1), else the last."""
    all_logits = weights.forward_all(images)
    answers = []
    for i in range(len(images)):
        for k, logits in enumerate(all_logits):
            z = logits[i].astype(np.float64)
            conf = 1.0 / np.exp(z - z.max()).sum()
            last = k == NUM_EXITS - 1
            if last or (thresholds[i, k] < 1 and conf >= thresholds[i, k]):
                answers.append((k, logits[i]))
                break
    return answers


def _head_nodes(k: int, hidden: str, weights: TinyWeights) -> tuple[list, list]:
    weight, bias = weights.heads[k]
    nodes = [
        helper.make_node("ReduceMean", [hidden], [f"pooled{k}"], axes=[1], keepdims=0),
        helper.make_node("MatMul", [f"pooled{k}", f"head_w{k}"], [f"head_mm{k}"]),
        helper.make_node("Add", [f"head_mm{k}", f"head_b{k}"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(weight, f"head_w{k}"), numpy_helper.from_array(bias, f"head_b{k}")]
    return nodes, inits


def build_segment(k: int, weights: TinyWeights, gated: bool = True) -> onnx.ModelProto:
    last = k == NUM_EXITS - 1
    float_t = TensorProto.FLOAT
    if k == 0:
        graph_input = helper.make_tensor_value_info("image", float_t, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])
        nodes = [
            helper.make_node("Flatten", ["image"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "stem"], ["tokens_flat"]),
            helper.make_node("Reshape", ["tokens_flat", "token_shape"], ["pre"]),
        ]
        inits = [
            numpy_helper.from_array(weights.stem, "stem"),
            numpy_helper.from_array(np.array([-1, TOKENS, DIM], np.int64), "token_shape"),
        ]
    else:
        # A middle segment cannot name its input "hidden" too (ONNX names are single-assignment);
        # torch's exporter calls it "hidden.1". The last segment can.
        input_name = "hidden" if last else "hidden.1"
        graph_input = helper.make_tensor_value_info(input_name, float_t, ["batch", TOKENS, DIM])
        nodes = [helper.make_node("MatMul", [input_name, "block"], ["pre"])]
        inits = [numpy_helper.from_array(weights.blocks[k - 1], "block")]
    out_hidden = "last_hidden" if last else "hidden"
    nodes.append(helper.make_node("Tanh", ["pre"], [out_hidden]))
    head_nodes, head_inits = _head_nodes(k, out_hidden, weights)
    outputs = [helper.make_tensor_value_info("logits", float_t, ["batch", NUM_CLASSES])]
    if not last:
        outputs.insert(0, helper.make_tensor_value_info("hidden", float_t, ["batch", TOKENS, DIM]))
    graph = helper.make_graph(nodes + head_nodes, f"segment_{k}", [graph_input], outputs, inits + head_inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if gated and not last:
        model = gate_exit_head(model)
    onnx.checker.check_model(model, full_check=True)
    return model


HEAD_GFLOPS = DIM * NUM_CLASSES / 1e9


def segment_gflops(k: int) -> float:
    body = 3 * IMAGE_SIZE * IMAGE_SIZE * TOKENS * DIM if k == 0 else TOKENS * DIM * DIM
    return body / 1e9 + HEAD_GFLOPS


def manifest_for(segment_hashes: list[str], name: str, version: str, gated: bool = True) -> dict:
    gflops = [segment_gflops(k) for k in range(NUM_EXITS)]
    cumulative = np.cumsum(gflops).tolist()
    return {
        "schema_version": 1,
        "name": name,
        "version": version,
        "created_utc": "2026-11-25T21:00:00Z",
        "labels": LABELS,
        "preprocessing": {
            "size": [IMAGE_SIZE, IMAGE_SIZE],
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "interpolation": "bilinear",
            "color": "RGB",
        },
        "hidden_shape": [TOKENS, DIM],
        "segments": [
            {
                "index": k,
                "file": f"segment_{k}.onnx",
                "sha256": segment_hashes[k],
                "after_block": AFTER_BLOCKS[k],
                "gflops": gflops[k],
                "cumulative_gflops": cumulative[k],
                **({"head_gflops": HEAD_GFLOPS} if gated else {}),
            }
            for k in range(NUM_EXITS)
        ],
        "gflops_full": cumulative[-1],
        "calibration": {
            "split": "val",
            "num_samples": 64,
            "table": [
                {
                    "threshold": t,
                    "accuracy": 0.5 + t / 4,
                    "flops_fraction": t,
                    "gflops": t * cumulative[-1],
                    "exit_fractions": [1 - t, t / 2, t / 2],
                }
                for t in (0.3, 0.6, 0.9)
            ],
            "budgets": [
                {"budget": 0.5, "threshold": 0.3, "accuracy": 0.6, "flops_fraction": 0.45},
                {"budget": 0.8, "threshold": 0.6, "thresholds": [0.55, 0.7], "accuracy": 0.7, "flops_fraction": 0.75},
                {"budget": 1.0, "threshold": 1.0, "accuracy": 0.8, "flops_fraction": 1.0},
            ],
        },
        "modes": {
            "fast": {"threshold": 0.3, "accuracy": 0.6, "flops_fraction": 0.45},
            "balanced": {"threshold": 0.6, "accuracy": 0.7, "flops_fraction": 0.7},
            "accurate": {"threshold": 0.9, "thresholds": [0.95, 0.9], "accuracy": 0.8, "flops_fraction": 0.9},
        },
        "parity": {"max_abs_diff": 0.0, "batch_sizes": [1, 5]},
        "training": {"backbone": "tiny-test", "petl": "adapter", "img_size": IMAGE_SIZE, "exits": AFTER_BLOCKS},
    }


def write_model_version(
    repo: Path, weights: TinyWeights, name: str = "tiny", version: str = "1", gated: bool = True
) -> Path:
    """Write MODEL_REPO/<name>/<version>/ with real segments, sha256s and a calibrated manifest;
    `gated=False` writes the segments of an exporter before exit-head gates (no head_gflops)."""
    folder = repo / name / version
    folder.mkdir(parents=True)
    hashes = []
    for k in range(NUM_EXITS):
        data = build_segment(k, weights, gated).SerializeToString()
        (folder / f"segment_{k}.onnx").write_bytes(data)
        hashes.append(hashlib.sha256(data).hexdigest())
    manifest = manifest_for(hashes, name, version, gated)
    if gated and OPENVINO:
        manifest["precisions"] = {"fp32-openvino": write_openvino_ir(folder, weights, manifest)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def write_openvino_ir(folder: Path, weights: TinyWeights, manifest: dict) -> dict:
    """fp32 OpenVINO IR of the segments (as `dynadapter export --precision` writes them: from the
    segments without head gate) and its manifest entry; calibration and modes are the fp32 ONNX ones,
    since both compute the same logits."""
    import openvino as ov

    segments = []
    for k in range(NUM_EXITS):
        source = folder / f".ungated_{k}.onnx"
        onnx.save(build_segment(k, weights, gated=False), str(source))
        xml = folder / f"segment_{k}.fp32.xml"
        ov.save_model(ov.convert_model(str(source)), str(xml), compress_to_fp16=False)
        source.unlink()
        segments.append(
            {"index": k, "file": xml.name, "sha256": _sha256(xml), "weights": xml.with_suffix(".bin").name}
            | {"weights_sha256": _sha256(xml.with_suffix(".bin"))}
        )
    keep = ("calibration", "modes", "parity")
    return {"precision": "fp32", "runtime": "openvino", "segments": segments, **{key: manifest[key] for key in keep}}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def png_bytes(seed: int, size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE), mode: str = "RGB") -> bytes:
    """A random PNG image (width, height) = size."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height pixels, with a few bytes of data: a bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def write_escaping_layout(root: Path, weights: TinyWeights) -> Path:
    """`root/repo`, a model repository serving tiny/1, with canaries outside it that no name may reach:
    root/1 (what `..` would name), root/outside/1, the model link repo/escape -> root/outside and the
    version link repo/tiny/7 -> root/outside/1. Returns the repository."""
    repo = root / "repo"
    write_model_version(repo, weights, "tiny", "1")
    write_model_version(root, TinyWeights.random(seed=3), "outside", "1")
    staged = write_model_version(root / "staging", TinyWeights.random(seed=3), "canary", "1")
    shutil.move(staged, root / "1")
    (repo / "escape").symlink_to(root / "outside", target_is_directory=True)
    (repo / "tiny" / "7").symlink_to(root / "outside" / "1", target_is_directory=True)
    return repo
