import json

import pytest
import torch
from safetensors.torch import load_file

from dynadapter.training.distributed import device_name, resolve_device
from dynadapter.training.evaluate import evaluate_run
from dynadapter.training.run_dir import load_run
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


def test_training_is_reproducible_with_the_same_seed(run, tmp_path) -> None:
    other = train_tiny_run(tmp_path / "again", epochs=2)
    a, b = load_file(str(run / "checkpoint.safetensors")), load_file(str(other / "checkpoint.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_into_an_earlier_run_replaces_all_of_it(tmp_path, caplog) -> None:
    """The earlier run's eval report and plot must not sit beside the new run's checkpoint."""
    out = train_tiny_run(tmp_path / "r", epochs=2)
    evaluate_run(out)
    assert (out / "eval_test.json").is_file() and (out / "eval_test.png").is_file()
    with caplog.at_level("WARNING"):
        train_tiny_run(out, epochs=1)
    assert f"{out} held an earlier run: it is replaced" in caplog.text
    assert not (out / "eval_test.json").exists() and not (out / "eval_test.png").exists()
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
