"""`dynadapter demo build`: the committed demo run becomes a served model repository, once."""

import json
import logging
from pathlib import Path

import pytest

from dynadapter.export import demo
from dynadapter.export.int8_gate import INT8_MAX_ACCURACY_DROP
from dynadapter.training.run_dir import CHECKPOINT

pytestmark = pytest.mark.skipif(
    not all((r / CHECKPOINT).is_file() for r in demo.DEMO_RUNS.values()),
    reason="the demo runs are not in this checkout",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return demo.build_demo_repo(tmp_path_factory.mktemp("demo") / "repo")


def test_demo_repository_holds_the_real_demo_and_the_fixture(built: Path) -> None:
    manifest = json.loads((built / "mnist" / "1" / "manifest.json").read_text())
    assert manifest["training"]["backbone"] == "builtin:dinov2-s14"
    assert manifest["parity"]["max_abs_diff"] <= 1e-4
    assert [s["after_block"] for s in manifest["segments"]] == [3, 6, 9, 12]
    assert (built / "digits-tiny" / "1" / "manifest.json").is_file()
    # With openvino and nncf installed the demo is also exported in fp32 IR, and in int8 only where int8
    # passes the gate (INT8_MAX_ACCURACY_DROP at every exit and mode; the demo quantizes with plain PTQ only).
    precisions = manifest.get("precisions", {})
    if demo.demo_precisions() == ["fp32"]:
        assert precisions == {}
    else:
        assert set(precisions) - {"int8-openvino"} == {"fp32-openvino"}
        gates = [p["parity"]["gate"] for key, p in precisions.items() if key == "int8-openvino"]
        bound = INT8_MAX_ACCURACY_DROP
        assert all(g["passed"] and g["method"] == "ptq" and g["bound"] == bound and g["worst"] >= -bound for g in gates)


def test_a_second_build_reuses_the_export(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the demo was exported again")

    monkeypatch.setattr(demo, "export_run", refuse)
    demo.build_demo_repo(built)


def test_an_export_by_an_older_exporter_is_redone(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = built / "mnist" / "1" / demo.SOURCE_FILE
    source.write_text(json.dumps({**json.loads(source.read_text()), "exporter": demo.EXPORTER_REVISION - 1}))
    exported = []
    monkeypatch.setattr(demo, "export_run", lambda run, out, name, version, **_: exported.append(name))
    demo.build_demo_repo(built)
    assert exported == ["mnist"]
    assert json.loads(source.read_text())["exporter"] == demo.EXPORTER_REVISION


def test_a_stale_copy_of_the_fixture_is_replaced(built: Path) -> None:
    copy = built / "digits-tiny" / "1" / "manifest.json"
    copy.write_text("{}")
    demo.build_demo_repo(built)
    assert copy.read_bytes() == (demo.FIXTURE_REPO / "digits-tiny" / "1" / "manifest.json").read_bytes()


def test_committed_calibration_meets_the_demo_promise() -> None:
    """At `balanced`, at least a third of the validation images leave early, within 1 point of the last exit."""
    for run in demo.DEMO_RUNS.values():
        cal = json.loads((run / "calibration.json").read_text())
        table = cal["calibration"]["table"]
        full = next(r for r in table if r["threshold"] >= 1.0)
        balanced = next(r for r in table if r["threshold"] == cal["modes"]["balanced"]["threshold"])
        assert 1.0 - balanced["exit_fractions"][-1] >= 1 / 3
        assert balanced["accuracy"] >= full["accuracy"] - 0.01


def test_the_cuda_probe_warning_alone_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """torch's "No CUDA runtime is found" line is silenced on CPU-only machines; its other warnings are not."""
    from dynadapter.export.commands import quiet_cuda_probe

    logger = logging.getLogger("torch.utils.cpp_extension")
    quiet_cuda_probe()
    quiet_cuda_probe()  # idempotent: one filter
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
            logger.warning("Error checking compiler version for %s", "c++")
        assert [record.getMessage() for record in caplog.records] == ["Error checking compiler version for c++"]
        assert len(logger.filters) == 1
    finally:
        logger.filters.clear()
