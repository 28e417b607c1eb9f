"""``dynadapter bench accuracy`` on a tiny random ViT: the results page, its JSON schema, the cell cache.

A benchmark, not a test of speed or accuracy: nothing here asserts a timing or a learned accuracy.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch

from dynadapter.bench.commands import add_bench
from dynadapter.bench.suite.cells import BENCH_FILE, PROBE_EPOCHS
from dynadapter.export.int8_gate import INT8_MAX_ACCURACY_DROP
from dynadapter.training.distributed import device_name
from dynadapter.training.linear_probe import C_GRID
from tests.support.bench import TINY, bench
from tests.support.tiny import TINY_BACKBONE

MODES = ("fast", "balanced", "accurate")


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("bench")
    docs, root = tmp / "docs", tmp / "cells"
    docs.mkdir()
    # A section that something else wrote earlier (as `bench serve` writes "serve"): it must survive.
    (docs / "results.json").write_text(json.dumps({"notes": {"machine": "2 cores"}}))
    argv = [*TINY, "--root", str(root), "--docs", str(docs)]
    # A tiny model gains nothing from a second thread, and on a busy 2-core machine the threads'
    # spin-waiting made each of its small matmuls several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bench("accuracy", *argv)
    finally:
        torch.set_num_threads(threads)
    return docs, root, " ".join(argv)


def test_results_json_schema(suite: tuple[Path, Path, str]) -> None:
    docs, _, _ = suite
    results = json.loads((docs / "results.json").read_text())
    assert results["tasks"] == ["digits"]
    # The recipe on the page is the trained cells' (the probe's cells run PROBE_EPOCHS, not --epochs).
    assert results["config"]["epochs"] == 2 != PROBE_EPOCHS
    assert results["notes"] == {"machine": "2 cores"}
    # Each cell names the device it trained on: here the CPU, on the fixture's one thread.
    assert results["devices"] == {device_name(torch.device("cpu")).rsplit(", ", 1)[0] + ", 1 thread": 3}
    rows = {(r["task"], r["petl"]): r for r in results["rows"]}
    assert set(rows) == {("digits", "adapter"), ("mean", "adapter")}
    for row in rows.values():
        assert 0.0 <= row["static_acc"] <= 1.0
        assert set(row["dyn"]) == set(MODES)
        for mode in row["dyn"].values():
            assert 0.0 <= mode["acc"] <= 1.0 and mode["gflops"] > 0 and mode["saved"] < 1.0
        # The modes are ordered by cost, as calibration chose them.
        assert row["dyn"]["fast"]["gflops"] <= row["dyn"]["balanced"]["gflops"] <= row["dyn"]["accurate"]["gflops"]
    assert rows["mean", "adapter"]["tasks"] == 1
    [target] = results["target"]
    assert target["petl"] == "adapter" and target["complete"] and isinstance(target["met"], bool)
    # Ablation cells were not asked for: their rows are there with no task, and none counts as unfinished.
    assert [a["variant"] for a in results["ablation"]][0] == "dyn"
    assert all(a["tasks"] == 0 and a["missing"] == ["digits"] for a in results["ablation"][1:])
    assert not any("adapter-linear-heads" in m for m in results["missing"])
    # Clean and shifted accuracy for every cell.
    digits = rows["digits", "adapter"]
    assert 0.0 <= digits["static_shifted_acc"] <= 1.0
    assert set(digits["dyn_shifted"]) == set(MODES)
    assert all(0.0 <= m["acc"] <= 1.0 and m["gflops"] > 0 for m in digits["dyn_shifted"].values())
    assert digits["seeds"] == {"static": 1, "dyn": 1} and digits["static_acc_std"] is None
    # The modes' validation accuracy beside the test one, and balanced's threshold with its bootstrap interval.
    _, root, _ = suite
    calibrated = json.loads((root / "digits" / "adapter-dyn" / "calibration.json").read_text())["modes"]
    assert digits["dyn_val"] == {m: calibrated[m]["accuracy"] for m in MODES}
    assert digits["balanced_threshold"] == calibrated["balanced"]["threshold"]
    spread = calibrated["balanced"]["spread"]
    assert digits["balanced_interval"] == [spread["threshold_low"], spread["threshold_high"]]
    assert digits["balanced_threshold_std"] is None  # one seed


def test_frozen_probe_picks_its_block_on_validation(suite: tuple[Path, Path, str]) -> None:
    docs, root, _ = suite
    results = json.loads((docs / "results.json").read_text())
    probe = json.loads((root / "digits" / "none-probe" / BENCH_FILE).read_text())["result"]
    val = probe["probe"]["val_exit_accuracy"]
    assert len(val) == TINY_BACKBONE["depth"]  # a linear head after every block
    best = val.index(max(val))
    assert probe["probe"]["block"] == best + 1
    assert probe["probe"]["acc"] == probe["exit_accuracy"][best]
    assert probe["probe"]["shifted_acc"] == probe["shifted"]["exit_accuracy"][best]
    # Its heads are logistic regressions fitted on the frozen features after one SGD epoch: what the
    # fit saw on validation is what the saved checkpoint answers there (float64 against float32: one
    # image of the 200 may fall the other way).
    heads = probe["probe"]["heads"]
    assert len(heads) == len(val) and all(h["C"] in C_GRID for h in heads)
    assert [h["val_acc"] for h in heads] == pytest.approx(val, abs=1 / 200 + 1e-9)
    stored = json.loads((root / "digits" / "none-probe" / BENCH_FILE).read_text())
    assert stored["options"]["epochs"] == PROBE_EPOCHS
    # Its cost: the blocks up to the chosen one and one linear head, never more than the static model's.
    static = json.loads((root / "digits" / "adapter-static" / BENCH_FILE).read_text())["result"]
    assert 0 < probe["probe"]["gflops"] <= static["gflops"]
    [row, mean] = results["probe"]
    assert row["task"] == "digits" and row["blocks"] == [best + 1] and row["acc"] == probe["probe"]["acc"]
    assert mean["tasks"] == 1


def test_int8_column_is_the_cell_served_in_int8(suite: tuple[Path, Path, str]) -> None:
    """The Dyn-Adapter cell exported at int8 and served by the service's OpenVINO runner at int8's own
    modes; the fp32 IR served the same way reproduces the PyTorch-evaluated modes exactly."""
    docs, root, _ = suite
    result = json.loads((root / "digits" / "adapter-dyn" / BENCH_FILE).read_text())["result"]
    int8 = result["int8"]
    for mode in MODES:
        fp32, served = result["modes"][mode], int8["fp32_openvino"][mode]
        assert served["threshold"] == fp32["threshold"]
        assert served["acc"] == pytest.approx(fp32["acc"], abs=1e-12)
        assert served["gflops"] == pytest.approx(fp32["gflops"], rel=1e-9)
        m = int8["modes"][mode]
        assert 0.0 <= m["acc"] <= 1.0 and 0.0 <= m["threshold"] <= 1.0
        assert m["saved"] == pytest.approx(1.0 - m["gflops"] / result["reference_gflops"])
    gflops = [int8["modes"][m]["gflops"] for m in MODES]
    assert gflops == sorted(gflops)  # int8's own modes, ordered by cost as calibration chose them
    assert len(int8["argmax_agreement"]) == 4 and all(0.0 <= a <= 1.0 for a in int8["argmax_agreement"])
    # The export's int8 gate: the worst drop over every exit and mode, within its bound where accepted.
    assert int8["accepted"] == (int8["val_acc_drop"] <= int8["allowed_drop"] + 1e-12)
    assert int8["allowed_drop"] == INT8_MAX_ACCURACY_DROP
    assert int8["method"] in ("ptq", "accuracy-control") and set(int8["test_acc_drop_points"]) == set(MODES)
    # The static and probe cells have no int8 column; the results row carries the cell's numbers.
    assert "int8" not in json.loads((root / "digits" / "adapter-static" / BENCH_FILE).read_text())["result"]
    rows = {(r["task"], r["petl"]): r for r in json.loads((docs / "results.json").read_text())["rows"]}
    expected = {m: {k: int8["modes"][m][k] for k in ("acc", "gflops", "saved")} for m in MODES}
    assert rows["digits", "adapter"]["dyn_int8"] == expected
    assert rows["mean", "adapter"]["dyn_int8"] == expected  # one task: its mean is itself
    delta = 100 * (expected["balanced"]["acc"] - result["modes"]["balanced"]["acc"])
    assert f"{100 * expected['balanced']['acc']:.1f} ({delta:+.1f}) |" in (docs / "results.md").read_text()


def test_a_cached_cell_without_int8_numbers_is_served_not_trained(suite: tuple[Path, Path, str]) -> None:
    docs, root, argv = suite
    cell = root / "digits" / "adapter-dyn"
    stored = json.loads((cell / BENCH_FILE).read_text())
    old = {**stored, "result": {k: v for k, v in stored["result"].items() if k != "int8"}}
    (cell / BENCH_FILE).write_text(json.dumps(old))
    checkpoint = (cell / "checkpoint.safetensors").stat().st_mtime_ns
    bench("accuracy", *argv.split(), "--no-int8")
    assert "int8" not in json.loads((cell / BENCH_FILE).read_text())["result"]  # not asked for: not added
    bench("accuracy", *argv.split())
    assert (cell / "checkpoint.safetensors").stat().st_mtime_ns == checkpoint
    again = json.loads((cell / BENCH_FILE).read_text())["result"]["int8"]
    # fp32 is reproducible bit for bit; OpenVINO's int8 kernels are not across compilations.
    assert again["fp32_openvino"] == stored["result"]["int8"]["fp32_openvino"]
    assert set(again["modes"]) == set(MODES)


def test_markdown_and_figure(suite: tuple[Path, Path, str]) -> None:
    docs, _, _ = suite
    page = (docs / "results.md").read_text()
    assert "## Target" in page and "### digits" in page and "![digits" in page
    assert "## Notes" in page and '"machine": "2 cores"' in page
    [device] = json.loads((docs / "results.json").read_text())["devices"]
    assert f"as measured on the machine that ran the cell (trained on {device}: 3 cells):" in page
    assert "static shifted (%)" in page and "balanced shifted (%)" in page and "| frozen probe (block " in page
    assert "balanced int8 (%)" in page
    assert "## Calibration: validation against test" in page and "| digits | adapter |" in page
    assert (docs / "results" / "digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_run_trains_nothing(suite: tuple[Path, Path, str]) -> None:
    docs, root, argv = suite
    finished = {p: p.stat().st_mtime_ns for p in root.rglob(BENCH_FILE)}
    assert {p.parent.name for p in finished} == {"adapter-static", "adapter-dyn", "none-probe"}
    before = json.loads((docs / "results.json").read_text())
    # The device is not part of a cell's identity: a suite begun with `auto` continues with `--device cpu`.
    bench("accuracy", *argv.split(), "--device", "cpu")
    assert {p: p.stat().st_mtime_ns for p in root.rglob(BENCH_FILE)} == finished
    assert json.loads((docs / "results.json").read_text()) == before


def test_a_cached_cell_without_shifted_numbers_is_evaluated_not_trained(suite: tuple[Path, Path, str]) -> None:
    """A cell finished before the shifted split (and the ``shots`` option) existed: reused, completed."""
    docs, root, argv = suite
    cell = root / "digits" / "adapter-dyn"
    stored = json.loads((cell / BENCH_FILE).read_text())
    old = {
        "options": {k: v for k, v in stored["options"].items() if k != "shots"},
        "result": {k: v for k, v in stored["result"].items() if k != "shifted"},
    }
    (cell / BENCH_FILE).write_text(json.dumps(old))
    checkpoint = (cell / "checkpoint.safetensors").stat().st_mtime_ns
    bench("accuracy", *argv.split())
    assert (cell / "checkpoint.safetensors").stat().st_mtime_ns == checkpoint
    # Evaluated again on the same corrupted images: the same numbers.
    assert json.loads((cell / BENCH_FILE).read_text())["result"]["shifted"] == stored["result"]["shifted"]


def test_a_cached_cell_without_validation_numbers_gets_them_from_its_calibration(
    suite: tuple[Path, Path, str],
) -> None:
    """A cell finished before ``val_modes`` (and ``--calibration-resamples``) existed: read from its
    calibration.json, neither trained nor evaluated again."""
    docs, root, argv = suite
    cell = root / "digits" / "adapter-dyn"
    stored = json.loads((cell / BENCH_FILE).read_text())
    old = {
        "options": {k: v for k, v in stored["options"].items() if k != "calibration_resamples"},
        "result": {k: v for k, v in stored["result"].items() if k != "val_modes"},
    }
    (cell / BENCH_FILE).write_text(json.dumps(old))
    checkpoint = (cell / "checkpoint.safetensors").stat().st_mtime_ns
    bench("accuracy", *argv.split())
    assert (cell / "checkpoint.safetensors").stat().st_mtime_ns == checkpoint
    assert json.loads((cell / BENCH_FILE).read_text())["result"]["val_modes"] == stored["result"]["val_modes"]


def test_a_fresh_clone_renders_the_page_from_the_records_and_trains_nothing(
    suite: tuple[Path, Path, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The run directories stay on the machine that trained them; the records under
    ``DOCS/results/cells/`` (committed) are enough to render the same page elsewhere."""
    docs, root, argv = suite
    bench("accuracy", *argv.split(), "--report-only")  # the page of the cells as they are now
    records = docs / "results" / "cells"
    for cell in ("none-probe", "adapter-static", "adapter-dyn"):
        record = json.loads((records / "digits" / f"{cell}.json").read_text())
        assert record == json.loads((root / "digits" / cell / BENCH_FILE).read_text())
    clone = tmp_path / "clone"
    shutil.copytree(records, clone / "docs" / "results" / "cells")
    # Not --report-only: a cell missing from the records would be trained into the empty root.
    empty = clone / "var" / "bench"
    argv_clone = [*TINY, "--root", str(empty), "--docs", str(clone / "docs")]
    bench("accuracy", *argv_clone)
    assert not list(empty.rglob(BENCH_FILE))
    before, after = (json.loads((d / "results.json").read_text()) for d in (docs, clone / "docs"))
    for key in ("rows", "target", "probe", "shift_target", "int8_target", "devices", "missing"):
        assert after[key] == before[key], key
    # A record lacking a part added since it ran cannot get it without its run: the log says which.
    dyn = clone / "docs" / "results" / "cells" / "digits" / "adapter-dyn.json"
    stored = json.loads(dyn.read_text())
    dyn.write_text(json.dumps({**stored, "result": {k: v for k, v in stored["result"].items() if k != "int8"}}))
    with caplog.at_level("WARNING", logger="dynadapter.bench.suite.cells"):
        bench("accuracy", *argv_clone)
    assert "digits/adapter-dyn: only its record" in caplog.text and "int8 numbers stay missing" in caplog.text
    assert not list(empty.rglob(BENCH_FILE))
    rows = {(r["task"], r["petl"]): r for r in json.loads((clone / "docs" / "results.json").read_text())["rows"]}
    assert rows["digits", "adapter"]["dyn_int8"] is None


def test_cells_per_seed_and_shots_have_their_own_directories(tmp_path: Path) -> None:
    from dynadapter.bench.suite.cells import Cell, SuiteConfig, main_cells

    cells = main_cells(["digits"], ["adapter"], seeds=[0, 1])
    assert [c.name for c in cells] == [
        "digits/none-probe",
        "digits/adapter-static",
        "digits/adapter-dyn",
        "digits/none-probe-seed1",
        "digits/adapter-static-seed1",
        "digits/adapter-dyn-seed1",
    ]
    config = SuiteConfig(tmp_path, 8, 1e-3, 1.0, 32, backbone="vit_tiny_patch16_224", backbone_kwargs=TINY_BACKBONE)
    assert config.cell_dir(cells[0]) == tmp_path / "digits" / "none-probe"  # seed 0: the name caches had before
    opts = config.options(cells[3])
    assert opts.seed == 1 and opts.exits == [1, 2, 3, 4] and opts.heads == "linear" and opts.loss_gamma == 0.0
    few = Cell("digits", "adapter", "static", 2, shots=4)
    assert config.cell_dir(few) == tmp_path / "digits" / "adapter-static-seed2-k4"
    # with a step budget, 4 shots x 10 classes = 2 batches of 32 an epoch: 100 steps are 50 epochs, validated 7 times
    stepped = SuiteConfig(tmp_path, 8, 1e-3, 1.0, 32, steps=100)
    assert (stepped.options(few).epochs, stepped.options(few).val_every, stepped.options(few).shots) == (50, 7, 4)


def test_a_cell_another_suite_finished_meanwhile_is_not_trained_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dynadapter.bench.suite import cells as suite_cells

    todo = suite_cells.main_cells(["digits"], ["adapter"])
    done: dict[str, dict] = {}
    trained: list[str] = []

    def run_cell(cell: suite_cells.Cell, config: suite_cells.SuiteConfig) -> dict:
        trained.append(cell.name)
        done[cell.name] = {"acc": 0.5}
        if cell is todo[0]:  # meanwhile, a second suite on the same records finishes the last cell
            done[todo[-1].name] = {"acc": 0.9}
        return done[cell.name]

    monkeypatch.setattr(suite_cells, "load_finished", lambda cell, config: done.get(cell.name))
    monkeypatch.setattr(suite_cells, "run_cell", run_cell)
    config = suite_cells.SuiteConfig(tmp_path, 8, 1e-3, 1.0, 32)
    results = suite_cells.run_suite(todo, config, set(todo))
    assert trained == [todo[0].name, todo[1].name]
    assert results[todo[-1]] == {"acc": 0.9}


def test_a_recipe_gets_cells_of_its_own_and_the_default_recipe_keeps_todays(tmp_path: Path) -> None:
    from dynadapter.bench.suite.cells import Cell, options_record, same_options
    from dynadapter.bench.suite.flags import suite_config

    parser = argparse.ArgumentParser(prog="dynadapter")
    add_bench(parser.add_subparsers(dest="command", required=True))

    def config(*train_args: str):  # what `bench accuracy --train-arg ...` trains with
        argv = ["bench", "accuracy", *TINY[: TINY.index("--epochs")], "--root", str(tmp_path), "--no-amp"]
        return suite_config(parser.parse_args([*argv, *(a for t in train_args for a in ("--train-arg", t))]), 8)

    cell, probe = Cell("digits", "adapter", "dyn"), Cell("digits", "none", "probe")
    default = config()
    assert default.recipe == {} and default.cell_dir(cell) == tmp_path / "digits" / "adapter-dyn"
    # options at their defaults are no recipe: today's cells, still finished for a cache written before the switches
    assert config("hflip=0", "auto_augment=none", "mixup=0").cell_dir(cell) == default.cell_dir(cell)
    today = options_record(default.options(cell))
    new = ("crop_scale", "hflip", "auto_augment", "mixup", "cutmix", "smoothing", "head_dropout", "petl_dropout")
    assert same_options({k: v for k, v in today.items() if k not in new}, today)
    # a cell recorded before LP-FT ran with random heads: were probe heads the default, it would not be today's
    before_lpft = {k: v for k, v in today.items() if k != "head_init"}
    assert same_options(before_lpft, today) and not same_options(before_lpft, today | {"head_init": "probe"})
    # where and how fast a cell ran is not what it learnt: a cell trained by 2 workers on a GPU is reused
    elsewhere = default.options(cell).model_copy(update={"workers": 2, "device": "cuda"})
    assert same_options(elsewhere.record(), today) and options_record(elsewhere) == today

    flip = config("hflip=0.5", "crop_scale=0.5,1")
    assert flip.recipe == {"crop_scale": [0.5, 1.0], "hflip": 0.5}
    assert flip.cell_dir(cell).parent == tmp_path / "digits" and flip.cell_dir(cell).name.startswith("adapter-dyn-r")
    assert flip.cell_dir(cell) == config("crop_scale=[0.5, 1]", "hflip=0.50").cell_dir(cell)  # the same recipe
    assert len({flip.cell_dir(cell), config("hflip=1").cell_dir(cell), default.cell_dir(cell)}) == 3
    opts = flip.options(cell)
    assert (opts.hflip, opts.crop_scale, opts.mixup) == (0.5, [0.5, 1.0], 0.0)
    assert not same_options(options_record(opts), today)  # a recipe never reuses the default's cells
    # the probe's own options win over the recipe's
    sparse = config("forward_sparsity=0.1", "smoothing=0.1")
    assert sparse.options(cell).forward_sparsity == 0.1 and sparse.options(probe).forward_sparsity == 0.0
    assert sparse.options(probe).smoothing == 0.1 and sparse.record(cell)["recipe"] == sparse.recipe


@pytest.mark.parametrize(
    ("train_arg", "message"),
    [("lr=0.1", "--train-arg lr: the suite sets this"), ("colour=red", "colour: unknown option"), ("hflip=2", "hflip")],
)
def test_a_train_arg_the_suite_cannot_take_is_a_config_error(train_arg: str, message: str) -> None:
    from dynadapter.bench.suite.cells import recipe_options
    from dynadapter.errors import ConfigError
    from dynadapter.options import key_value

    with pytest.raises(ConfigError, match=message):
        recipe_options([key_value(train_arg)])
