"""Figures draw every system and comparator they are given (none silently left off past a palette's end)."""

from __future__ import annotations

import pytest

from llamalab.runs.schema import Interval
from llamalab.studies.quantization import QuantRow
from llamalab.studies.scaling import Crossover, CurvePoint, ScalingResult, SizeTest


def interval(x: float) -> Interval:
    return Interval(estimate=x, low=x - 0.05, high=x + 0.05, n=100, method="test")


def legend_labels(fig) -> list[str]:
    return [text.get_text() for ax in fig.axes if ax.get_legend() for text in ax.get_legend().get_texts()]


@pytest.mark.parametrize("systems", [1, 5, 6, 11, 17])
def test_quantization_figure_has_a_line_per_system(systems: int) -> None:
    from llamalab.publish.figures import quant_tradeoff

    rows = [QuantRow(f"system-{s}", quant, size, None, interval(0.5 + 0.01 * s), None, None, None, None)
            for s in range(systems) for quant, size in (("f16", 300.0), ("q8_0", 160.0))]
    fig = quant_tradeoff(rows, "accuracy", "t")
    assert legend_labels(fig) == [f"system-{s}" for s in range(systems)]
    drawn = [c for c in fig.axes[0].containers if c.get_label().startswith("system-")]
    assert len({(c.lines[0].get_color(), c.lines[0].get_marker()) for c in drawn}) == systems  # none look alike


@pytest.mark.parametrize("comparators", [1, 4, 5, 9, 20])
def test_scaling_figure_has_a_line_per_comparator(comparators: int) -> None:
    from llamalab.publish.figures import study_curve

    curve = tuple(CurvePoint(size, 2, interval(0.6), ("e",)) for size in (10, 100))
    crossovers = tuple(Crossover(f"comparator-{c}", "r", interval(0.55), (SizeTest(10, 0.05, 0.2, 0.4, 100),
                                                                          SizeTest(100, 0.05, 0.2, 0.4, 100)))
                       for c in range(comparators))
    fig = study_curve(ScalingResult("accuracy", curve, crossovers), "t")
    labels = legend_labels(fig)
    assert [label for label in labels if label.startswith("comparator-")] == \
        [f"comparator-{c}" for c in range(comparators)]
    lines = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("comparator-")]
    assert len({(str(line._unscaled_dash_pattern), line.get_linewidth()) for line in lines}) == comparators


@pytest.mark.parametrize("curves", [1, 2, 7, 12])
def test_the_task_scaling_figure_tells_its_curves_apart(curves: int) -> None:
    """One experiment at two learning rates is two curves: each its own colour and marker (they were all blue
    circles, so the legend could not say which points were which)."""
    from types import SimpleNamespace

    from llamalab.publish.figures import scaling

    board = SimpleNamespace(metric="accuracy", systems=[], task="t")
    points = {f"curve-{c}": [(size, SimpleNamespace(metrics={"accuracy": interval(0.5 + 0.01 * c)}))
                             for size in (10, 100)] for c in range(curves)}
    fig = scaling(board, points)
    drawn = [c for c in fig.axes[0].containers if c.get_label().startswith("curve-")]
    assert len(drawn) == curves
    assert len({(c.lines[0].get_color(), c.lines[0].get_marker()) for c in drawn}) == curves


def test_labels_with_dollar_signs_are_drawn_as_written(tmp_path) -> None:
    """A label with two `$` was drawn as mathtext (signs gone, italics), or stopped the build ("Unknown symbol")."""
    from llamalab.publish.figures import quant_tradeoff, save

    names = ["gpt ($2.50 in, $10 out)", "bad $\\notacommand{$ label"]
    rows = [QuantRow(name, quant, size, None, interval(0.6), None, None, None, None)
            for name in names for quant, size in (("f16", 300.0), ("q8_0", 160.0))]
    fig = quant_tradeoff(rows, "accuracy", "t")
    [svg] = save(fig, tmp_path / "f", ("svg",))
    text = svg.read_text()
    assert "gpt ($2.50 in, $10 out)" in text and "bad $\\notacommand{$ label" in text
