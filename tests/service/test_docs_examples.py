"""The tritonclient example of docs/protocol-oip.md runs as written against a real server."""

import re
from pathlib import Path

import pytest

from tests.support.service import ROOT, serving
from tests.support.tiny_onnx_model import LABELS, png_bytes


def test_the_tritonclient_example_classifies_a_batch(
    model_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (block,) = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "protocol-oip.md").read_text(), re.S)
    photos = []
    for seed in range(3):
        photos.append(tmp_path / f"{seed}.png")
        photos[-1].write_bytes(png_bytes(seed))
    with serving(model_repo) as server:
        code = block.replace('"localhost:8000"', repr(server.url.removeprefix("http://")))
        exec(compile(code, "protocol-oip.md", "exec"), {"MODEL": "tiny", "PHOTOS": photos})  # noqa: S102
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for line in lines:
        found = re.fullmatch(r"(\d\.\d+):(\d):(\w+) left at exit (\d) after (\d\.\d{3}) GFLOPs", line)
        assert found and LABELS[int(found.group(2))] == found.group(3), line
