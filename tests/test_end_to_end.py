"""The whole product path: train a tiny model, export it, serve it with real uvicorn, classify images."""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from dynadapter.bench.lab.process import ServerProcess
from dynadapter.export.exporter import export_run
from dynadapter.training.data import load_raw
from tests.support.tiny import train_tiny_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("e2e")
    run = train_tiny_run(root / "run", epochs=3)
    export_run(run, root / "repo", name="demo", version="1")
    server = ServerProcess(
        "end-to-end",
        [sys.executable, "-m", "dynadapter", "serve", "--model-repo", str(root / "repo"), "--host", "127.0.0.1"],
        cwd=ROOT,
    )
    try:
        server.wait_ready(timeout_s=90)
        yield server.url
    finally:
        server.stop()


def digit_images(n: int) -> list[Image.Image]:
    raw = load_raw("builtin:digits").splits["test"]
    return [Image.fromarray(p).resize((32, 32)) for p in raw.pixels[:n]]


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


def counters(base: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(snapshot: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lbl), v in snapshot.items() if n == name and all((k, labels[k]) in lbl for k in labels))


def test_classify_png_and_jpeg_with_all_response_fields(server: str) -> None:
    img = digit_images(1)[0]
    multipart = httpx.post(f"{server}/classify", files={"file": ("d.png", encode(img, "PNG"), "image/png")})
    raw = httpx.post(f"{server}/classify?top_k=3", content=encode(img, "JPEG"), headers={"content-type": "image/jpeg"})
    for r in (multipart, raw):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "demo" and body["version"] == "1"
        assert body["label"] == str(body["class_id"]) and 0 <= body["confidence"] <= 1
        assert body["exit"]["count"] == 4 and body["exit"]["after_block"] == body["exit"]["index"] + 1
        g = body["gflops"]
        assert math.isclose(g["used"] + g["saved"], g["full"], rel_tol=1e-9)
        assert body["latency_ms"] > 0
    top = raw.json()["top_k"]
    assert len(top) == 3 and top[0]["class_id"] == raw.json()["class_id"]
    assert [t["confidence"] for t in top] == sorted((t["confidence"] for t in top), reverse=True)


def test_threshold_zero_leaves_at_the_first_exit_and_one_runs_to_the_end(server: str) -> None:
    data = encode(digit_images(1)[0], "PNG")
    first = httpx.post(f"{server}/classify?threshold=0", content=data, headers={"content-type": "image/png"}).json()
    last = httpx.post(f"{server}/classify?threshold=1", content=data, headers={"content-type": "image/png"}).json()
    assert first["exit"]["index"] == 0 and first["gflops"]["saved"] > 0
    # Threshold 1 runs every block but no early exit head: those are what it saves.
    exits = httpx.get(f"{server}/v1/models").json()["models"][0]["exits"]
    early_heads = sum(e["head_gflops"] for e in exits[:-1])
    assert last["exit"]["index"] == 3 and early_heads > 0
    assert last["gflops"]["saved"] == pytest.approx(early_heads)
    assert last["gflops"]["used"] == pytest.approx(last["gflops"]["full"] - early_heads)


def test_metrics_move_by_exactly_the_images_posted(server: str) -> None:
    images = digit_images(7)
    before = counters(server)
    responses = [
        httpx.post(f"{server}/classify", content=encode(i, "PNG"), headers={"content-type": "image/png"})
        for i in images
    ]
    after = counters(server)
    assert all(r.status_code == 200 for r in responses)
    delta = {
        n: total(after, n) - total(before, n)
        for n in (
            "dynadapter_requests_total",
            "dynadapter_exits_total",
            "dynadapter_flops_used_total",
            "dynadapter_flops_saved_total",
        )
    }
    assert delta["dynadapter_requests_total"] == 7 and delta["dynadapter_exits_total"] == 7
    used = sum(r.json()["gflops"]["used"] for r in responses) * 1e9
    saved = sum(r.json()["gflops"]["saved"] for r in responses) * 1e9
    assert delta["dynadapter_flops_used_total"] == pytest.approx(used, rel=1e-6)
    assert delta["dynadapter_flops_saved_total"] == pytest.approx(saved, rel=1e-6)
    per_exit = np.bincount([r.json()["exit"]["index"] for r in responses], minlength=4)
    for k in range(4):
        assert (
            total(after, "dynadapter_exits_total", exit=str(k)) - total(before, "dynadapter_exits_total", exit=str(k))
            == per_exit[k]
        )


@pytest.mark.parametrize(
    ("query", "body", "ctype", "status"),
    [
        ("", b"", "image/png", 400),
        ("", b"this is not an image", "image/png", 400),
        ("", "truncated", "image/png", 400),
        ("?threshold=2", "png", "image/png", 422),
        ("?threshold=nan", "png", "image/png", 422),
        ("?mode=turbo", "png", "image/png", 422),
        ("?threshold=0.5&mode=fast", "png", "image/png", 422),
        ("", "png", "text/plain", 415),
    ],
)
def test_bad_inputs_get_their_4xx_and_never_a_500(server: str, query: str, body, ctype: str, status: int) -> None:
    png = encode(digit_images(1)[0], "PNG")
    content = {"png": png, "truncated": png[: len(png) // 2]}.get(body, body) if isinstance(body, str) else body
    r = httpx.post(f"{server}/classify{query}", content=content, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"code", "message"}
    assert httpx.get(f"{server}/healthz").status_code == 200  # still alive
