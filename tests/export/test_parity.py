"""Parity against PyTorch, bound relative to the logits: an LP-FT run (probe heads, logits in the hundreds)
exports through `export_run`, and a real mismatch is still refused with its numbers."""

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dynadapter.contract import read_manifest
from dynadapter.errors import ExportError
from dynadapter.export import exporter
from dynadapter.export.exporter import export_run
from dynadapter.export.parity import PARITY_TOLERANCE, chained_onnx_logits, parity_error
from dynadapter.export.precisions import gate_lines
from dynadapter.training.run_dir import load_run
from tests.support.tiny import train_tiny_run
from tests.support.tiny_onnx_model import TinyWeights, write_model_version


@pytest.fixture(scope="module")
def lpft(tmp_path_factory):
    """A tiny LP-FT run (``head_init="probe"``) and its export by `export_run`."""
    root = tmp_path_factory.mktemp("lpft")
    run = train_tiny_run(root / "run", head_init="probe")
    return run, export_run(run, root / "repo", name="lpft")


def segments(folder: Path) -> list[Path]:
    return [folder / f"segment_{k}.onnx" for k in range(4)]


def test_probe_initialised_balanced_heads_export_with_their_linear_path(lpft) -> None:
    # LP-FT: every head carries a linear path beside its own classifier; the segments must compute it too.
    run_dir, folder = lpft
    model = load_run(run_dir).model
    assert [h.linear is not None for h in model.heads] == [True] * 4
    images = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = [t.numpy() for t in model(images)]
        tokens = stage_tokens(model, images)
        without_linear_path = [h.fc(h.features(t)).numpy() for h, t in zip(model.heads[1:3], tokens, strict=True)]
    got = chained_onnx_logits(segments(folder), images.numpy())
    # The probes of a tiny random ViT's features have logits in the hundreds: float32 rounding grows with them.
    for e, g in zip(expected, got, strict=True):
        assert g.shape == (5, 10)
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-4)
    assert all(np.abs(e - g).max() > 1e-2 for e, g in zip(without_linear_path, got[1:3], strict=True))


def test_the_manifest_records_each_exits_difference_beside_its_logit_scale(lpft) -> None:
    _, folder = lpft
    parity = json.loads((folder / "manifest.json").read_text())["parity"]
    diffs, scales = parity["exit_max_abs_diff"], parity["logit_scale"]
    assert len(diffs) == len(scales) == 4 and parity["batch_sizes"] == [1, 5]
    assert parity["max_abs_diff"] == max(diffs) and parity["tolerance"] == PARITY_TOLERANCE
    assert max(scales) > 10  # the case the relative bound is for
    assert all(d <= PARITY_TOLERANCE * max(1.0, s) for d, s in zip(diffs, scales, strict=True))
    assert parity["relative_diff"] == max(d / max(1.0, s) for d, s in zip(diffs, scales, strict=True))


def test_export_prints_the_difference_at_the_scale_of_the_logits(lpft, tmp_path) -> None:
    _, folder = lpft
    manifest = read_manifest(folder / "manifest.json")
    diff, scales = manifest.parity["max_abs_diff"], manifest.parity["logit_scale"]
    assert gate_lines(manifest) == [
        f"fp32 onnx: max |logit diff| vs PyTorch {diff:.1e} at logits up to {max(scales):.3g} "
        "(bound 0.0001 x max(1, |logit|), per exit)"
    ]
    # An export from before the scale was recorded: its bound was absolute.
    older = read_manifest(write_model_version(tmp_path, TinyWeights.random(seed=0)) / "manifest.json")
    assert gate_lines(older) == [
        f"fp32 {runtime}: max |logit diff| vs PyTorch 0.0e+00 (bound 0.0001)" for runtime in ("onnx", "openvino")
    ]


def test_logits_off_by_one_are_refused_though_the_logits_are_large(lpft) -> None:
    run_dir, folder = lpft
    model = load_run(run_dir).model
    seen: list[np.ndarray] = []

    def off_by_one(paths, images):
        seen.append(images)
        return [logits + 1 for logits in chained_onnx_logits(paths, images)]

    parity = parity_error(model, segments(folder), (16, 16), chain=off_by_one)
    assert parity.exit_max_abs_diff == pytest.approx([1.0] * 4, abs=1e-2)
    with torch.no_grad():
        outputs = [model.eval()(torch.from_numpy(images)) for images in seen]
    assert [len(images) for images in seen] == [1, 5]
    assert parity.logit_scale == [max(float(out[k].abs().max()) for out in outputs) for k in range(4)]
    worst = max(range(4), key=lambda k: parity.exit_max_abs_diff[k] / max(1.0, parity.logit_scale[k]))
    message = (
        rf"exported segments differ from PyTorch by {parity.exit_max_abs_diff[worst]:.2e} at exit {worst}, over its "
        rf"bound {PARITY_TOLERANCE * max(1.0, parity.logit_scale[worst]):.2e} \(0.0001 x max\(1, largest \|PyTorch "
        rf"logit\| {parity.logit_scale[worst]:.3g}\)\)"
    )
    with pytest.raises(ExportError, match=message.replace("+", r"\+")):
        parity.check(PARITY_TOLERANCE, "exported segments")


def test_export_refuses_a_segment_whose_weights_differ(lpft, tmp_path, monkeypatch) -> None:
    """The last head's bias moved by 1 in the exported segments: exit 3 is 1 off, far over its bound."""
    run_dir, _ = lpft
    write_segments = exporter.write_segments

    def shifted(model, size, folder, ungated=None):
        broken = copy.deepcopy(model)
        last = [m for m in broken.heads[-1].modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.bias.add_(1.0)
        return write_segments(broken, size, folder, ungated)

    monkeypatch.setattr(exporter, "write_segments", shifted)
    with pytest.raises(ExportError) as refused:
        export_run(run_dir, tmp_path / "repo")
    found = re.fullmatch(
        r"exported segments differ from PyTorch by (\S+) at exit 3, over its bound (\S+) "
        r"\(0.0001 x max\(1, largest \|PyTorch logit\| (\S+)\)\)",
        str(refused.value),
    )
    assert found is not None, str(refused.value)
    diff, bound, scale = (float(x) for x in found.groups())
    assert diff == pytest.approx(1.0, abs=1e-2) and scale > 1
    assert bound == pytest.approx(PARITY_TOLERANCE * scale, rel=1e-2) and bound < diff
    assert not (tmp_path / "repo" / "model" / "1").exists()


def stage_tokens(model, images: torch.Tensor) -> list[torch.Tensor]:
    """The hidden states [B, N, D] that exits 1 and 2 read."""
    x, tokens = images, []
    for k in range(3):
        x, _ = model.forward_stage(k, x)
        tokens.append(x)
    return tokens[1:3]
