"""`llamalab compare`: every system evaluated on a task, with CIs and paired tests against a reference system
(by default the best one)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict
from rich.markup import escape
from rich.table import Table

from llamalab.config import LlamalabError
from llamalab.evaluation import stats
from llamalab.evaluation.metrics import metric_intervals, paired_test, prediction_summary
from llamalab.evaluation.stats import ALPHA, interval_scheme
from llamalab.lab import Lab
from llamalab.runs.record import RunRecord, list_runs, names_run, read_predictions
from llamalab.runs.schema import EvalRun, Interval, PredictionSummary, SystemKey, Usage
from llamalab.tasks.data import current_file_hashes
from llamalab.tasks.task import Task, load_task


class PairedResult(BaseModel):
    """A system against the reference on the examples both saw."""

    model_config = ConfigDict(extra="forbid")

    test: str  # "exact McNemar", "paired bootstrap", or "none: " and why (e.g. "none: no shared examples")
    delta: float | None  # this system's metric minus the reference's
    p_value: float
    n: int
    paired_subset: bool = False  # the two systems saw different examples: n is the shared part
    p_holm: float | None = None  # Holm-corrected for the number of comparisons

    @property
    def significance(self) -> str | None:
        """"worse" or "better" than the reference at Holm-corrected p < ALPHA (better: on the examples both saw,
        when the systems saw different ones), else None."""
        if self.delta is None or self.p_holm is None or self.p_holm >= ALPHA or self.delta == 0:
            return None
        return "worse" if self.delta < 0 else "better"


class SystemRow(BaseModel):
    """One system in a comparison. `metrics` and `predictions` are the run's own, as its eval recorded them."""

    model_config = ConfigDict(extra="forbid")

    system: str  # display label
    run: str
    kind: str
    protocol: str
    n: int
    metrics: dict[str, Interval]
    predictions: PredictionSummary
    usage: Usage | None
    train_run: str | None = None  # the fine-tune a fine-tuned system's weights come from
    quantized: str | None = None  # the GGUF type of a quantization study's export (its weights, quantized)
    vs_reference: PairedResult | None = None  # None for the reference itself
    # added by `compare` and `task_boards` (cost_and_time): the same numbers in the CLI, report and site
    cost_per_1k_usd: float | None = None
    cost_basis: str | None = None
    seconds_per_1k: float | None = None


class Comparison(BaseModel):
    """What `llamalab compare` shows: systems best first, each tested against the reference."""

    model_config = ConfigDict(extra="forbid")

    task: str
    split: str
    metric: str  # the ranking metric
    metrics: list[str]
    best: str
    reference: str
    reference_is_best: bool
    systems: list[SystemRow]
    earlier_data: list[str] = []  # systems left out: evaluated only on the task's earlier data

    def to_json(self) -> dict:
        """As JSON (`compare --json`, the report's results.json): the fields each part was given."""
        return self.model_dump(mode="json", exclude_unset=True)


@dataclass
class Entry:
    record: RunRecord
    predictions: dict[str, dict]  # example id -> prediction row
    label: str = ""  # how tables name the system (derived from the record; unique within a comparison)

    @property
    def run(self) -> EvalRun:
        return self.record.run  # type: ignore[return-value] - entries are eval runs


class Latest(NamedTuple):
    entries: list[Entry]
    earlier_data: list[str]  # systems left out: evaluated on this split only on the task's earlier data


def latest_evals(lab: Lab, task: Task, split: str = "test", only: set[str] | None = None,
                 current_only: bool = True) -> Latest:
    """The finished eval of each system (`SystemKey`: weights, prompt format, shots, protocol, backend) on this
    task split that covers the most examples, the newest of those, made on the task's data as it is now: a quick
    `--limit 20` check made after a full evaluation does not replace it. Labels are derived for display only:
    renaming a system never changes what is paired.

    An evaluation whose recorded data hashes differ from the task's files now saw other examples (or other
    answers) under the same ids: pairing it with a current one would compare unlike things, so it is left out,
    and a system with no evaluation on the current data is named in `earlier_data`."""
    current = current_file_hashes(task) if current_only else None  # None: every evaluation counts as current
    latest: dict[SystemKey, RunRecord] = {}
    earlier: dict[SystemKey, RunRecord] = {}
    for record in list_runs(lab.runs_dir, "eval"):
        run = record.run
        if not run.finished or run.task.name != task.name or run.task.split != split:
            continue
        if only is not None and record.id not in only:
            continue
        recorded = run.task.data_sha256
        chosen = earlier if current and recorded and recorded != current else latest
        if run.system_key not in chosen or run.task.n >= chosen[run.system_key].run.task.n:
            chosen[run.system_key] = record  # list_runs is oldest first: the newest of the widest
    labels = [record.run.display_label for record in latest.values()]
    entries = [Entry(record, read_predictions(record.folder),
                     label if labels.count(label) == 1 else f"{label} ({record.id[-4:]})")  # same label, other system
               for record, label in zip(latest.values(), labels, strict=True)]
    left_out = sorted({record.run.display_label for key, record in earlier.items() if key not in latest})
    return Latest(entries, left_out)


LOWER_BOUND = "API list prices, at least"
NO_SHARED = "no shared examples"  # why a system was not tested against the reference (`PairedResult.test`)
UNPRICED = "no prices in lab.yaml"  # an API model's cost basis when lab.yaml gives it none: its cost is unknown


TIME_NOTE = ("Time is evaluation wall time per 1,000 examples the system answered (answers from the API request "
             "cache left out).")


def cost_and_time(record: RunRecord, local_usd_per_hour: float | None = None) -> dict:
    """Cost and evaluation wall time per 1,000 examples; None where the records do not say.

    API models cost their list prices; local models cost their wall time at `local_usd_per_hour`, if the lab
    set one (lab.yaml `local_compute_usd_per_hour`)."""
    run = record.run
    n = run.task.n if isinstance(run, EvalRun) else 0
    usage = run.usage if isinstance(run, EvalRun) else None
    predict_s = run.timings.get("predict_s")
    timed = run.timings.get("predict_examples", n)  # a resumed run's time covers the examples it timed
    seconds_per_1k = 1000 * predict_s / timed if predict_s and timed else None  # rounded where shown, once
    if usage and usage.cache_hits and timed + usage.cache_hits > n:  # recorded before the time left the cache out:
        seconds_per_1k = None  # its cache hits' time is in, unknown how much ("–", not a time too low)
    api = (run.system.api if isinstance(run, EvalRun) else None) or {}
    priced = any(api.get(price) for price in ("input_price_per_mtok", "output_price_per_mtok"))
    # an API model lab.yaml gives no prices for has no known cost ("–"), not a cost of $0.0000
    cost, basis = (usage.cost_per_1k_examples_usd if usage and priced else None), "API list prices"
    if usage and usage.content_filtered_unmetered:  # answers billed with token counts the API never sent
        basis = f"{LOWER_BOUND} ({usage.content_filtered_unmetered:,} content-filtered answers without token counts)"
    if cost is None and usage is None and local_usd_per_hour is not None and seconds_per_1k is not None:
        cost, basis = round(local_usd_per_hour * seconds_per_1k / 3600, 6), f"local at ${local_usd_per_hour}/h"
    return {
        "cost_per_1k_usd": cost,
        "cost_basis": basis if cost is not None else UNPRICED if usage else None,
        "seconds_per_1k": seconds_per_1k,
    }


def add_cost_and_time(comparison: Comparison, entries: dict[str, Entry], local_usd_per_hour: float | None) -> None:
    """Fill each row's cost and time per 1,000 examples from its run (`entries` by run id)."""
    for row in comparison.systems:
        for name, value in cost_and_time(entries[row.run].record, local_usd_per_hour).items():
            setattr(row, name, value)


def cost_note(rows: list[SystemRow]) -> str:
    """What the cost column's marks mean, for the rows shown (the CLI's, report's and site's tables)."""
    local = sorted({r.cost_basis for r in rows if (r.cost_basis or "").startswith("local")})
    note = "Cost: API models at list prices"
    if any((r.cost_basis or "").startswith(LOWER_BOUND) for r in rows):
        note += " (≥: a lower bound, as the API sent no token counts for some content-filtered answers)"
    note += f"; ~ local models, their wall time {local[0].removeprefix('local ')}" if local else ""
    unpriced = any(r.cost_basis == UNPRICED for r in rows)
    return note + ("; – an API model lab.yaml gives no prices (api_models: input_price_per_mtok, "
                   "output_price_per_mtok)." if unpriced else ".")


def format_cost(value: float | None, basis: str | None = None) -> str:
    """US dollars; `~` marks an estimate from local compute time rather than an API bill, `≥` a lower bound (some
    answers came without token counts)."""
    if value is None:
        return "–"
    mark = "~" if basis and basis.startswith("local") else "≥" if basis and basis.startswith(LOWER_BOUND) else ""
    if 0 < value < 0.00005:  # would read $0.0000: free
        return f"{mark}<$0.0001"
    return f"{mark}${value:.4f}"


def format_seconds(value: float | None) -> str:
    """Seconds as every table and the methods text show them: whole seconds from 10 s, tenths below."""
    if value is None:
        return "–"
    if 0 < value < 0.05:  # above 0, never shown as 0
        return "<0.1 s"
    return f"{value:,.0f} s" if value >= 10 else f"{value:.1f} s"


def compare(
    lab: Lab, task: str, split: str = "test", metric: str | None = None, resamples: int = 5000,
    only: set[str] | None = None, reference: str | None = None,
) -> Comparison:
    """Rank systems by `metric` (default: the task's first); test each against the reference system (default:
    the best; else a run id or system label) on the examples both saw, Holm-corrected. `only` restricts the
    table to the given eval run ids."""
    spec = load_task(lab.task_path(task), lab.root)
    entries, earlier = latest_evals(lab, spec, split, only)
    if not entries:
        why = f" on its current data (only on earlier data: {', '.join(earlier)})" if earlier else ""
        raise LlamalabError(f"no finished evaluations of task {task!r} on its {split} split{why} in {lab.runs_dir}")
    comparison = rank(spec, entries, split, metric, resamples, reference, earlier)
    add_cost_and_time(comparison, {e.record.id: e for e in entries}, lab.config.local_compute_usd_per_hour)
    return comparison


def rank(
    spec: Task, entries: list[Entry], split: str, metric: str | None = None, resamples: int = 5000,
    reference: str | None = None, earlier_data: list[str] | None = None,
) -> Comparison:
    """The comparison of `entries` (evaluations of one task split), best first; see `compare`."""
    task, metrics = spec.name, spec.metric_names
    metric = metric or metrics[0]
    if metric not in metrics:
        raise LlamalabError(f"task {task!r} is scored by {', '.join(metrics)}, not {metric!r}")
    labels = spec.answer.labels or None
    rows = []
    for entry in entries:
        predictions = list(entry.predictions.values())
        run = entry.run
        protocol = run.scoring.protocol
        summary = run.predictions_summary or PredictionSummary.model_validate(
            prediction_summary(spec.answer, predictions, protocol))
        rows.append(SystemRow(
            system=entry.label, run=entry.record.id, kind=run.system.kind, protocol=protocol, n=len(predictions),
            metrics=recorded_metrics(entry, metrics, labels), predictions=summary, usage=run.usage,
            **({"train_run": run.system.train_run} if run.system.train_run else {}),
            **({"quantized": quantized} if (quantized := run.export_type) else {}),
        ))
    order = sorted(range(len(rows)), key=lambda i: -(m.estimate if (m := rows[i].metrics.get(metric)) else -1.0))
    rows, entries = [rows[i] for i in order], [entries[i] for i in order]
    ref = _reference_index(rows, reference)
    others = [i for i in range(len(rows)) if i != ref]
    tests = [_paired(entries[ref], entries[i], metric, labels, resamples) for i in others]
    # Holm over the tests that ran: a system with no examples in common with the reference was not tested
    ran = [t for t in tests if t.delta is not None]
    for test, p_holm in zip(ran, stats.holm([t.p_value for t in ran]) if ran else [], strict=True):
        test.p_holm = p_holm
    rows[ref].vs_reference = None
    for i, test in zip(others, tests, strict=True):
        rows[i].vs_reference = test
    return Comparison(task=task, split=split, metric=metric, metrics=metrics, best=rows[0].system,
                      reference=rows[ref].system, reference_is_best=ref == 0, systems=rows,
                      **({"earlier_data": earlier_data} if earlier_data else {}))


def recorded_metrics(entry: Entry, metrics: list[str], labels) -> dict[str, Interval]:
    """The run's own metrics, as its eval wrote them to run.json: one number per run everywhere.

    A metric the run did not record (it predates the metric) is computed from its predictions in the same
    canonical order and with the same resamples the eval would have used, so it matches what the eval gives."""
    recorded = dict(entry.run.metrics)
    missing = [m for m in metrics if m not in recorded]
    if missing:
        resamples = entry.record.config.get("bootstrap_resamples", 5000)
        # Rows without the fields a metric needs (KeyError): the run cannot say, and the cell stays empty.
        with contextlib.suppress(KeyError):
            computed = metric_intervals(missing, list(entry.predictions.values()), labels, resamples)
            recorded.update({name: Interval.model_validate(m) for name, m in computed.items()})
    return {m: recorded[m] for m in metrics if m in recorded}


def _reference_index(rows: list[SystemRow], reference: str | None) -> int:
    """The best system, or the one whose run id or label `reference` names (a unique prefix is enough)."""
    if reference is None:
        return 0
    exact = [i for i, r in enumerate(rows) if reference in (r.run, r.system, r.train_run)]
    matches = exact or [i for i, r in enumerate(rows) if refers_to(reference, r.run, r.system, r.train_run)]
    if len(matches) > 1 and len(own := [i for i in matches if not rows[i].quantized]) == 1:
        matches = own  # a fine-tune's id (or label) names its own evaluation, not its quantized exports'
    if len(matches) != 1:
        known = "; ".join(f"{r.system} ({r.run})" for r in rows)
        problem = "matches several systems" if matches else "matches no evaluated system"
        raise LlamalabError(f"reference {reference!r} {problem}: give a run id or a system label from: {known}")
    return matches[0]


def refers_to(reference: str, run_id: str, label: str, train_run: str | None = None) -> bool:
    """Whether `reference` names this evaluation: its run id or its fine-tune's (or part of one, see `names_run`),
    or the start of its system label."""
    return (names_run(reference, run_id) or label.startswith(reference)
            or (train_run is not None and names_run(reference, train_run)))


def _paired(reference: Entry, other: Entry, metric: str, labels, resamples: int) -> PairedResult:
    shared = sorted(reference.predictions.keys() & other.predictions.keys())
    if not shared:
        return PairedResult(test=f"none: {NO_SHARED}", delta=None, p_value=1.0, n=0)
    try:
        result = paired_test(metric, [reference.predictions[i] for i in shared],
                             [other.predictions[i] for i in shared], labels, resamples)
    except KeyError:  # rows written before the metric's field existed: its cell is empty, and there is no test
        return PairedResult(test=f"none: {metric} not recorded per example", delta=None, p_value=1.0, n=0)
    if result.detail.get("undefined_resamples", 0) == result.detail.get("n_resamples"):
        # e.g. an entity precision of a system that predicts no entity: no resample says anything about Δ
        return PairedResult(test=f"none: {metric} undefined for one of them", delta=None, p_value=1.0, n=0)
    paired_subset = len(shared) != len(reference.predictions) or len(shared) != len(other.predictions)
    # this system minus the reference; + 0.0 makes a tie 0.0 (tables print +0.000; -0.0 in --json and Python)
    return PairedResult(test=result.test, delta=-result.delta + 0.0, p_value=result.p_value, n=result.n,
                        paired_subset=paired_subset)


def reference_name(result: Comparison) -> str:
    """How captions name the system every other one is tested against."""
    return "the best system" if result.reference_is_best else f"the reference system, {result.reference}"


def tests_run(rows: list[SystemRow]) -> list[str]:
    """The paired tests that ran against the reference (a system sharing no example with it was not tested)."""
    return sorted({row.vs_reference.test for row in rows if row.vs_reference and row.vs_reference.delta is not None})


def tests_label(rows: list[SystemRow]) -> str:
    """The tests a caption names: those that ran, or why there are none."""
    if tests := tests_run(rows):
        return ", ".join(tests)
    if not (apart := untested(rows)):
        return "no other system"
    if set(apart.values()) == {NO_SHARED}:
        return "none (no other system shares an example with it)"
    return "none (" + "; ".join(sorted(set(apart.values()))) + ")"


def untested(rows: list[SystemRow]) -> dict[str, str]:
    """Systems not tested against the reference, with why (`NO_SHARED`, or a metric no test could use)."""
    return {row.system: row.vs_reference.test.removeprefix("none: ") for row in rows
            if row.vs_reference and row.vs_reference.delta is None}


def earlier_data_note(result: Comparison) -> str:
    """Names the systems left out because they were evaluated only on the task's earlier data ("" if none)."""
    if not result.earlier_data:
        return ""
    return (f"Not shown: {'; '.join(result.earlier_data)}, evaluated on this split only before the task's data files "
            "changed (evaluate again to include).")


def reference_cell(result: Comparison) -> str:
    return "best (ref.)" if result.reference_is_best else "reference"


def comparison_table(result: Comparison) -> Table:
    """The comparison as a rich table: metrics with CIs, paired tests, and API cost and latency."""
    with_cost = any(row.cost_per_1k_usd is not None or row.seconds_per_1k is not None for row in result.systems)
    table = Table(
        title=escape(f"{result.task} / {result.split}  (ranked by {result.metric})"),
        caption=escape(
            f"{interval_note([row.metrics for row in result.systems], [row.system for row in result.systems])} "
            + ("p: none, with one system. " if len(result.systems) == 1 else
               f"p: {tests_label(result.systems)} on {result.metric} against {reference_name(result)}, on the "
               "examples both saw (Δ marked n=… when that is a paired subset); Holm-corrected for the number of "
               "comparisons. ")
            + "predictions: the most frequent prediction and its share, outputs that did not parse, and "
            "outputs cut off by the generation budget. "
            + (f"{cost_note(result.systems)} {TIME_NOTE} " if with_cost else "")
            + earlier_data_note(result)).strip(),
    )
    columns = ["system", "protocol", "n", *(f"{m} [95% CI]" for m in result.metrics), "Δ vs ref.", "p",
               "p (Holm)", "predictions", *(["$ / 1k ex", "time / 1k ex"] if with_cost else [])]
    for column in columns:  # a narrow terminal or log folds a cell onto more lines, never cuts it ("sentiment-l…")
        table.add_column(column, justify="left" if column in ("system", "protocol") else "right", overflow="fold")
    for row in result.systems:
        cells = [row.system, row.protocol, f"{row.n:,}"]
        for name in result.metrics:
            m = row.metrics.get(name)
            cells.append(format_interval(m) if m else "-")
        vs = row.vs_reference
        if vs is None:
            cells += [reference_cell(result), "", ""]
        else:
            cells += [format_delta(vs), format_p(vs.p_value), format_p(vs.p_holm)]
        cells.append(prediction_cell(row.predictions))
        if with_cost:  # as the report and the site show them: evaluation wall time, ~ local and ≥ lower-bound costs
            cells += [format_cost(row.cost_per_1k_usd, row.cost_basis), format_seconds(row.seconds_per_1k)]
        table.add_row(*(escape(cell) for cell in cells))  # labels like "model [plain]" are text, not markup
    return table


def format_delta(vs: PairedResult) -> str:
    """Δ against the reference; on a paired subset (systems evaluated on different examples) with its n."""
    if vs.delta is None:
        return "–"
    return signed(vs.delta) + (f" (n={vs.n:,})" if vs.paired_subset else "")


def n_range(rows: list[SystemRow]) -> str:
    """The systems' example counts: "1,066", or "40–1,066" where they saw different numbers of examples."""
    low, high = min(r.n for r in rows), max(r.n for r in rows)
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def signed(delta: float) -> str:
    """A difference with its sign, three decimals, the one way every table and sentence writes a Δ: a tie (or a
    difference that rounds to nothing) is +0.000, never -0.000."""
    return f"{round(delta, 3) + 0.0:+.3f}"  # + 0.0 turns -0.0 into 0.0


def prediction_cell(summary: PredictionSummary) -> str:
    """The most frequent prediction and its share (label tasks), parse failures and outputs the budget cut off
    (generation)."""
    parts = []
    if summary.predicted:
        label, count = next(iter(summary.predicted.items()))
        parts.append(f"{label} {count / summary.n:.0%}")
    if summary.parse_failures:
        parts.append(f"unparsed {summary.parse_failures}/{summary.n}")
    if summary.truncated:
        parts.append(f"cut off {summary.truncated}/{summary.n}")
    return ", ".join(parts) or "-"


def comparison_warnings(result: Comparison) -> list[str]:
    """Each system's warnings about its predictions (a degenerate scorer, outputs that did not parse)."""
    return [f"{row.system}: {warning}" for row in result.systems for warning in row.predictions.warnings]


def interval_note(metric_dicts: list[dict[str, Interval]], labels: list[str] | None = None) -> str:
    """How the CIs were computed, read from the recorded intervals (never assumed): e.g. "95% CIs: percentile
    bootstrap (accuracy, macro_f1)", or one scheme per group of metrics when the records differ. When one metric's
    intervals were computed in several ways (records of different llamalab versions), each such group names the
    rows it holds (`labels`, one per metric dict), so a reader can tell which interval is which."""
    by_scheme: dict[str, dict[str, list[str]]] = {}
    for i, metrics in enumerate(metric_dicts):
        for name, m in metrics.items():
            rows = by_scheme.setdefault(interval_scheme(m.method), {}).setdefault(name, [])
            if labels is not None and labels[i] not in rows:
                rows.append(labels[i])
    if len(by_scheme) == 1:
        return f"95% CIs: {next(iter(by_scheme))}."
    mixed = {name for name in {n for names in by_scheme.values() for n in names}
             if sum(name in names for names in by_scheme.values()) > 1}

    def group(names: dict[str, list[str]]) -> str:  # rows joined by "and": commas part the metrics
        return ", ".join(f"{name} of {' and '.join(rows)}" if name in mixed and rows else name
                         for name, rows in names.items())

    return "95% CIs: " + "; ".join(f"{scheme} ({group(names)})" for scheme, names in by_scheme.items()) + "."


def format_p(value: float | None, alpha: float = ALPHA) -> str:
    """A p-value to two significant digits, or more where two would round it onto or across the level it is read
    at (0.0496 is "0.0496", not "0.05" next to a mark of significance at 5%); below 1e-4, "<1e-4"."""
    if value is None:
        return ""
    if value < 1e-4:
        return "<1e-4"
    for digits in range(2, 18):
        text = f"{value:.{digits}g}"
        if (float(text) < alpha) == (value < alpha):
            return text
    return text


def format_interval(m: Interval) -> str:
    """A metric as `estimate [low, high]`, three decimals."""
    return f"{m.estimate:.3f} [{m.low:.3f}, {m.high:.3f}]"
