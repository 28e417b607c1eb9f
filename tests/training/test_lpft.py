"""LP-FT (`--head-init probe`) and WiSE-FT (`--wise-ft`) in `dynadapter train` (training/linear_probe.py,
training/wise_ft.py): the probe-initialised heads answer as scikit-learn's probes, and the interpolation's
ends are the two models it joins."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from dynadapter import cli
from dynadapter.errors import ConfigError
from dynadapter.models.balanced_heads import HeadConfig
from dynadapter.training import run_dir as rd
from dynadapter.training.data import ImageDataset, run_split
from dynadapter.training.linear_probe import head_features, make_linear
from dynadapter.training.trainer import val_objective
from dynadapter.training.wise_ft import WISE_FT_ALPHAS, choose_alpha, interpolate
from tests.support.tiny import randomize_trainable, tiny_model, train_tiny_run

#: One exit of each head kind, the mlp ones with their linear path.
HEADS = "transformer:1,mlp:2,mlp:1,linear"


@pytest.fixture(scope="module")
def lpft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("lpft") / "r", heads=HEADS, head_init="probe", wise_ft=True)


def split_features(model: torch.nn.Module, run: Path, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    config = rd.read_config(run)
    data = ImageDataset(run_split(run, config, split), config.preprocessing, config.train.max_pixels)
    return head_features(model, data)


def probe_initialised(run: Path) -> torch.nn.Module:
    config = rd.read_config(run)
    model = rd.build_model(config.backbone, config.model)
    model.load_trainable_state_dict(load_file(str(run / rd.PROBE_INIT_STATE)))
    return model.eval()


def test_probe_initialised_exits_answer_as_the_scikit_learn_probes_on_val(lpft_run: Path) -> None:
    model = probe_initialised(lpft_run)
    fits = json.loads((lpft_run / rd.PROBE_INIT).read_text())["heads"]
    train_x, train_y = split_features(model, lpft_run, "train")
    val_x, val_y = split_features(model, lpft_run, "val")
    config = rd.read_config(lpft_run)
    with torch.no_grad():
        logits = torch.stack(model(val_images(lpft_run)[0]))
    assert [h.kind for h in config.model.heads] == ["transformer", "mlp", "mlp", "linear"]
    assert [h.linear_path for h in config.model.heads] == [True] * 4
    for k, fit in enumerate(fits):
        scaler = StandardScaler().fit(train_x[k])
        clf = LogisticRegression(C=fit["C"], max_iter=1000).fit(scaler.transform(train_x[k]), train_y)
        expected = clf.predict(scaler.transform(val_x[k]))
        np.testing.assert_array_equal(logits[k].argmax(dim=1).numpy(), expected)
        assert fit["val_acc"] == float((expected == val_y).mean())


def test_a_probe_initialised_head_answers_as_its_linear_path_on_the_stage_tokens() -> None:
    kinds = [HeadConfig("transformer"), HeadConfig("mlp", 2.0), HeadConfig("linear")]
    model = tiny_model(heads=[dataclasses.replace(h, linear_path=True) for h in [*kinds, kinds[-1]]])
    model.train()  # with dropout before the head's own classifier: the linear path reads past it
    for head in model.heads:
        head.set_dropout(0.5)
    tokens = torch.randn(3, 17, 32)
    with torch.no_grad():
        for k, head in enumerate(model.heads):
            make_linear(head, k)
            plain = model.heads[k].norm(tokens)[:, 0]  # the tiny ViT pools the class token
            torch.testing.assert_close(head.features(tokens), plain, rtol=0, atol=0)
            torch.testing.assert_close(head(tokens), head.linear(plain), rtol=0, atol=0)


def test_a_transformer_head_without_a_linear_path_classifies_its_blocks_tokens() -> None:
    head = tiny_model(heads=[HeadConfig("transformer")] + [HeadConfig("linear")] * 3).heads[0].eval()
    tokens = torch.randn(3, 17, 32)
    with torch.no_grad():
        torch.testing.assert_close(head(tokens), head.fc(head.norm(head.blocks(tokens))[:, 0]), rtol=0, atol=0)


def test_a_head_without_a_linear_path_cannot_hold_a_probe() -> None:
    model = tiny_model(heads=[HeadConfig("linear")] * 4)
    with pytest.raises(ConfigError, match="exit 0's head has no linear path to hold the probe"):
        make_linear(model.heads[0], 0)


def test_wise_ft_records_every_alpha_and_keeps_the_chosen_mix(lpft_run: Path, tmp_path: Path) -> None:
    record = json.loads((lpft_run / rd.WISE_FT).read_text())
    assert [row["alpha"] for row in record["alphas"]] == list(WISE_FT_ALPHAS)
    # The same run without WiSE-FT keeps the fine-tuned weights: each alpha's mix with the anchor scores
    # on val as recorded, the best one (ties: the larger alpha) is chosen, and the checkpoint holds it.
    finetuned = load_file(str(train_tiny_run(tmp_path / "ft", heads=HEADS, head_init="probe") / rd.CHECKPOINT))
    anchor = load_file(str(lpft_run / rd.PROBE_INIT_STATE))
    model = probe_initialised(lpft_run)
    images, targets = val_images(lpft_run)
    for row in record["alphas"]:
        model.load_trainable_state_dict(interpolate(anchor, finetuned, row["alpha"]))
        with torch.no_grad():
            accuracy, neg_loss = val_objective(torch.stack(model(images)), targets)
        assert (accuracy, -neg_loss) == (pytest.approx(row["val_acc"]), pytest.approx(row["val_loss"], rel=1e-5))
    best = max(record["alphas"], key=lambda r: (r["val_acc"], -r["val_loss"], r["alpha"]))
    assert record["alpha"] == best["alpha"]
    kept = load_file(str(lpft_run / rd.CHECKPOINT))
    for name, tensor in interpolate(anchor, finetuned, record["alpha"]).items():
        torch.testing.assert_close(kept[name], tensor)


def val_images(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    config = rd.read_config(run)
    data = ImageDataset(run_split(run, config, "val"), config.preprocessing, config.train.max_pixels)
    return torch.stack([data[i][0] for i in range(len(data))]), torch.as_tensor(data.targets)


def test_both_switches_are_recorded_in_config_json(lpft_run: Path) -> None:
    train_options = json.loads((lpft_run / rd.CONFIG).read_text())["train"]
    assert (train_options["head_init"], train_options["wise_ft"]) == ("probe", True)


def test_interpolation_at_0_and_1_gives_the_anchor_and_the_trained_model() -> None:
    model = tiny_model(heads=[HeadConfig("transformer"), HeadConfig("mlp", 2.0, linear_path=True)] * 2).eval()
    anchor = model.trainable_state_dict()
    randomize_trainable(model)
    trained = model.trainable_state_dict()
    x = torch.randn(2, 3, 32, 32)
    ends = {}
    for alpha, state in ((0.0, anchor), (1.0, trained)):
        model.load_trainable_state_dict(state)
        with torch.no_grad():
            ends[alpha] = model(x)
    for alpha in (0.0, 1.0):
        model.load_trainable_state_dict(interpolate(anchor, trained, alpha))
        with torch.no_grad():
            for got, want in zip(model(x), ends[alpha], strict=True):
                torch.testing.assert_close(got, want)


def test_ties_between_alphas_go_to_the_larger_one() -> None:
    model = tiny_model(petl="none", heads=[HeadConfig("linear")] * 4)
    anchor = model.trainable_state_dict()
    randomize_trainable(model)
    record = choose_alpha(model, anchor, model.trainable_state_dict(), lambda m: (0.5, -1.0))
    assert record["alpha"] == 1.0 and [r["alpha"] for r in record["alphas"]] == list(WISE_FT_ALPHAS)


def test_train_help_offers_both_switches_off_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--head-init {random,standardised,probe}" in text and "--wise-ft, --no-wise-ft" in text
    assert "C chosen on val) (default: random)" in text and "validates best (default: False)" in text
