import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dynadapter import cli
from dynadapter.training import evaluate
from dynadapter.training.data import run_split
from dynadapter.training.distributed import device_name, resolve_device
from dynadapter.training.evaluate import evaluate_run, split_logits
from dynadapter.training.exit_health import ADVICE, health_record, losing_exits
from dynadapter.training.run_dir import data_slug, eval_report_name, load_run, read_calibration
from dynadapter.training.trainer import TrainOptions
from tests.support.tiny import train_tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("run") / "r", epochs=2)


def test_run_directory_has_what_spec_section_4_lists(run) -> None:
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"]["img_size"] == 16 and config["model"]["exits"] == [1, 2, 3, 4]
    assert config["labels"] == [str(i) for i in range(10)] and config["device"] == "cpu"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and all(len(m["val_acc"]) == 4 for m in metrics)
    keys = load_file(str(run / "checkpoint.safetensors")).keys()
    assert keys and all(".adapter." in k or k.startswith("heads.") for k in keys)
    cal = json.loads((run / "calibration.json").read_text())
    assert set(cal["modes"]) == {"fast", "balanced", "accurate"} and cal["calibration"]["num_samples"] == 200
    assert cal["calibration"]["resamples"] == 200 and cal["calibration"]["resample_seed"] == 0  # bootstrap, on
    for mode in cal["modes"].values():
        assert mode["spread"]["threshold_low"] <= mode["spread"]["threshold_high"]


def test_training_learns_and_the_run_reloads_identically(run, tmp_path) -> None:
    reloaded = load_run(run)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(metrics[-1]["val_acc"]) > 0.3  # 10 classes: chance is 0.1
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    again = load_run(run)
    x = torch.randn(3, 3, 16, 16)
    for a, b in zip(reloaded.model(x), again.model(x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_eval_reports_per_exit_accuracy_and_the_sweep(run) -> None:
    report = evaluate_run(run)
    assert report["num_samples"] == 797 and len(report["exit_accuracy"]) == 4
    rows = {r["threshold"]: r for r in report["sweep"]}
    assert rows[0.0]["exit_fractions"] == [1.0, 0.0, 0.0, 0.0]
    assert rows[1.0]["exit_fractions"] == [0.0, 0.0, 0.0, 1.0]
    assert rows[1.0]["accuracy"] == pytest.approx(report["exit_accuracy"][-1])
    assert (run / "eval_test.json").is_file()
    assert report["calibrated"] == json.loads((run / "calibration.json").read_text())["modes"]  # val, beside test


def test_eval_on_other_data_writes_beside_the_runs_own_report_and_names_that_data(
    run, tmp_path, monkeypatch, capsys
) -> None:
    copy = shutil.copytree(run, tmp_path / "r")
    evaluate_run(copy)
    own = {name: (copy / name).read_bytes() for name in ("eval_test.json", "eval_test.png")}
    titles = []
    plot = evaluate.plot_accuracy_vs_gflops
    monkeypatch.setattr(evaluate, "plot_accuracy_vs_gflops", lambda *a: titles.append(a[-1]) or plot(*a))
    cli.main(["eval", str(copy), "--data", "builtin:mnist"])
    assert {name: (copy / name).read_bytes() for name in own} == own
    other = json.loads((copy / "eval_test@builtin-mnist.json").read_text())
    assert other["data"] == "builtin:mnist" and other["num_samples"] == 1000  # mnist's test split, not digits'
    assert titles == ["builtin:mnist (test, 1000 images)"] and (copy / "eval_test@builtin-mnist.png").is_file()
    printed = capsys.readouterr().out
    assert printed.startswith("builtin:mnist: test split, 1000 images\n")
    stem = copy / "eval_test@builtin-mnist"
    assert f"written: {stem}.json and the plot {stem}.png" in printed
    cli.main(["eval", str(copy), "--data", "builtin:digits"])  # the run's own data, named: its own report
    assert f"written: {copy / 'eval_test'}.json" in capsys.readouterr().out


def test_other_data_is_named_safely_and_distinctly_in_report_names(tmp_path, monkeypatch) -> None:
    assert eval_report_name("test") == "eval_test"
    assert eval_report_name("val", "builtin:elpv-type") == "eval_val@builtin-elpv-type"
    first, second = tmp_path / "a" / "my photos", tmp_path / "b" / "my photos"
    slugs = {data_slug(str(first)), data_slug(str(second))}
    assert len(slugs) == 2 and all(re.fullmatch(r"my-photos-[0-9a-f]{8}", s) for s in slugs)
    first.parent.mkdir()
    monkeypatch.chdir(first.parent)  # the same folder given relative, or with a trailing slash: the same name
    assert data_slug("my photos") == data_slug(str(first)) and data_slug("./my photos/") == data_slug(str(first))
    assert re.fullmatch(r"list\.csv-[0-9a-f]{8}", data_slug(str(tmp_path / ".." / tmp_path.name / "list.csv")))


def test_calibration_records_the_exits_that_lose_on_validation(run) -> None:
    loaded = load_run(run)
    logits, targets = split_logits(loaded, None, "val")
    expected = health_record(losing_exits(logits, targets, [1, 2, 3, 4]), "val", 200)
    assert read_calibration(run)["exit_health"] == expected


def test_eval_and_calibrate_warn_when_the_last_exit_loses_to_an_earlier_one(run, tmp_path, capsys) -> None:
    copy = shutil.copytree(run, tmp_path / "r")
    state = load_file(str(copy / "checkpoint.safetensors"))
    state["heads.3.fc.weight"] = torch.zeros_like(state["heads.3.fc.weight"])  # the last exit always answers "0"
    state["heads.3.fc.bias"] = torch.nn.functional.one_hot(torch.tensor(0), 10).float()
    save_file(state, str(copy / "checkpoint.safetensors"))
    cli.main(["calibrate", str(copy)])
    [val] = [f for f in read_calibration(copy)["exit_health"]["losing_exits"] if f["later"] == 3]
    zeros = (run_split(copy, load_run(copy).config, "val").targets == 0).mean()
    assert val["last"] and val["later_accuracy"] == zeros  # it is right on the zeros alone
    assert f"warning: {val['message']}\nwarning: {ADVICE}\n" in capsys.readouterr().out
    cli.main(["eval", str(copy)])
    report = json.loads((copy / "eval_test.json").read_text())
    accuracy = report["exit_accuracy"]
    best = max(range(3), key=lambda k: accuracy[k])
    [test] = [f for f in report["exit_health"]["losing_exits"] if f["later"] == 3]
    assert (test["earlier"], test["earlier_block"], test["later_block"]) == (best, best + 1, 4)
    assert test["later_accuracy"] == pytest.approx(accuracy[3]) and test["num_samples"] == 797
    assert test["message"].startswith(
        f"exit 3 (after block 4) answers {100 * accuracy[3]:.1f}% of the 797 test images, worse than exit {best} "
        f"(after block {best + 1}) at {100 * accuracy[best]:.1f}%: exit {best} alone is right on "
    )
    assert f"warning: {test['message']}\n" in capsys.readouterr().out


def test_training_is_reproducible_with_the_same_seed(run, tmp_path) -> None:
    other = train_tiny_run(tmp_path / "again", epochs=2)
    a, b = load_file(str(run / "checkpoint.safetensors")), load_file(str(other / "checkpoint.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_into_an_earlier_run_replaces_all_of_it(tmp_path, caplog) -> None:
    """The earlier run's eval report and plot must not sit beside the new run's checkpoint."""
    out = train_tiny_run(tmp_path / "r", epochs=2)
    evaluate_run(out)
    evaluate_run(out, data="builtin:mnist")  # a report on other data, beside the run's own
    reports = ["eval_test.json", "eval_test.png", "eval_test@builtin-mnist.json", "eval_test@builtin-mnist.png"]
    assert all((out / name).is_file() for name in reports)
    with caplog.at_level("WARNING"):
        train_tiny_run(out, epochs=1)
    assert f"{out} held an earlier run: it is replaced" in caplog.text
    assert not any((out / name).exists() for name in reports)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_training_learns_and_keeps_float32_outputs(run, tmp_path, dtype) -> None:
    amp = train_tiny_run(tmp_path / dtype, epochs=2, amp=True, amp_dtype=dtype)
    a, b = load_file(str(run / "checkpoint.safetensors")), load_file(str(amp / "checkpoint.safetensors"))
    assert all(t.dtype == torch.float32 for t in b.values())
    assert not all(torch.equal(a[k], b[k]) for k in a)  # autocast really changed the arithmetic
    metrics = [json.loads(line) for line in (amp / "metrics.jsonl").read_text().splitlines()]
    assert max(metrics[-1]["val_acc"]) > 0.3 and metrics[-1]["loss"] < metrics[0]["loss"]
    assert json.loads((amp / "config.json").read_text())["train"]["amp_dtype"] == dtype


def test_devices_resolve_or_are_refused_clearly(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")  # under torchrun, each process takes its own GPU
    assert resolve_device("auto") == torch.device("cuda:3")


def test_the_device_is_named_for_results_pages(monkeypatch) -> None:
    cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: avx2\n" * 2
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert device_name(torch.device("cpu"), cpuinfo) == "AMD EPYC 7B13, 2 threads"
        torch.set_num_threads(1)
        assert device_name(torch.device("cpu"), cpuinfo) == "AMD EPYC 7B13, 1 thread"
        monkeypatch.setattr("platform.processor", lambda: "")
        monkeypatch.setattr("platform.machine", lambda: "aarch64")  # no "model name" line on many ARM kernels
        assert device_name(torch.device("cpu"), "processor\t: 0\n") == "aarch64, 1 thread"
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"NVIDIA H200 ({device})")
    assert device_name(torch.device("cuda:1")) == "NVIDIA H200 (cuda:1)"


def test_unknown_amp_dtype_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="amp_dtype"):
        TrainOptions(data="builtin:digits", out=tmp_path, amp_dtype="float8")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_the_gpu_gives_a_run_that_loads_on_the_cpu(run, tmp_path) -> None:
    gpu = train_tiny_run(tmp_path / "gpu", epochs=2, device="cuda", amp=True)
    metrics = [json.loads(line) for line in (gpu / "metrics.jsonl").read_text().splitlines()]
    assert max(metrics[-1]["val_acc"]) > 0.3
    reloaded = load_run(gpu)
    assert next(reloaded.model.parameters()).device.type == "cpu"
    assert evaluate_run(gpu)["exit_accuracy"][-1] > 0.3


def test_shots_trains_on_k_images_per_class(tmp_path) -> None:
    config = json.loads((train_tiny_run(tmp_path / "k2", shots=2) / "config.json").read_text())
    images = config["data_summary"]["images"]
    assert set(images["train"].values()) == {2} and sum(images["val"].values()) == 200
    assert config["train"]["shots"] == 2


def test_val_every_validates_every_nth_epoch_and_the_last(tmp_path) -> None:
    run = train_tiny_run(tmp_path / "v", epochs=3, val_every=2)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert ["val_acc" in r for r in records] == [False, True, True]
    assert (run / "checkpoint.safetensors").is_file() and (run / "calibration.json").is_file()
