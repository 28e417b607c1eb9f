"""The project installs as one namespace, `dynadapter`: an installed wheel (not only the editable
checkout) adds no bare `models`, `training` or `service` module, and trains, exports and serves."""

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.service import IMAGE, ROOT, serving
from tests.support.tiny import TINY_ARGS
from tests.support.tiny_onnx_model import png_bytes


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel and installed without its dependencies (the test's own are used)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def dynadapter(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m dynadapter ...` from the installed copy, with the checkout off the path."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-m", "dynadapter", *args], cwd=site, env=env, capture_output=True, text=True, timeout=600
    )


def test_installing_adds_one_top_level_package(site: Path) -> None:
    top_level = {path.name for path in site.iterdir() if not path.name.endswith(".dist-info")} - {"bin"}
    assert top_level == {"dynadapter"}
    assert {"models", "training", "export", "service", "bench", "contract"} <= {
        path.name for path in (site / "dynadapter").iterdir()
    }


def test_every_package_in_the_checkout_is_in_the_wheel(site: Path) -> None:
    """pyproject.toml lists the packages: a new subpackage left out of it would be missing from the wheel."""
    rooms = {
        "dynadapter": "",
        "models": "models/",
        "training": "training/",
        "export": "export/",
        "service": "service/",
        "bench": "bench/",
    }
    for folder, inside in rooms.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.relative_to(ROOT / folder)
            installed = site / "dynadapter" / (inside if folder != "dynadapter" else "") / relative
            assert installed.is_file(), f"{init.relative_to(ROOT)} is not in the wheel"


def test_the_installed_wheel_trains_exports_and_serves(site: Path, tmp_path: Path) -> None:
    trained = dynadapter(site, "train", "--data", "builtin:digits", "--out", str(tmp_path / "run"), *TINY_ARGS)
    assert trained.returncode == 0, trained.stderr
    exported = dynadapter(site, "export", str(tmp_path / "run"), "--out", str(tmp_path / "repo"), "--name", "tiny")
    assert exported.returncode == 0, exported.stderr
    with serving(tmp_path / "repo", site) as server:
        where = httpx.get(f"{server.url}/v1/models").json()
        answer = httpx.post(f"{server.url}/classify?threshold=1", content=png_bytes(0), headers=IMAGE)
    assert answer.status_code == 200, answer.text
    assert answer.json()["label"] in [str(digit) for digit in range(10)]
    assert answer.json()["exit"] == {"index": 1, "count": 2, "after_block": 4}  # threshold 1: the last exit
    assert [(m["name"], m["num_classes"], len(m["exits"])) for m in where["models"]] == [("tiny", 10, 2)]
    loaded_from = subprocess.run(
        [sys.executable, "-c", "import dynadapter.service; print(dynadapter.service.__file__)"],
        cwd=site,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    assert loaded_from.stdout.strip().startswith(str(site))


def test_python_m_dynadapter_is_the_console_script(site: Path) -> None:
    result = dynadapter(site, "--help")
    assert result.returncode == 0
    for command in ("train", "eval", "calibrate", "export", "serve", "backbone", "demo", "bench"):
        assert command in result.stdout


def test_no_code_imports_a_room_by_its_folder_name() -> None:
    """Tests run with the checkout on sys.path, where `import models` would work by accident."""
    bare = re.compile(r"^\s*(from|import)\s+(models|training|export|service|bench|contract)\b", re.MULTILINE)
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    offenders = [path for path in tracked.stdout.split() if bare.search((ROOT / path).read_text())]
    assert offenders == []


def test_the_installed_wheel_has_the_grpc_descriptors_built_from_the_proto(site: Path, tmp_path: Path) -> None:
    """setup.py compiled inference.proto while the wheel was built: the service's message classes come from
    the wheel's own descriptor set, not from a compile on first use into the user's cache."""
    built = site / "dynadapter" / "service" / "grpc" / "inference.binpb"
    assert built.is_file() and (site / "dynadapter" / "service" / "grpc" / "inference.proto").is_file()
    code = "from dynadapter.service.grpc import protocol; print(protocol.BUILT, len(protocol.METHODS))"
    env = {**os.environ, "PYTHONPATH": str(site), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    loaded = subprocess.run([sys.executable, "-c", code], cwd=site, env=env, capture_output=True, text=True)
    assert loaded.stdout.split() == [str(built), "9"], loaded.stderr
    assert not (tmp_path / "cache").exists()
