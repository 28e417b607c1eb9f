"""``dynadapter bench recipes`` on a tiny random ViT: the candidates' cells, the choice on validation,
the page. A benchmark, not a test of accuracy: nothing here asserts a learned number."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from dynadapter.bench.cells import BENCH_FILE
from dynadapter.bench.recipes import recipes_section, render_markdown
from dynadapter.errors import ConfigError
from tests.bench.test_bench_accuracy import TINY, bench


@pytest.fixture(scope="module")
def recipes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("recipes")
    docs, root = tmp / "docs", tmp / "cells"
    tiny = [a for a in TINY if a not in ("--methods", "adapter")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bench("recipes", *tiny, "--recipes", "default", "--train-arg", "smoothing=0.1", "--root", str(root),
              "--docs", str(docs))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return docs, root


def test_each_recipe_has_its_cells_and_the_default_shares_the_suites(recipes: tuple[Path, Path]) -> None:
    _, root = recipes
    cells = sorted(p.parent.name for p in (root / "digits").glob(f"*/{BENCH_FILE}"))
    assert len(cells) == 2 and cells[0] == "adapter-dyn" and cells[1].startswith("adapter-dyn-r")
    custom = json.loads((root / "digits" / cells[1] / BENCH_FILE).read_text())["options"]
    assert custom["smoothing"] == 0.1
    assert json.loads((root / "digits" / cells[0] / BENCH_FILE).read_text())["options"]["smoothing"] == 0.0


def test_the_choice_is_the_best_balanced_accuracy_on_validation(recipes: tuple[Path, Path]) -> None:
    docs, root = recipes
    section = json.loads((docs / "results.json").read_text())["recipes"]
    rows = {r["recipe"]: r for r in section["rows"]}
    assert set(rows) == {"default", "custom"} and rows["custom"]["options"] == {"smoothing": 0.1}
    for name, row in rows.items():
        cell = "adapter-dyn" if name == "default" else next((root / "digits").glob("adapter-dyn-r*")).name
        result = json.loads((root / "digits" / cell / BENCH_FILE).read_text())["result"]
        assert row["complete"] and row["mean"] == row["tasks"]["digits"]  # one task, one seed
        assert row["mean"] == {
            "val_acc": result["val_modes"]["balanced"]["acc"],
            "acc": result["modes"]["balanced"]["acc"],
            "shifted_acc": result["shifted"]["modes"]["balanced"]["acc"],
            "saved": result["modes"]["balanced"]["saved"],
        }
    best = max(rows.values(), key=lambda r: r["mean"]["val_acc"])["recipe"]
    assert section["chosen"] == best
    page = (docs / "results.md").read_text()
    assert "## Training recipes" in page and f"Chosen on validation: **{best}**." in page
    chosen = f"**{best}** (chosen)"
    assert f"| {chosen if best == 'custom' else 'custom'} | smoothing=0.1 | mean |" in page
    assert f"| {chosen if best == 'default' else 'default'} | dynadapter train's defaults | mean |" in page


def test_a_tie_on_validation_keeps_the_first_listed_recipe() -> None:
    """Measured on the suite: default and regularise reached the same validation images on the four
    tasks (98.5/94.0/71.5/100 against 99.5/93.0/71.5/100), whose means differ as floats only
    (0.9099999999999999 against 0.91); the tie goes to the first listed, the default."""

    def cell(val_acc: float) -> dict[str, Any]:
        balanced = {"balanced": {"acc": val_acc, "saved": 0.5}}
        return {"val_modes": balanced, "modes": balanced, "shifted": {"modes": balanced}}

    tasks = ["digits", "mnist", "elpv", "elpv-type"]
    measured = {"default": [0.985, 0.94, 0.715, 1.0], "regularise": [0.995, 0.93, 0.715, 1.0]}
    results = {name: {(t, 0): cell(v) for t, v in zip(tasks, vals, strict=True)} for name, vals in measured.items()}
    args = argparse.Namespace(petl="adapter", seeds=[0])
    section = recipes_section(results, {name: {} for name in measured}, tasks, args, {})
    assert [r["mean"]["val_acc"] for r in section["rows"]] == [0.9099999999999999, 0.91]
    assert section["chosen"] == "default" and section["tied"] == ["regularise"]
    assert "Chosen on validation: **default** (tied with regularise; a tie goes to the first listed)." in (
        render_markdown({"recipes": {**section, "config": {"backbone": "b", "img_size": 112, "epochs": 8}}})
    )
    flipped = recipes_section(dict(reversed(results.items())), {name: {} for name in measured}, tasks, args, {})
    assert flipped["chosen"] == "regularise"
    # A real difference still decides: one more validation image on one task.
    results["regularise"]["mnist", 0] = cell(0.935)
    decided = recipes_section(results, {name: {} for name in measured}, tasks, args, {})
    assert decided["chosen"] == "regularise" and decided["tied"] == []


def test_a_seed_not_finished_means_no_choice(recipes: tuple[Path, Path], tmp_path: Path) -> None:
    """Seed 1 never ran: the recipes are not complete, none is chosen, the missing cells are named."""
    _, root = recipes
    tiny = [a for a in TINY if a not in ("--methods", "adapter", "--seeds", "0")]
    bench("recipes", *tiny, "--seeds", "0,1", "--recipes", "default", "--report-only", "--root", str(root),
          "--docs", str(tmp_path))  # fmt: skip
    section = json.loads((tmp_path / "results.json").read_text())["recipes"]
    [row] = section["rows"]
    assert row["complete"] is False and row["missing"] == ["digits-seed1"] and row["mean"] is None
    assert row["tasks"]["digits"] is not None  # seed 0's numbers are still shown
    assert section["chosen"] is None
    assert "Cells not finished: default: digits-seed1" in (tmp_path / "results.md").read_text()


def test_a_custom_recipe_equal_to_a_candidate_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="same recipe as 'default'"):
        bench("recipes", *TINY[:-4], "--recipes", "default", "--train-arg", "hflip=0", "--root", str(tmp_path))
    # Hyphens as on dynadapter train's command line name the same option.
    with pytest.raises(ConfigError, match="same recipe as 'augment'"):
        bench("recipes", "--recipes", "augment", "--train-arg", "crop-scale=0.35,1", "--train-arg",
              "auto-augment=rand-m9-mstd0.5", "--train-arg", "smoothing=0.1", "--root", str(tmp_path))  # fmt: skip


def test_an_unknown_recipe_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        bench("recipes", "--recipes", "default,heavy")
