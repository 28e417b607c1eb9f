"""The serving image has neither torch nor timm: the service must import, start and answer without them."""

import subprocess
import sys
import textwrap
from pathlib import Path

PROBE = textwrap.dedent(
    """
    import importlib.abc, pkgutil, sys, time

    BLOCKED = {"torch", "timm", "torchvision"}

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed in the serving image")
            return None

    sys.meta_path.insert(0, NoTorch())

    import dynadapter.contract
    import dynadapter.service
    import dynadapter.service.main
    for package in (dynadapter.contract, dynadapter.service):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            __import__(module.name)

    from fastapi.testclient import TestClient
    from dynadapter.service.settings import Settings
    from tests.support.tiny_onnx_model import png_bytes

    app = dynadapter.service.main.create_app(Settings(model_repo=sys.argv[1], providers="auto"))
    with TestClient(app) as client:
        while client.get("/readyz").status_code != 200:
            time.sleep(0.01)
        response = client.post("/classify", content=png_bytes(0), headers={"content-type": "image/png"})
        assert response.status_code == 200, response.text
    loaded = sorted(name for name in sys.modules if name.partition(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("served without torch")
    """
)


def test_service_runs_with_torch_and_timm_unimportable(model_repo: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(model_repo)], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "served without torch" in result.stdout
