import argparse
from pathlib import Path

import pytest

from dynadapter.service.settings import (
    Settings,
    add_settings_arguments,
    default_text,
    env_name,
    flag_name,
    settings_from_args,
)
from tests.support.service import ROOT

EVERY_FLAG = {
    "--model-repo": ("repo", Path("repo")),
    "--models": ("demo, other", ["demo", "other"]),
    "--model-name": ("demo", "demo"),
    "--version-policy": ("Specific:1,3", "specific:1,3"),
    "--repository-poll-s": ("2.5", 2.5),
    "--host": ("127.0.0.1", "127.0.0.1"),
    "--port": ("9001", 9001),
    "--grpc-port": ("9001", 9001),
    "--providers": ("cpu", "cpu"),
    "--intra-op-threads": ("2", 2),
    "--max-batch-size": ("4", 4),
    "--max-wait-ms": ("2.5", 2.5),
    "--max-queue": ("9", 9),
    "--max-body-bytes": ("1000", 1000),
    "--max-pixels": ("5000", 5000),
    "--max-images-per-request": ("8", 8),
    "--decode-workers": ("3", 3),
    "--decode-queue": ("7", 7),
    "--request-timeout-s": ("1.5", 1.5),
    "--shutdown-timeout-s": ("3", 3),
    "--api-keys": ("alpha, beta", ["alpha", "beta"]),
    "--log-level": ("DEBUG", "debug"),
    "--backend": ("openvino", "openvino"),
    "--allow-spinning": (None, True),  # a switch: given as --allow-spinning
    "--access-log": (None, True),  # a switch: given as --access-log
    "--precision": ("int8", "int8"),
    "--target-p95-ms": ("80", 80.0),
    "--accuracy-floor": ("0.9", "0.9"),
    "--control-period-s": ("0.25", 0.25),
    "--live-calibration": ("0.1", 0.1),
    "--live-calibration-epsilon": ("0.05", 0.05),
    "--live-calibration-every": ("50", 50),
    "--live-calibration-window": ("500", 500),
}


@pytest.fixture
def parser(monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    for name in Settings.model_fields:
        monkeypatch.delenv(env_name(name), raising=False)
    parser = argparse.ArgumentParser(prog="dynadapter serve")
    add_settings_arguments(parser)
    return parser


def test_every_setting_has_a_flag(parser: argparse.ArgumentParser) -> None:
    assert set(EVERY_FLAG) == {flag_name(name) for name in Settings.model_fields}
    argv = [
        item
        for flag, (text, expected) in EVERY_FLAG.items()
        for item in ((flag, text) if text is not None else (flag if expected else "--no-" + flag[2:],))
    ]
    settings = settings_from_args(parser.parse_args(argv))
    for flag, (_, expected) in EVERY_FLAG.items():
        assert getattr(settings, flag[2:].replace("-", "_")) == expected, flag


def test_flags_win_over_the_environment_which_wins_over_defaults(
    parser: argparse.ArgumentParser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DYNADAPTER_PORT", "7000")
    monkeypatch.setenv("DYNADAPTER_MAX_QUEUE", "5")
    namespace = parser.parse_args(["--port", "9000"])
    namespace.command = "serve"  # the CLI's own attributes are not settings
    settings = settings_from_args(namespace)
    assert (settings.port, settings.max_queue, settings.max_batch_size) == (9000, 5, 16)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "argument --port: Input should be less than or equal to 65535"),
        (["--providers", "gpu"], "argument --providers: Input should be 'auto', 'cuda' or 'cpu'"),
        (["--max-wait-ms", "nan"], "argument --max-wait-ms: Input should be a finite number"),
        (["--max-batch-size", "0"], "argument --max-batch-size: Input should be greater than or equal to 1"),
    ],
)
def test_a_bad_flag_is_a_usage_error_naming_it(
    parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_help_describes_each_flag_with_its_variable(parser: argparse.ArgumentParser) -> None:
    text = " ".join(parser.format_help().split())
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert f"[env {env_name(name)}, default {default_text(field)}]" in text


def test_configuration_doc_lists_every_setting() -> None:
    rows = {}
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`DYNADAPTER_"):
            rows[cells[0]] = cells
    assert len(rows) == len(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        _, flag, default, meaning = rows[f"`{env_name(name)}`"]
        assert (flag, default) == (f"`{flag_name(name)}`", f"`{default_text(field)}`")
        assert meaning


def test_a_bad_environment_variable_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from dynadapter import cli

    monkeypatch.setenv("DYNADAPTER_TARGET_P95_MS", "abc")
    with pytest.raises(SystemExit) as stop:
        cli.main(["serve", "--model-repo", "nowhere"])
    message = str(stop.value.code)
    assert message.startswith("dynadapter serve: error: DYNADAPTER_TARGET_P95_MS / --target-p95-ms: ")
    assert "'abc'" in message and "\n" not in message
