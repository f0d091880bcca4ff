"""The sweep study's answer: each setting of the grid (mean over seeds) and whether the best one is really better.

A setting is a cell's overrides without its seed. Its point is the mean over seeds on the examples all its seeds
saw, with the same band as a scaling study's (a percentile bootstrap over examples and seeds together). The best
setting is tested against every other in a paired bootstrap of (mean over seeds) minus (mean over seeds) on the
examples both saw, Holm-corrected across the others: a setting not worse after correction is not told apart from
the best. The best is picked on the very examples it is scored on, so its estimate is optimistic; the caption says
so and that a choice belongs on the dev split.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from llamalab.config import LlamalabError
from llamalab.evaluation import stats
from llamalab.evaluation.metrics import row_statistic
from llamalab.evaluation.stats import ALPHA
from llamalab.runs.record import RunRecord
from llamalab.runs.schema import Interval
from llamalab.studies.run import CellState
from llamalab.studies.scaling import RESAMPLES, _mean_of, _rows, _seed_interval, no_common_examples

AS_WRITTEN = "(the experiment as written)"


@dataclass(frozen=True)
class SweepPoint:
    setting: str  # the overrides without the seed, e.g. "learning_rate=0.0001 lora.r=8"
    seeds: int
    interval: Interval  # mean over seeds, band over examples and seeds
    runs: tuple[str, ...]  # the eval run ids
    delta: float | None = None  # this setting minus the best (None: the best itself)
    p_value: float | None = None
    p_holm: float | None = None
    n_shared: int | None = None  # examples the test against the best used

    @property
    def worse(self) -> bool:
        return self.delta is not None and self.delta < 0 and self.p_holm is not None and self.p_holm < ALPHA

    @property
    def better(self) -> bool:
        """Significantly above the best on the examples both saw (possible when the best's estimate, on all of its
        own examples, ranked it first but the two saw different ones)."""
        return self.delta is not None and self.delta > 0 and self.p_holm is not None and self.p_holm < ALPHA

    @property
    def tested(self) -> bool:
        return self.p_holm is not None


@dataclass(frozen=True)
class SweepResult:
    metric: str
    points: tuple[SweepPoint, ...]  # best first

    @property
    def best(self) -> SweepPoint:
        return self.points[0]

    def sentence(self) -> str:
        best = self.best
        m = best.interval
        text = (f"Best setting: {best.setting}, {self.metric} {m.estimate:.3f} [{m.low:.3f}, {m.high:.3f}] "
                f"(mean of {best.seeds} seed(s)).")
        others = self.points[1:]
        if not others:
            return text
        worse, better = sum(p.worse for p in others), sum(p.better for p in others)
        untested = sum(not p.tested for p in others)
        text += f" {worse} of the {len(others)} other setting(s) are worse at Holm-corrected p < {ALPHA}"
        if better:
            text += f"; {better} are better on the examples both saw"
        if untested:
            text += f"; {untested} share no test examples with it and were not tested"
        apart = len(others) - worse - better - untested
        return text + (f"; {apart} cannot be told apart from it." if apart else ".")


def setting_label(overrides: dict) -> str:
    shown = [f"{key}={value}" for key, value in overrides.items() if key != "seed"]
    return " ".join(shown) or AS_WRITTEN


def sweep_result(states: list[CellState], metric: str, labels: list[str] | None = None,
                 resamples: int = RESAMPLES) -> SweepResult:
    """The finished cells grouped by setting, best first, each tested against the best."""
    by_setting: dict[str, list[RunRecord]] = {}
    for state in states:
        if state.status == "finished" and state.eval is not None:
            by_setting.setdefault(setting_label(state.cell.overrides), []).append(state.eval)
    if not by_setting:
        raise ValueError("no finished cells: nothing to compare")
    predictions = {r.id: _rows(r) for records in by_setting.values() for r in records}

    def seeds_on(runs: list[RunRecord], ids: list[str]) -> list[stats.RowStatistic]:
        return [row_statistic(metric, [predictions[r.id][i] for i in ids], labels) for r in runs]

    points = []
    for setting, runs in by_setting.items():
        shared = sorted(set.intersection(*(set(predictions[r.id]) for r in runs)))
        if not shared:
            raise LlamalabError(no_common_examples(setting, runs))
        points.append(SweepPoint(setting, len(runs), _seed_interval(seeds_on(runs, shared), resamples),
                                 tuple(r.id for r in runs)))
    points.sort(key=lambda p: (-p.interval.estimate, p.setting))
    best, best_runs = points[0], by_setting[points[0].setting]
    others = list(points[1:])
    tests = {}  # index in `others` -> (delta, p, n); a setting sharing no examples with the best is not tested
    for i, point in enumerate(others):
        runs = by_setting[point.setting]
        shared = sorted(set.intersection(*(set(predictions[r.id]) for r in [*best_runs, *runs])))
        if shared:
            result = stats.paired_bootstrap_statistic(_mean_of(seeds_on(runs, shared)),
                                                      _mean_of(seeds_on(best_runs, shared)), metric,
                                                      n_resamples=resamples)
            tests[i] = (result.delta, result.p_value, len(shared))
    # Holm over the tests that ran
    for i, p_holm in zip(tests, stats.holm([p for _, p, _ in tests.values()]), strict=True):
        delta, p_value, n = tests[i]
        others[i] = replace(others[i], delta=delta, p_value=p_value, p_holm=p_holm, n_shared=n)
    return SweepResult(metric, (best, *others))

