"""bench/lab/grpc_load.py against a real server's gRPC port: the rows of lab.load, answers equal to /classify's."""

import asyncio
from pathlib import Path

import httpx
import pytest

from dynadapter.bench.lab import grpc_load, load
from dynadapter.bench.lab.images import BenchImages, multipart_body
from dynadapter.bench.lab.process import free_port
from tests.support.service import serving
from tests.support.tiny_onnx_model import png_bytes

PNGS = [png_bytes(seed) for seed in range(4)]
IMAGES = BenchImages([multipart_body(png) for png in PNGS], [0, 1, 2, 3], "tiny-pngs")


def test_image_of_inverts_the_multipart_body() -> None:
    assert [grpc_load.image_of(body) for body in IMAGES.bodies] == PNGS
    with pytest.raises(ValueError, match="multipart_body"):
        grpc_load.image_of(b"head\r\n\r\nno tail")


@pytest.mark.parametrize("knob", [{"mode": "fast"}, {"threshold": 0.5}], ids=["mode", "threshold"])
def test_grpc_load_gives_the_rows_of_rest_load_and_the_answers_of_classify(model_repo: Path, knob: dict) -> None:
    port = free_port()
    with serving(model_repo, grpc_port=str(port)) as server:
        address = f"127.0.0.1:{port}"
        samples, seconds = asyncio.run(grpc_load.measure(address, "tiny", IMAGES, 2, 6, 30.0, knob))
        answers = asyncio.run(grpc_load.answer_every_image(address, "tiny", IMAGES, 2, knob))
        rest, rest_seconds = asyncio.run(load.measure(f"{server.url}/classify", IMAGES, 2, 6, 30.0))
        expected = [
            httpx.post(f"{server.url}/classify", content=png, headers={"content-type": "image/png"}, params=knob).json()
            for png in PNGS
        ]
    assert len(samples) == 6 and all(s.ok for s in samples) and seconds > 0
    grpc_row = load.summarize("grpc", 2, load.Measured(samples, [(6, seconds)]))
    rest_row = load.summarize("rest", 2, load.Measured(rest, [(6, rest_seconds)]))
    assert set(grpc_row) == set(rest_row) and (grpc_row["requests"], grpc_row["errors"]) == (6, 0)
    by_image = {s.image: s for s in answers}
    assert sorted(by_image) == [0, 1, 2, 3]
    for index, answer in enumerate(expected):
        got = by_image[index].answer
        assert got is not None
        assert (got["class_id"], got["exit"]["index"], got["exit_reason"]) == (
            answer["class_id"],
            answer["exit"]["index"],
            answer["exit_reason"],
        )
        assert got["gflops"]["used"] == pytest.approx(answer["gflops"]["used"], rel=1e-6)
        assert by_image[index].correct == (answer["class_id"] == IMAGES.targets[index])
    summary = load.summarize_answers(answers)
    assert summary["images"] == 4 and summary["errors"] == 0
    assert summary["accuracy"] == sum(a["class_id"] == t for a, t in zip(expected, IMAGES.targets, strict=True)) / 4


def test_compare_measures_rest_and_grpc_on_one_server(model_repo: Path) -> None:
    rows = grpc_load.compare(model_repo, "tiny", IMAGES, [1, 2], 4, 30.0)
    assert [(r["transport"], r["concurrency"]) for r in rows] == [("rest", 1), ("grpc", 1), ("rest", 2), ("grpc", 2)]
    assert all((r["requests"], r["errors"]) == (4, 0) for r in rows)
    assert all(r["variant"] == f"tiny-{r['transport']}" for r in rows)
