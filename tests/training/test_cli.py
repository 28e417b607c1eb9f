"""`dynadapter` command line: parsing and the backbone options a user passes."""

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from dynadapter import cli
from dynadapter.errors import RunDirError
from dynadapter.training import calibration_set
from dynadapter.training.exit_health import warning_lines
from dynadapter.training.run_dir import load_run, read_calibration
from tests.support.tiny import TINY_ARGS, TINY_BACKBONE


def test_train_with_local_backbone_weights_uses_them(tmp_path: Path) -> None:
    donor = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, **TINY_BACKBONE)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(weights))
    cli.main(
        [
            "train",
            "--data",
            "builtin:digits",
            "--out",
            str(tmp_path / "run"),
            "--backbone-weights",
            str(weights),
            "--seed",
            "7",
            *TINY_ARGS,
        ]
    )
    model = load_run(tmp_path / "run").model
    assert json.loads((tmp_path / "run" / "config.json").read_text())["backbone"]["weights"] == str(weights)
    loaded = model.backbone.patch_embed.proj.weight
    assert loaded.equal(donor.patch_embed.proj.weight)


def test_train_warns_in_the_log_and_its_summary_when_the_last_exit_loses(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    calibration_logits = calibration_set.calibration_logits

    def last_exit_answers_zero(model, val, opts):  # a last exit that lost, for certain
        logits, targets = calibration_logits(model, val, opts)
        logits = logits.clone()
        logits[-1] = torch.nn.functional.one_hot(torch.zeros_like(targets), logits.shape[-1]).float()
        return logits, targets

    monkeypatch.setattr(calibration_set, "calibration_logits", last_exit_answers_zero)
    with caplog.at_level("WARNING"):
        cli.main(["train", "--data", "builtin:digits", "--out", str(tmp_path / "run"), *TINY_ARGS, "--epochs", "2"])
    record = read_calibration(tmp_path / "run")["exit_health"]
    assert record["split"] == "val" and [f["later_block"] for f in record["losing_exits"]][-1] == 4
    lines = warning_lines(record)
    assert lines[0].startswith("exit 1 (after block 4) answers ") and all(line in caplog.text for line in lines)
    summary = capsys.readouterr().out.split(f"run written to {tmp_path / 'run'}\n")[1]
    assert summary == "".join(f"warning: {line}\n" for line in lines)


def test_pretrained_flag_asks_timm_for_its_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    real = timm.create_model

    def spy(name, pretrained=False, **kwargs):
        seen["pretrained"] = pretrained
        return real(name, pretrained=False, **kwargs)  # no network in tests

    monkeypatch.setattr(timm, "create_model", spy)
    cli.main(["train", "--data", "builtin:digits", "--out", str(tmp_path / "run"), "--pretrained", *TINY_ARGS])
    assert seen["pretrained"] is True


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "builtin:digits", "--out", "x", "--exits", "a,b"],
        ["train", "--data", "builtin:digits", "--out", "x", "--petl", "prompt"],
    ],
)
def test_bad_arguments_exit_with_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as err:
        cli.main(argv)
    assert err.value.code == 2


def test_errors_are_one_line_not_tracebacks(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as err:
        cli.main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "repo")])
    assert "is not a run directory" in str(err.value.code)


def test_the_cli_starts_without_torch_so_the_serving_image_can_run_it() -> None:
    import subprocess
    import sys

    code = """
import sys
class Block:
    def find_spec(self, name, *args, **kwargs):
        if name.split('.')[0] in ('torch', 'timm'):
            raise ImportError('torch and timm are not in the serving image: ' + name)
sys.meta_path.insert(0, Block())
import dynadapter.cli
dynadapter.cli.main(['serve', '--help'])
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    assert "--max-batch-size" in out.stdout


def test_user_errors_show_their_traceback_with_verbose(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="is not a run directory"):
        cli.main(["-v", "export", str(tmp_path / "missing"), "--out", str(tmp_path / "repo")])


def test_a_bug_is_not_dressed_as_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only DynAdapterError becomes one line; anything else keeps its traceback."""
    from dynadapter.export import exporter

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(exporter, "export_run", broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "repo")])


def test_export_writes_the_next_version_and_never_replaces_one_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dynadapter.export import exporter

    written: list[str] = []

    def export_run(run_dir: Path, repo: Path, name: str, version: str, *args: object) -> Path:
        (repo / name / version).mkdir(parents=True)
        written.append(version)
        return repo / name / version

    monkeypatch.setattr(exporter, "export_run", export_run)
    repo = tmp_path / "repo"
    export = ["export", str(tmp_path / "run"), "--out", str(repo), "--name", "m"]
    cli.main(export)
    cli.main(export)
    (repo / "m" / "notes").mkdir()  # not a version folder
    cli.main(export)
    assert written == ["1", "2", "3"]
    with pytest.raises(SystemExit) as err:
        cli.main([*export, "--version", "2"])
    assert "m/2 exists: pass --overwrite to replace it, or leave --version out for the next one (4)" in str(
        err.value.code
    )
    with pytest.raises(SystemExit) as err:
        cli.main([*export, "--version", "v2"])
    assert "versions are positive integers" in str(err.value.code)
    (repo / "m" / "2").rmdir()  # the stub's export_run writes a fresh folder, as the real one replaces it
    cli.main([*export, "--version", "2", "--overwrite"])
    cli.main([*export, "--version", "7"])
    assert written == ["1", "2", "3", "2", "7"]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--epochs", "0", "greater than or equal to 1"),
        ("--lr", "-1", "greater than 0"),
        ("--backward-sparsity", "1.5", "less than 1"),
        ("--calibration-resamples", "-1", "greater than or equal to 0"),
        ("--calibration-corrupted", "-1", "greater than or equal to 0"),
        ("--hflip", "2", "less than or equal to 1"),
        ("--crop-scale", "1,0.5", "0 < MIN <= MAX <= 1"),
        ("--auto-augment", "colour-m9", "expected a spec starting with one of"),
        ("--smoothing", "1", "less than 1"),
        ("--head-dropout", "-0.1", "greater than or equal to 0"),
    ],
)
def test_train_flags_are_validated_as_the_options_are(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as err:
        cli.main(["train", "--data", "builtin:digits", "--out", "x", flag, value])
    assert err.value.code == 2
    stderr = capsys.readouterr().err
    assert flag in stderr and message in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--petl-arg", "colour=red"], "its options are"),
        (["--heads", "pyramid"], "head kind must be one of"),
        (["--petl-dropout", "0.1", "--petl-arg", "dropout=0.2"], "give the PETL dropout once"),
        (["--wise-ft"], "--wise-ft interpolates toward the probe-initialised heads: add --head-init probe"),
    ],
)
def test_model_options_a_user_gets_wrong_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as err:
        cli.main(["train", "--data", "builtin:digits", "--out", str(tmp_path / "run"), *TINY_ARGS, *args])
    assert message in str(err.value.code) and "\n" not in str(err.value.code)


def test_train_without_data_says_what_to_add_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as err:
        cli.main(["train", "--out", str(tmp_path / "run")])
    assert str(err.value.code) == "dynadapter train: error: --data required (or --resume RUN_DIR to continue a run)"


@pytest.mark.parametrize(
    "flags", [["--bad-images", "maybe"], ["--val-size", "-1"], ["--workers", "-2"], ["--keep", "first"]]
)
def test_out_of_range_data_options_are_usage_errors(tmp_path: Path, flags: list[str]) -> None:
    with pytest.raises(SystemExit) as err:
        cli.main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *flags])
    assert err.value.code == 2


def test_resume_of_a_finished_run_is_refused_in_one_line(tmp_path: Path) -> None:
    from tests.support.tiny import train_tiny_run

    run = train_tiny_run(tmp_path / "run", epochs=1)
    with pytest.raises(SystemExit) as err:
        cli.main(["train", "--resume", str(run)])
    assert "has nothing to resume" in str(err.value.code)


def test_train_help_says_each_default_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "run directory to write (required)" in text and "[default" not in text
    assert "(default: 0.15)" in text and "(default: all)" in text and "(default: all) (default" not in text
