"""Fixtures shared by the contract and service tests: a real tiny model repository, built without torch."""

from pathlib import Path

import pytest

from tests.support.tiny_onnx_model import TinyWeights, write_model_version


@pytest.fixture(scope="session")
def weights() -> TinyWeights:
    return TinyWeights.random(seed=0)


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory, weights: TinyWeights) -> Path:
    repo = tmp_path_factory.mktemp("model_repo")
    write_model_version(repo, weights)
    return repo
