"""`dynadapter export --name` refuses what the service would refuse to serve (issue 30): the model
repository's one rule for names (dynadapter.contract.model_repository.MODEL_NAME_RULE)."""

from pathlib import Path

import pytest

from dynadapter import cli


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a\\b", ".hidden", "-x", "x\n", "１", "n" * 129])
def test_export_refuses_a_name_the_service_would_refuse(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dynadapter.export import exporter

    written: list[str] = []
    monkeypatch.setattr(exporter, "export_run", lambda *args: written.append(args[2]))
    with pytest.raises(SystemExit) as err:
        cli.main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "repo"), f"--name={name}"])
    assert "--name: " in str(err.value.code) and "is not a model name" in str(err.value.code)
    assert written == [] and not (tmp_path / "repo").exists()


@pytest.mark.parametrize("version", ["１", "٣", "²", "1.0"])
def test_export_refuses_a_version_of_non_ascii_digits(
    version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dynadapter.export import exporter

    monkeypatch.setattr(exporter, "export_run", lambda *args: None)
    with pytest.raises(SystemExit) as err:
        cli.main(
            ["export", str(tmp_path / "run"), "--out", str(tmp_path / "repo"), "--name", "m", "--version", version]
        )
    assert "versions are positive integers" in str(err.value.code)
