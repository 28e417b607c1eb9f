"""The figures people read to pick a mode: labels and legends never hide a point (issue 33, item 5)."""

from pathlib import Path

from matplotlib.transforms import Bbox

from dynadapter.bench.lab.figures import plot_task, task_figure
from dynadapter.training.plots import accuracy_vs_gflops_figure, marker_boxes, plot_accuracy_vs_gflops, plt

SWEEP = [{"gflops": 0.48 + 0.01 * i, "accuracy": 0.90 + 0.002 * i} for i in range(100)]
EXITS = [(0.49, 0.913), (0.84, 0.82), (1.2, 0.944), (1.56, 0.954)]
# fast and balanced/accurate a hair apart: their labels were drawn on top of each other ("fasbalanced/accurate")
MODES = {
    "fast": {"gflops": 0.49, "accuracy": 0.913},
    "balanced": {"gflops": 0.5, "accuracy": 0.915},
    "accurate": {"gflops": 0.5, "accuracy": 0.915},
}


def _overlaps(box: Bbox, others: list[Bbox]) -> list[Bbox]:
    return [other for other in others if box.overlaps(other)]


def test_mode_labels_clear_each_other_and_every_marker() -> None:
    fig = accuracy_vs_gflops_figure(SWEEP, EXITS, MODES, {"linear probe": (1.56, 0.9)}, "mnist")
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    labels = [text for text in ax.texts]
    assert sorted(text.get_text() for text in labels) == ["balanced/accurate", "fast"]
    boxes = [text.get_window_extent(renderer) for text in labels]
    markers = marker_boxes(fig, ax)
    assert not boxes[0].overlaps(boxes[1])
    for text, box in zip(labels, boxes, strict=True):
        assert not _overlaps(box, markers), text.get_text()
    legend = ax.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(ax.get_window_extent(renderer)), "the legend lies outside the axes"
    plt.close(fig)


def test_results_plot_legend_never_covers_the_probe(tmp_path: Path) -> None:
    cell = {"sweep": [(0.5, 0.9), (1.0, 0.95), (1.5, 0.96)], "modes": {"balanced": {"gflops": 0.8, "acc": 0.94}}}
    probe = {"probe": {"gflops": 1.5, "acc": 0.5}}  # lower right: where loc="best" put the legend
    static = {"adapter": {"gflops": 1.5, "acc": 0.96}, "lora": {"gflops": 1.5, "acc": 0.955}}
    methods = ["adapter", "lora"]
    fig = task_figure("mnist", methods, {"adapter": cell, "lora": cell}, static, probe)
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent(renderer)
    assert not _overlaps(legend, marker_boxes(fig, ax))
    assert "frozen probe (best block on val)" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)
    plot_task("mnist", methods, {"adapter": cell}, static, tmp_path / "mnist.png", probe)
    plot_accuracy_vs_gflops(SWEEP, EXITS, MODES, {}, tmp_path / "eval_test.png", "mnist")
    assert (tmp_path / "mnist.png").stat().st_size > 0 and (tmp_path / "eval_test.png").stat().st_size > 0
