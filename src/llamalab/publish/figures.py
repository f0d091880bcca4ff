"""Figures drawn from the records with matplotlib, byte-identical when drawn twice from the same records."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from llamalab.evaluation.compare import Comparison, SystemRow, n_range  # noqa: E402
from llamalab.runs.files import write_bytes_atomic  # noqa: E402
from llamalab.studies.quantization import QuantRow  # noqa: E402
from llamalab.studies.scaling import ScalingResult  # noqa: E402
from llamalab.studies.sweep import SweepResult  # noqa: E402

# No dates, versions or random ids inside the files: the same records give the same bytes.
_METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
}
_STYLE = {
    "svg.hashsalt": "llamalab", "svg.fonttype": "none", "font.size": 10, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100,
    "text.parse_math": False,  # labels are text: "gpt ($2.50 in, $10 out)" is not mathtext (nor an error)
}
_BLUE, _ORANGE, _GREY = "#2563eb", "#ea580c", "#6b7280"
# Every system and comparator gets a line: past the last style (colour) the cycle repeats, thicker (another marker)
_LINE_STYLES = ("--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2)), (0, (4, 2, 1, 2)))
_COLORS = (_BLUE, _ORANGE, _GREY, "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04")
_MARKERS = ("o", "s", "^", "D", "v")
_CURVES = tuple(c for c in _COLORS if c not in (_ORANGE, _GREY))  # the reference lines' colours mean API and base


def _line(i: int) -> dict:
    """The i-th reference line's style."""
    return {"linestyle": _LINE_STYLES[i % len(_LINE_STYLES)], "linewidth": 1.2 + 0.8 * (i // len(_LINE_STYLES))}


def _series(i: int) -> dict:
    """The i-th data series' colour and marker."""
    return {"color": _COLORS[i % len(_COLORS)], "marker": _MARKERS[(i // len(_COLORS)) % len(_MARKERS)]}


def save(fig: Figure, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    """Write `fig` as stem.<format> for each format (atomically); returns the paths."""
    import io

    paths = []
    for fmt in formats:
        buffer = io.BytesIO()
        with plt.rc_context(_STYLE):
            fig.savefig(buffer, format=fmt, metadata=_METADATA[fmt], bbox_inches="tight")
        path = stem.with_suffix(f".{fmt}")
        write_bytes_atomic(path, buffer.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths


def loss_curve(history: list[dict], title: str) -> Figure:
    """Training loss per logged step."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot([h["step"] for h in history], [h["loss"] for h in history], color=_BLUE, linewidth=1.5)
        ax.set(xlabel="optimizer step", ylabel="training loss", title=title)
        ax.set_ylim(bottom=0)
    return fig


def metric_by_system(comparison: Comparison) -> Figure:
    """The ranking metric of every system with its 95% CI, best at the top."""
    metric, rows = comparison.metric, comparison.systems
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(7, 0.9 + 0.5 * len(rows)))
        y = list(range(len(rows)))[::-1]
        estimates = [r.metrics[metric].estimate for r in rows]
        lows = [r.metrics[metric].estimate - r.metrics[metric].low for r in rows]
        highs = [r.metrics[metric].high - r.metrics[metric].estimate for r in rows]
        colors = [_ORANGE if r.kind == "api" else _BLUE for r in rows]
        ax.barh(y, estimates, color=colors, alpha=0.85, height=0.6)
        ax.errorbar(estimates, y, xerr=[lows, highs], fmt="none", ecolor="black", capsize=3, linewidth=1)
        ax.set_yticks(y, [_wrap(r.system) for r in rows])
        ax.set_xlim(0, max(1.0, max(r.metrics[metric].high for r in rows)))
        ax.set(xlabel=f"{metric} (95% CI)", title=f"{comparison.task} ({comparison.split}, n = {n_range(rows)})")
        ax.grid(axis="y", visible=False)
    return fig


def metric_vs_cost(comparison: Comparison) -> Figure | None:
    """The ranking metric against cost per 1,000 examples; None when no system has a known cost."""
    metric = comparison.metric
    rows = [r for r in comparison.systems if r.cost_per_1k_usd is not None]
    if not rows:
        return None
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for r in rows:
            m = r.metrics[metric]
            error = [[m.estimate - m.low], [m.high - m.estimate]]
            ax.errorbar(r.cost_per_1k_usd, m.estimate, yerr=error, fmt="o", capsize=3,
                        color=_ORANGE if r.kind == "api" else _BLUE)
            ax.annotate(_wrap(r.system, 28), (r.cost_per_1k_usd, m.estimate), textcoords="offset points",
                        xytext=(6, 4), fontsize=8)
        local = sorted({r.cost_basis for r in rows if r.kind != "api"})
        xlabel = "USD per 1,000 examples (API list prices" + (f"; {local[0]})" if local else ")")
        ax.set(xlabel=xlabel, ylabel=f"{metric} (95% CI)",
               title=f"{comparison.task}: {metric} against cost")
        free = [r.system for r in comparison.systems if r.cost_per_1k_usd is None]
        if free:
            fig.text(0.01, -0.02, _wrap("No known cost: " + "; ".join(free), 110), fontsize=7, color=_GREY, va="top")
    return fig


def scaling(comparison: Comparison, curves: dict[str, list[tuple[int, SystemRow]]]) -> Figure:
    """The lab's central question: the fine-tuned model's metric against its number of training examples, with
    the systems that were not fine-tuned (zero-/few-shot base models, API models; not a quantization study's
    exports) as horizontal reference lines."""
    metric = comparison.metric
    references = [r for r in comparison.systems if r.kind != "finetuned" and not r.quantized][:4]
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for i, (name, points) in enumerate(curves.items()):  # each curve told apart by colour and marker
            sizes = [size for size, _ in points]
            m = [row.metrics[metric] for _, row in points]
            ax.errorbar(sizes, [x.estimate for x in m], yerr=[[x.estimate - x.low for x in m],
                                                                 [x.high - x.estimate for x in m]],
                        capsize=3, label=f"{name} (fine-tuned; latest run per size)",
                        color=_CURVES[i % len(_CURVES)], marker=_MARKERS[i % len(_MARKERS)])
        for i, row in enumerate(references):
            m = row.metrics[metric]
            color = _ORANGE if row.kind == "api" else _GREY
            ax.axhline(m.estimate, color=color, label=_wrap(row.system, 40), **_line(i))
            ax.axhspan(m.low, m.high, color=color, alpha=0.08)
        ax.set_xscale("log")
        sizes = sorted({size for points in curves.values() for size, _ in points})
        ax.set_xticks(sizes, [f"{size:,}" for size in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set(xlabel="training examples (log scale)", ylabel=f"{metric} (95% CI)",
               title=f"{comparison.task}: fine-tuning data against the baselines")
        ax.legend(fontsize=7, loc="best")
    return fig


def study_curve(result: ScalingResult, title: str) -> Figure:
    """A scaling study: the fine-tunes' metric (mean over seeds, band over examples and seeds) against training
    examples, each comparator as a line with its CI band, and a marker at each crossover."""
    metric = result.metric
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        sizes = [p.size for p in result.curve]
        ax.plot(sizes, [p.interval.estimate for p in result.curve], marker="o", color=_BLUE,
                label=f"fine-tuned (mean of {_seed_counts([p.seeds for p in result.curve])} seed(s))")
        ax.fill_between(sizes, [p.interval.low for p in result.curve], [p.interval.high for p in result.curve],
                        color=_BLUE, alpha=0.15, linewidth=0)
        for i, crossover in enumerate(result.crossovers):
            m = crossover.interval
            ax.axhline(m.estimate, color=_GREY, label=_wrap(crossover.comparator, 40), **_line(i))
            ax.axhspan(m.low, m.high, color=_GREY, alpha=0.08)
            if crossover.size is not None:
                point = next(p for p in result.curve if p.size == crossover.size)
                ax.plot([crossover.size], [point.interval.estimate], marker="*", markersize=12, color=_ORANGE,
                        linestyle="none")
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{size:,}" for size in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set(xlabel="training examples (log scale)", ylabel=f"{metric} (95% band)", title=title)
        ax.legend(fontsize=7, loc="best")
    return fig


def sweep_settings(result: SweepResult, title: str) -> Figure:
    """A sweep study: each setting's metric (mean over seeds, 95% band), best at the top; the ones worse than the
    best after correction in grey."""
    points = list(reversed(result.points))  # matplotlib draws the first row at the bottom
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.4 * len(points)))
        for y, point in enumerate(points):
            m = point.interval
            ax.errorbar([m.estimate], [y], xerr=[[m.estimate - m.low], [m.high - m.estimate]], marker="o",
                        capsize=3, color=_GREY if point.worse else _BLUE)
        ax.set_yticks(range(len(points)), [_wrap(p.setting, 40) for p in points])
        ax.set(xlabel=f"{result.metric} (mean over seeds, 95% band)", title=title)
    return fig


def quant_tradeoff(rows: list[QuantRow], metric: str, title: str) -> Figure:
    """A quantization study: each system's metric (95% CI) against its GGUF file size, one line per system through
    its types, each point labelled with its type."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        systems = list(dict.fromkeys(row.system for row in rows))
        for i, system in enumerate(systems):
            color = _series(i)["color"]
            points = sorted((r for r in rows if r.system == system and r.size_mib is not None),
                            key=lambda r: r.size_mib)
            m = [r.interval for r in points]
            ax.errorbar([r.size_mib for r in points], [x.estimate for x in m],
                        yerr=[[x.estimate - x.low for x in m], [x.high - x.estimate for x in m]],
                        capsize=3, label=_wrap(system, 40), **_series(i))
            for row in points:
                ax.annotate(row.type, (row.size_mib, row.interval.estimate), textcoords="offset points",
                            xytext=(5, 5), fontsize=7, color=color)
        ax.set(xlabel="GGUF file size (MiB)", ylabel=f"{metric} (95% CI)", title=title)
        ax.legend(fontsize=7, loc="best")
    return fig


def _wrap(text: str, width: int = 34) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _seed_counts(seeds: list[int]) -> str:
    """"3", or "1-3" where the sizes have different numbers of finished seeds."""
    return str(seeds[0]) if min(seeds) == max(seeds) else f"{min(seeds)}-{max(seeds)}"
