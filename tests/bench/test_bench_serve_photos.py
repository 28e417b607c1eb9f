"""`dynadapter bench serve --photos` on a tiny run and a small photo set: every part is measured and reported.

A benchmark, not a performance test: nothing here asserts a timing.
"""

import json
from pathlib import Path
from typing import Any

import pytest

from dynadapter.bench.lab.photo_corpus import camera_set
from dynadapter.bench.serving import photos as serve_photos
from tests.support.bench import bench, serve_args
from tests.support.tiny import train_tiny_run

CONCURRENCY = (1, 2)
REQUESTS = 6


@pytest.fixture(scope="module")
def photo_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("bench_photos")
    run = train_tiny_run(root / "run")
    docs = root / "docs"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serve_photos, "camera_photos", lambda: camera_set(scale=0.05))
        patch.setattr(serve_photos, "CAMERA_SIZE", (200, 150))
        bench(*serve_args(run, docs, CONCURRENCY, REQUESTS, images=8), "--photos")
    return json.loads((docs / "results.json").read_text())["serve_photos"], docs


def test_every_server_answers_every_photo_request(photo_results: tuple[dict[str, Any], Path]) -> None:
    section, _ = photo_results
    rows = {(r["workload"], r["variant"], r["concurrency"]): r for r in section["servers"]}
    expected = {(w, s, c) for w in serve_photos.WORKLOADS for s in ("balanced", "litserve-plain") for c in CONCURRENCY}
    assert set(rows) == expected
    for row in rows.values():
        assert (row["requests"], row["errors"]) == (REQUESTS, 0), row
    assert all(peak > 0 for peak in section["peak_rss_bytes"].values())


def test_decoders_accuracy_and_page(photo_results: tuple[dict[str, Any], Path]) -> None:
    section, docs = photo_results
    ms = section["decoders"]["ms"]
    assert set(ms) == {"jpeg-12mp", "jpeg-2mp", "png-12mp", "heic-12mp", "png-small"}
    assert all(row["service"] > 0 and row["plain-pillow"] > 0 and row["service-cpu"] > 0 for row in ms.values())
    for jpeg in ("jpeg-12mp", "jpeg-2mp"):
        assert {"simplejpeg-scaled", "pillow-draft", "pyvips-shrink"} <= set(ms[jpeg])
    assert "pillow-draft" not in ms["png-small"] and section["decoders"]["compute_ms"] > 0
    assert section["jpeg_decoder"] == serve_photos.JPEG_DECODER
    accuracy = section["accuracy"]
    assert accuracy["images"] == 8 and 0 <= accuracy["small-png"] <= 1 and 0 <= accuracy["camera-jpeg-12mp"] <= 1
    targets = {check["target"]: check for check in section["targets"]}
    assert "12 MP JPEG decode / full-depth compute" in targets
    ratio = targets["p50 balanced, 12 MP JPEG / small PNG, 1 client"]
    rows = {(r["workload"], r["variant"], r["concurrency"]): r for r in section["servers"]}
    p50 = rows[("jpeg-12mp", "balanced", 1)]["p50_ms"] / rows[("png-small", "balanced", 1)]["p50_ms"]
    assert (ratio["ratio"], ratio["bound"], ratio["met"]) == (p50, 2.0, p50 <= 2.0)
    page = (docs / "results.md").read_text()
    assert "## Serving camera photos" in page
    assert "| photo | bytes | service | full-resolution | plain-pillow | simplejpeg-scaled | service CPU | " in page
    assert f"The service decodes JPEGs with {serve_photos.JPEG_DECODER}: " in page
    assert "p50 balanced, 12 MP JPEG / small PNG, 1 client: " in page


def test_a_photo_section_renders_as_it_was_written() -> None:
    """The page of the committed results renders byte for byte from the row models."""
    from tests.support.service import ROOT

    results = json.loads((ROOT / "docs" / "results.json").read_text())
    page = serve_photos.render_markdown(results)
    assert page.startswith("## Serving camera photos") and page in (ROOT / "docs" / "results.md").read_text()


def test_a_missed_jpeg_over_png_target_says_why_with_its_floor() -> None:
    """The miss is explained by the numbers of the same section: the fastest scaled decode over the small PNG's p50."""
    from tests.support.service import ROOT

    results = json.loads((ROOT / "docs" / "results.json").read_text())
    section = results["serve_photos"]
    png = next(
        r["p50_ms"]
        for r in section["servers"]
        if (r["workload"], r["variant"], r["concurrency"]) == ("png-small", "balanced", 1)
    )
    decoders = section["decoders"]["ms"]["jpeg-12mp"]
    decode = min(decoders[k] for k in ("service", "simplejpeg-scaled", "pillow-draft", "pyvips-shrink"))
    missed = [t for t in section["targets"] if t["target"].startswith("p50 balanced, 12 MP JPEG") and not t["met"]]
    page = serve_photos.render_markdown(results)
    why = f"could not fall below {(decode + png) / png:.2f} (bound 2)"
    assert (why in page) == bool(missed)
