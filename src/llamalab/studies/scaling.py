"""The scaling study's answer: the learning curve and where fine-tuning overtakes each comparator.

For each training-set size the fine-tuned systems (one per seed) are scored on the same examples. The curve's
point is the mean over seeds; its band is a percentile bootstrap over test examples and seeds together. Against
each comparator, every size gets a paired bootstrap test of (mean over seeds) minus comparator on the examples both
saw; the p-values are Holm-corrected across sizes, and the crossover is the smallest size that is better with
corrected p < 0.05, reported with the sizes that bracket it (Le Scao & Rush 2021 ask the same question of prompts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llamalab.config import LlamalabError
from llamalab.evaluation import stats
from llamalab.evaluation.compare import format_p, signed
from llamalab.evaluation.metrics import row_statistic
from llamalab.evaluation.stats import ALPHA
from llamalab.runs.record import RunRecord, read_predictions
from llamalab.runs.schema import Interval
from llamalab.studies.run import CellState

RESAMPLES = 2000


@dataclass(frozen=True)
class CurvePoint:
    size: int  # training examples its fine-tunes trained on (their mean over seeds, should they differ)
    seeds: int  # fine-tunes behind the point
    interval: Interval  # mean over seeds, band over examples and seeds
    runs: tuple[str, ...]  # the eval run ids


@dataclass(frozen=True)
class SizeTest:
    size: int
    delta: float  # mean over seeds minus the comparator
    p_value: float
    p_holm: float
    n: int

    @property
    def better(self) -> bool:
        return self.delta > 0 and self.p_holm < ALPHA


@dataclass(frozen=True)
class Crossover:
    comparator: str  # its label
    run: str
    interval: Interval
    tests: tuple[SizeTest, ...]

    @property
    def size(self) -> int | None:
        """The smallest size whose fine-tunes beat the comparator (Holm-corrected), if any."""
        return next((t.size for t in self.tests if t.better), None)

    def sentence(self) -> str:
        """What the tests show, and no more: the first size significantly better, and any larger one that is not
        (being better at one size does not make every larger one better)."""
        sizes = [t.size for t in self.tests]
        if self.size is None:
            return (f"No training-set size tried is significantly better than {self.comparator} (Holm-corrected, up "
                    f"to {max(sizes):,} examples).")
        below = [s for s in sizes if s < self.size]
        bracket = f", between {below[-1]:,} (not significantly better) and {self.size:,}" if below else \
            f", already at the smallest size tried ({self.size:,})"
        test = next(t for t in self.tests if t.size == self.size)
        not_after = [t.size for t in self.tests if t.size > self.size and not t.better]
        after = (f" Larger sizes not significantly better: {', '.join(f'{s:,}' for s in not_after)}."
                 if not_after else "")
        return (f"Fine-tuning is first significantly better than {self.comparator} at {self.size:,} training "
                f"examples{bracket} (Δ {signed(test.delta)}, Holm-corrected p {format_p(test.p_holm)}, n = "
                f"{test.n:,}).{after}")


@dataclass(frozen=True)
class Untested:
    """A comparator that shares no test example with the fine-tunes of some size: no test, no crossover."""

    comparator: str
    run: str
    sizes: tuple[int, ...]  # the sizes it shares nothing with

    def sentence(self) -> str:
        return (f"{self.comparator} (eval {self.run}) shares no test example with the fine-tunes at "
                f"{', '.join(f'{s:,}' for s in self.sizes)} training examples, so it was not compared: evaluate it "
                "with the study's `eval` settings.")


@dataclass(frozen=True)
class ScalingResult:
    metric: str
    curve: tuple[CurvePoint, ...]
    crossovers: tuple[Crossover, ...]
    untested: tuple[Untested, ...] = ()


def _rows(record: RunRecord) -> dict[str, dict]:
    return read_predictions(record.folder)


def scaling_result(states: list[CellState], comparators: list[tuple[str, RunRecord]], metric: str,
                   labels: list[str] | None = None, resamples: int = RESAMPLES) -> ScalingResult:
    """The curve over training-set sizes and the crossover with each (label, eval record) comparator."""
    by_asked: dict[int, list[CellState]] = {}  # the grid's sizes
    for state in states:
        if state.status == "finished" and state.eval is not None:
            by_asked.setdefault(int(state.cell.overrides["train_examples"]), []).append(state)
    # A point sits at the examples its fine-tunes trained on (fewer than asked when some were too long; the mean
    # over seeds, should they differ), so the study's figure and the task page's put the same run at one size.
    by_size: dict[int, list[RunRecord]] = {}
    asked: dict[int, int] = {}
    for grid in sorted(by_asked):
        size = round(float(np.mean([trained_size(state) for state in by_asked[grid]])))
        if size in asked:
            raise LlamalabError(f"train_examples {asked[size]:,} and {grid:,} both trained on {size:,} examples (the "
                             "split has no more): keep only the smaller in the grid")
        asked[size], by_size[size] = grid, [state.eval for state in by_asked[grid]]
    if not by_size:
        raise ValueError("no finished cells: nothing to draw")
    predictions = {r.id: _rows(r) for records in by_size.values() for r in records}
    curve = []
    for size in sorted(by_size):
        runs = by_size[size]
        shared = sorted(set.intersection(*(set(predictions[r.id]) for r in runs)))
        if not shared:
            raise LlamalabError(no_common_examples(f"{size:,} training examples", runs))
        seeds = [row_statistic(metric, [predictions[r.id][i] for i in shared], labels) for r in runs]
        curve.append(CurvePoint(size, len(runs), _seed_interval(seeds, resamples), tuple(r.id for r in runs)))
    crossovers, untested = [], []
    for label, record in comparators:
        theirs = _rows(record)
        shared_at = {size: sorted(set(theirs).intersection(*(set(predictions[r.id]) for r in by_size[size])))
                     for size in sorted(by_size)}
        if none := tuple(size for size, shared in shared_at.items() if not shared):
            untested.append(Untested(label, record.id, none))
            continue
        tests = []
        for size, shared in shared_at.items():
            runs = by_size[size]
            mean = _mean_of([row_statistic(metric, [predictions[r.id][i] for i in shared], labels) for r in runs])
            other = row_statistic(metric, [theirs[i] for i in shared], labels)
            result = stats.paired_bootstrap_statistic(mean, other, metric, n_resamples=resamples)
            tests.append((size, result.delta, result.p_value, len(shared)))
        adjusted = stats.holm([p for _, _, p, _ in tests])
        if metric not in record.run.metrics:
            raise LlamalabError(f"comparator run {record.id} has no recorded {metric}")
        crossovers.append(Crossover(label, record.id, record.run.metrics[metric], tuple(
            SizeTest(size, delta, p, p_holm, n) for (size, delta, p, n), p_holm in zip(tests, adjusted, strict=True))))
    return ScalingResult(metric, tuple(curve), tuple(crossovers), tuple(untested))


def no_common_examples(group: str, runs: list[RunRecord]) -> str:
    """Why a point of seeds cannot be drawn: their evaluations scored no example in common (one's predictions
    file is gone, or they saw different examples)."""
    from llamalab.runs.record import PREDICTIONS

    if missing := [r for r in runs if not (r.folder / PREDICTIONS).is_file()]:
        return (f"{group}: {', '.join(str(r.folder / PREDICTIONS) for r in missing)} is missing, so the "
                "evaluation's examples cannot be paired: restore it (e.g. from git), or move the run folder out of "
                "runs/ and run the study again")
    return (f"{group}: its evaluations ({', '.join(r.id for r in runs)}) share no test example, so their mean "
            "cannot be taken; the task's data or the study's `eval` settings changed between them. Delete the "
            "stale ones (or the cells' runs) and run the study again")


def trained_size(state: CellState) -> int:
    """The examples a cell's fine-tune trained on, as its record says (fewer than asked when some were too long
    for max_length); the size asked for where an older record does not say."""
    used = state.train.run.data_used if state.train is not None else None
    return used.train_examples if used is not None else int(state.cell.overrides["train_examples"])


def _mean_of(seeds: list[stats.RowStatistic]) -> stats.RowStatistic:
    """The mean over seeds, as one statistic of the (shared) examples: its estimate the mean of the seeds' own
    (as the interval's), a resample where a seed's metric is undefined undefined (NaN)."""
    return stats.RowStatistic(lambda idx: np.mean([s(idx) for s in seeds], axis=0), seeds[0].n,
                              float(np.mean([s.estimate for s in seeds])))


def _seed_interval(seeds: list[stats.RowStatistic], resamples: int, seed: int = 0) -> Interval:
    """Mean over seeds, with a percentile bootstrap that resamples the examples and the seeds together."""
    n, k = seeds[0].n, len(seeds)
    idx = stats.resample_indices(n, resamples, seed)
    values = np.stack([s(idx) for s in seeds])  # seeds x resamples
    picks = np.random.default_rng(seed + 1).integers(0, k, size=(resamples, k))
    replicates = values[picks, np.arange(resamples)[:, None]].mean(axis=1)
    estimate = float(np.mean([s.estimate for s in seeds]))
    low, high, left_out = stats.percentiles(replicates, estimate)
    method = f"percentile bootstrap over examples and {k} seed(s), {resamples} resamples, seed {seed}{left_out}"
    return Interval(estimate=estimate, low=low, high=high, n=n, method=method)
