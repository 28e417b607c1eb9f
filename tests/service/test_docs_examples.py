"""The examples of docs/protocol-oip.md run as written against a real server (the tiny model in place of the
demo's `mnist`): the tritonclient block, and the curl example's JSON body."""

import base64
import json
import re
from pathlib import Path

import httpx
import pytest

from tests.support.service import ROOT, serving
from tests.support.tiny_onnx_model import LABELS, png_bytes

DOC = ROOT / "docs" / "protocol-oip.md"


def test_the_tritonclient_example_classifies_a_batch(
    model_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert re.search(r'^MODEL = "mnist"', block, re.M) and re.search(r"^PHOTOS = \[", block, re.M), (
        "the block defines every name it uses"
    )
    photos = []
    for seed in range(3):
        photos.append(tmp_path / f"{seed}.png")
        photos[-1].write_bytes(png_bytes(seed))
    code = re.sub(r'^MODEL = "mnist".*$', 'MODEL = "tiny"', block, flags=re.M)
    code = re.sub(r"^PHOTOS = \[.*$", f"PHOTOS = {[str(p) for p in photos]!r}", code, flags=re.M)
    with serving(model_repo) as server:
        code = code.replace('"localhost:8000"', repr(server.url.removeprefix("http://")))
        exec(compile(code, str(DOC), "exec"), {})  # noqa: S102
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for line in lines:
        found = re.fullmatch(r"(\d\.\d+):(\d):(\w+) left at exit (\d) after (\d\.\d{3}) GFLOPs", line)
        assert found and LABELS[int(found.group(2))] == found.group(3), line


def test_the_curl_json_example_answers_as_the_doc_shows(model_repo: Path) -> None:
    """The body the doc sends, with the image of its `$IMG`; the answer has the outputs and shapes it shows."""
    text = DOC.read_text()
    (body,) = re.findall(r"-d '(\{.*?\})'\n", text, re.S)
    image = base64.b64encode(png_bytes(0)).decode()
    request = json.loads(body.replace("'$IMG'", image))
    (shown,) = re.findall(r'^    (\{"model_name":"mnist".*?\]\}\]\})$', text, re.S | re.M)
    expected = json.loads(shown)
    with serving(model_repo) as server:
        answer = httpx.post(f"{server.url}/v2/models/tiny/infer", json=request, timeout=30)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert (got["model_name"], got["model_version"]) == ("tiny", "1")
    shapes = [(o["name"], o["shape"], o["datatype"]) for o in got["outputs"]]
    assert shapes == [(o["name"], o["shape"], o["datatype"]) for o in expected["outputs"]]
    top = got["outputs"][0]["data"][0].split(":")
    assert LABELS[int(top[1])] == top[2]
