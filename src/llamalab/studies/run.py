"""Running a study: every cell trained and evaluated, resumably, then the comparators.

A cell's state is read from the run records, never from a file of the study's own: a cell whose train and eval
runs finished is done, whatever happened to the process that ran it. So `study run` after a crash or a kill skips
the finished cells, continues an interrupted training from its last checkpoint, and leaves failed cells (the
records say why) to `--retry-failed`. One failing cell never stops the others.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape

from llamalab.config import LlamalabError
from llamalab.lab import Lab, find_lab
from llamalab.progress import progress_bar
from llamalab.runs.files import write_json_atomic, write_text_atomic
from llamalab.runs.record import (
    Inputs,
    RunRecord,
    find_run,
    is_alive,
    list_runs,
    same_settings,
    slurm_job_alive,
)
from llamalab.studies.spec import Cell, Study, load_study

RERUN = ("`study run` again continues the interrupted ones (killed, or stopped at a time limit) from their "
         "checkpoints; --retry-failed also tries the failed ones again")
CellStatus = Literal["pending", "running", "interrupted", "failed", "trained", "finished"]
# Zero-shot in each prompt format and few-shot: the best honest prompt of the base model, chosen on dev.
BASELINES = {"zero-shot plain": ("plain", 0), "zero-shot chat": ("chat", 0), "4-shot plain": ("plain", 4)}


@dataclass(frozen=True)
class CellState:
    cell: Cell
    status: CellStatus
    train: RunRecord | None = None
    eval: RunRecord | None = None

    @property
    def seconds(self) -> float | None:
        """Train plus eval wall time, as the records say: an evaluation's run time (total_s) and the loading of its
        model before the run began (load_model_s), as the progress lines count them."""
        times = [r.run.timings.get("total_s") for r in (self.train, self.eval) if r is not None]
        if self.eval is not None and times[-1] is not None:
            times[-1] += self.eval.run.timings.get("load_model_s") or 0.0
        return round(sum(t for t in times if t is not None), 1) if any(t is not None for t in times) else None


def _state_of(record: RunRecord) -> CellStatus:
    """running, interrupted (Ctrl-C, or a process that died without a word) or failed."""
    if record.run.status == "running":
        return "running" if is_alive(record) else "interrupted"
    return "failed" if record.run.status == "failed" else "interrupted"


def eval_options(study: Study) -> dict:
    """How every cell (and comparator) is evaluated."""
    spec = study.spec.eval
    options = {"task": study.task, "split": spec.split, "limit": spec.limit}
    if spec.protocol:
        options["protocol"] = spec.protocol
    return options


class _Evaluations:
    """A lab's evaluation records, found by the settings hash of the evaluation a study would run (as
    `evaluate(reuse=True)` finds them): an evaluation of the same system with other settings is not the study's."""

    def __init__(self, lab: Lab, study: Study, finished_only: bool = False) -> None:
        from llamalab.tasks.task import load_task

        self.lab, self.task = lab, load_task(lab.task_path(study.task), lab.root)
        self.records = [r for r in list_runs(lab.runs_dir, "eval") if r.run.finished or not finished_only]

    def of(self, system: str, **options) -> list[RunRecord]:
        from llamalab.evaluation.evaluate import same_system, settings_hashes
        from llamalab.evaluation.systems import system_outline

        (now, before), outline = settings_hashes(self.lab, self.task, system, **options), system_outline(self.lab,
                                                                                                        system)
        return [r for r in self.records if same_settings(r, now, before, lambda r: same_system(r, outline))]


class _CurrentData:
    """Whether a run started from its task's data and definition, its model's weights and (an API model's) endpoint
    as they are now: one made before any of them changed is not a cell's run (as `train(reuse=True)` and
    `evaluate(reuse=True)` do not take it), so the cell runs again."""

    def __init__(self, lab: Lab) -> None:
        self.lab, self.hashes, self.revisions = lab, {}, {}

    def __call__(self, record: RunRecord) -> bool:
        from llamalab.models import resolve_model
        from llamalab.tasks.data import current_file_hashes
        from llamalab.tasks.task import load_task

        name = record.run.task.name
        if name not in self.hashes:
            try:  # None when the task cannot be read now: nothing to tell the runs apart by
                task = load_task(self.lab.task_path(name), self.lab.root)
                self.hashes[name] = (current_file_hashes(task), {kind: task.definition_sha256(kind)
                                                                 for kind in ("train", "eval")})
            except LlamalabError:
                self.hashes[name] = (None, {})
        run = record.run
        model = run.model if run.kind == "train" else getattr(run.system, "model", None)
        if model is not None and model.name not in self.revisions:
            try:
                self.revisions[model.name] = resolve_model(model.name, self.lab.root).revision
            except LlamalabError:
                self.revisions[model.name] = None  # not here now: nothing to compare with
        revision = self.revisions.get(model.name) if model is not None else None
        api = self.lab.config.api_models.get(run.system.label) if run.kind == "eval" and run.system.api else None
        data, definitions = self.hashes[name]
        inputs = Inputs(revision, data, definitions.get(run.kind), api.model_dump() if api else None)
        return inputs.differ(record) is None


def cell_states(lab: Lab, study: Study) -> list[CellState]:
    """Each cell's state, from the train and eval records of its settings made on the task data as it is now."""
    current = _CurrentData(lab)
    trains = [r for r in list_runs(lab.runs_dir, "train") if r.run.name == study.experiment_name and current(r)]
    evals = _Evaluations(lab, study)
    evals.records = [r for r in evals.records if current(r)]
    options = eval_options(study)
    states = []
    for cell in study.cells:
        mine = [r for r in trains if r.run.config_hash == cell.key]
        finished = [r for r in mine if r.run.finished]
        if not finished:
            states.append(CellState(cell, _state_of(mine[-1]), mine[-1]) if mine else CellState(
                cell, "failed" if _failed_marker(lab, study, cell).is_file() else "pending"))
            continue
        train = finished[-1]
        tried = evals.of(train.id, **options)
        done = [r for r in tried if r.run.finished]
        if done:
            states.append(CellState(cell, "finished", train, done[-1]))
        elif tried:
            states.append(CellState(cell, _state_of(tried[-1]), train, tried[-1]))
        else:  # an evaluation that failed before its record existed (a model that would not load) left a marker
            states.append(CellState(cell, "failed" if _evaluation_failed(lab, study, cell) else "trained", train))
    return states


def run_cell(lab: Lab, study: Study, cell: Cell, console: Console, processes: int = 1) -> CellState:
    """Train (or reuse, or continue) the cell's run in `processes` data-parallel processes, then evaluate it (or
    reuse its evaluation)."""
    from llamalab.evaluation.evaluate import evaluate
    from llamalab.training.trainer import train

    marker, stage = _failed_marker(lab, study, cell), "training"
    try:
        record = train(lab, str(study.experiment_file), reuse=True, console=console, processes=processes,
                       **cell.overrides)
        stage = EVALUATION_FAILED
        evaluation = evaluate(lab, record.id, reuse=True, console=console, **eval_options(study))
    except Exception as exc:  # a cell that failed before its train record existed would look pending
        write_text_atomic(marker, f"{stage}: {type(exc).__name__}: {exc}\n")
        raise
    marker.unlink(missing_ok=True)
    return CellState(cell, "finished", record, evaluation)


EVALUATION_FAILED = "evaluation"  # how a failed marker written after training begins


def _evaluation_failed(lab: Lab, study: Study, cell: Cell) -> bool:
    """Whether the cell's last failure was its evaluation's (a training failure's marker says nothing of a run
    trained since, by hand or by another study)."""
    try:
        return _failed_marker(lab, study, cell).read_text(encoding="utf-8").startswith(f"{EVALUATION_FAILED}:")
    except OSError:
        return False


def _failed_marker(lab: Lab, study: Study, cell: Cell) -> Path:
    """Where a cell's last failure is noted (runs/.jobs/<study>/<cell key>.failed): the only trace of one that
    failed before it wrote a record (a base model that is not there, say), so it is not taken for pending."""
    return lab.runs_dir / ".jobs" / study.name / f"{cell.key}.failed"


def run_cell_job(lab_root: str, study_name: str, cell_key: str, processes: int | None = None) -> str:
    """One cell as a batch job (Slurm): everything it needs is read from the lab folder. Returns the eval run id.

    It trains in `processes` processes; by default one per GPU the study's `resources` ask for."""
    lab = find_lab(lab_root)
    study = load_study(lab, study_name)
    cell = next((c for c in study.cells if c.key == cell_key), None)
    if cell is None:
        raise LlamalabError(f"study {study_name!r} has no cell {cell_key} (was the study file changed?)")
    processes = processes or max(1, study.spec.resources.gpus)
    state = run_cell(lab, study, cell, Console(stderr=True), processes=processes)
    assert state.eval is not None
    return state.eval.id


def _cells_to_run(lab: Lab, study: Study, console: Console, retry_failed: bool, verb: str = "run"
                  ) -> list[CellState]:
    """The cells a run takes on (pending, interrupted, trained; failed ones with `retry_failed`), said aloud."""
    check_sizes(lab, study)
    if why := study.spec.stray_comparators():
        raise LlamalabError(f"{study.path}: {why}")
    if problems := comparators_left_out(lab, study):  # a comparator named wrongly is said before any cell trains
        raise LlamalabError(problems[0])
    states = cell_states(lab, study)
    runnable = {"pending", "interrupted", "trained"} | ({"failed"} if retry_failed else set())
    todo = [s for s in states if s.status in runnable]
    skipped = sum(1 for s in states if s.status == "finished")
    elsewhere = sum(1 for s in states if s.status == "running")
    left_failed = sum(1 for s in states if s.status == "failed" and not retry_failed)
    console.print(f"study [bold]{escape(study.name)}[/]: {len(study.cells)} cells, {skipped} finished (skipped), "
                  f"{len(todo)} to {verb}" + (f", {elsewhere} running elsewhere" if elsewhere else "")
                  + (f", {left_failed} failed (rerun with --retry-failed)" if left_failed else ""))
    return todo


def check_sizes(lab: Lab, study: Study, data_required: bool = True) -> None:
    """A scaling study's size past the train split would train on the whole split again, under another size.
    Without `data_required` (reading the records: status, the report) data that cannot be read now is not this
    check's to report."""
    if study.spec.kind != "scaling":
        return
    asked = sorted({int(cell.config["train_examples"]) for cell in study.cells
                    if cell.config.get("train_examples") is not None})
    from llamalab.tasks.data import load_task_data
    from llamalab.tasks.task import load_task

    try:
        have = len(load_task_data(load_task(lab.task_path(study.task), lab.root)).split("train"))
    except LlamalabError:
        if data_required:
            raise
        return
    if too_many := [size for size in asked if size > have]:
        raise LlamalabError(f"study {study.name}: train_examples {', '.join(f'{s:,}' for s in too_many)} "
                            f"{'is' if len(too_many) == 1 else 'are'} more than task {study.task!r}'s train split "
                            f"holds ({have:,}): such a cell would train on the whole split, as {have:,} would; use "
                            f"sizes up to {have:,}")


def best_baseline(dev: dict[str, RunRecord]) -> str:
    """The baseline (a key of BASELINES) whose dev evaluation scored highest on the task's first metric."""
    metric = next(iter(next(iter(dev.values())).run.metrics))
    return max(dev, key=lambda name: dev[name].run.metrics[metric].estimate)


def run_study(lab: Lab, study: Study, console: Console, retry_failed: bool = False, max_parallel: int = 1
              ) -> tuple[list[CellState], list[RunRecord]]:
    """Run every cell that is not finished (failed ones only with `retry_failed`), then the comparators; returns
    the cells' final states and the comparators' evaluations. Raises after every cell was tried if any failed.

    With `max_parallel` 1 the cells run one after another in this process; with more, that many at once, each in a
    process of its own with the machine's cores shared out and its output in runs/.jobs/<study>/<cell key>.log."""
    todo = _cells_to_run(lab, study, console, retry_failed)
    failures: list[str] = []
    with progress_bar(console, f"study {study.name}", len(study.cells), unit="cells",
                      speed_window_s=24 * 3600, done=len(study.cells) - len(todo)) as advance:
        if max_parallel > 1 and len(todo) > 1:
            failures = _run_in_processes(lab, study, todo, console, max_parallel, advance)
        else:
            for state in todo:
                advance(0, cell=state.cell.label)
                started = time.perf_counter()
                try:
                    run_cell(lab, study, state.cell, console)
                except Exception as exc:  # one failed cell never blocks the others; its records say what happened
                    failures.append(f"{state.cell.label}: {type(exc).__name__}: {exc}")
                    console.print(f"[red]cell failed[/] {escape(failures[-1])}")
                advance(1, cell=f"{state.cell.label} ({time.perf_counter() - started:.0f} s)")
    comparators = comparator_evals(lab, study, console) if study.spec.kind == "scaling" else []
    if failures:
        raise LlamalabError(f"{len(failures)} of {len(todo)} cell(s) failed ({RERUN}):\n" + "\n".join(failures))
    return cell_states(lab, study), comparators


def _run_in_processes(lab: Lab, study: Study, todo: list[CellState], console: Console, max_parallel: int,
                      advance) -> list[str]:
    """`todo` with `max_parallel` worker processes; returns the failures."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    logs = lab.runs_dir / ".jobs" / study.name
    logs.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // max_parallel)
    console.print(f"{min(max_parallel, len(todo))} cells at once, {threads} thread(s) each; logs in {logs}")
    failures = []
    # spawn, not fork: a forked child would inherit this process's torch threads and locks
    with ProcessPoolExecutor(max_parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_cell_process, str(lab.root), study.name, s.cell.key, str(logs / f"{s.cell.key}.log"),
                               threads, min(max_parallel, len(todo))): s for s in todo}
        for future in as_completed(futures):
            state = futures[future]
            try:
                future.result()
            except Exception as exc:  # one failed cell never blocks the others; its records say what happened
                failures.append(f"{state.cell.label}: {type(exc).__name__}: {exc} (log: {logs / state.cell.key}.log)")
                console.print(f"[red]cell failed[/] {escape(failures[-1])}")
            advance(1, cell=state.cell.label)
    return failures


def _cell_process(lab_root: str, study_name: str, cell_key: str, log: str, threads: int, at_once: int) -> str:
    """One cell in a worker process: its output (Python's and the libraries') goes to `log`; it plans its memory
    as one of `at_once` cells sharing the machine."""
    import os
    import sys

    import torch

    from llamalab.training.plan import SHARED_BY

    os.environ[SHARED_BY] = str(at_once)
    torch.set_num_threads(threads)
    with open(log, "a", buffering=1) as stream:
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
        sys.stdout = sys.stderr = stream
        return run_cell_job(lab_root, study_name, cell_key, processes=1)


def submit_study(lab: Lab, study: Study, console: Console, retry_failed: bool = False, max_parallel: int = 4
                 ) -> tuple[list[CellState], list[RunRecord]]:
    """As `run_study`, with each cell a Slurm job through submitit (one job array; `max_parallel` at once), the
    resources from the study file. A job writes the same records a local run would; this process waits for them,
    then evaluates the comparators here."""
    import submitit
    from submitit.slurm.slurm import SlurmJob

    todo = _cells_to_run(lab, study, console, retry_failed, verb="submit")
    failures: list[str] = []
    folder = lab.runs_dir / ".jobs" / study.name
    ledger = _JobLedger(folder / "submitted.json")
    # A cell whose job is still queued or running (submitted by an earlier `study run` that was stopped while it
    # waited) is waited for, not submitted again: two jobs would train the same cell.
    queued = {s.cell.key: job for s in todo if (job := ledger.get(s.cell.key)) and slurm_job_alive(job)}
    if queued:
        console.print(f"{len(queued)} cell(s) already queued or running (jobs {', '.join(queued.values())}): "
                      "waiting for them")
    jobs: dict[str, Any] = {key: SlurmJob(folder, job) for key, job in queued.items()}
    fresh = [s for s in todo if s.cell.key not in queued]
    if fresh:
        resources = study.spec.resources
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(
            name=f"study-{study.name}", timeout_min=resources.time_min, cpus_per_task=resources.cpus,
            mem_gb=resources.mem_gb, slurm_array_parallelism=max_parallel,
            **({"slurm_partition": resources.partition} if resources.partition else {}),
            **({"gpus_per_node": resources.gpus} if resources.gpus else {}),
        )
        submitted = executor.map_array(run_cell_job, [str(lab.root)] * len(fresh), [study.name] * len(fresh),
                                       [s.cell.key for s in fresh])
        ledger.record({s.cell.key: job.job_id for s, job in zip(fresh, submitted, strict=True)})
        jobs.update({s.cell.key: job for s, job in zip(fresh, submitted, strict=True)})
        console.print(f"submitted job array {submitted[0].job_id.split('_')[0]} ({len(submitted)} cells, logs in "
                      f"{executor.folder})")
    if todo:
        with progress_bar(console, f"study {study.name}", len(study.cells), unit="cells",
                      speed_window_s=24 * 3600, done=len(study.cells) - len(todo)) as advance:
            for state, job in ((s, jobs[s.cell.key]) for s in todo):
                try:
                    job.result()
                except Exception as exc:  # a failed or cancelled job; the others go on
                    failures.append(f"{state.cell.label} (job {job.job_id}): {job_failure(exc)} "
                                    f"(log: {job.paths.stderr})")
                    console.print(f"[red]cell failed[/] {escape(failures[-1])}")
                advance(1, cell=state.cell.label)
    comparators = comparator_evals(lab, study, console) if study.spec.kind == "scaling" else []
    if failures:
        raise LlamalabError(f"{len(failures)} of {len(todo)} cell(s) failed ({RERUN}):\n" + "\n".join(failures))
    return cell_states(lab, study), comparators


def job_failure(exc: Exception) -> str:
    """What went wrong in a Slurm job, in one line: the error its cell raised (the last line of the trace
    submitit passes on), or the state Slurm ended the job in (cancelled, out of memory, timed out)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip().strip("-")]
    if "failed during processing with trace" in str(exc):
        trace = str(exc).split("-" * 22)  # submitit puts the trace between two rules of dashes
        cause = [line.strip() for line in (trace[1] if len(trace) > 2 else "").splitlines() if line.strip()]
        if cause:
            return cause[-1]
    for line in lines:
        if (state := re.search(r"\(state: ([^)]*)\)", line)) is not None:
            return f"the job ended without a result (Slurm state {state.group(1)})"
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


class _JobLedger:
    """The Slurm job each cell of a study was last submitted as (cell key -> job id), written as jobs are
    submitted, so a later `study run` can tell a queued cell from one that has to be submitted."""

    def __init__(self, path) -> None:
        self.path = path

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def get(self, key: str) -> str | None:
        return self._read().get(key)

    def record(self, jobs: dict[str, str]) -> None:
        write_json_atomic(self.path, {**self._read(), **jobs})


def recorded_comparators(lab: Lab, study: Study) -> list[RunRecord]:
    """The comparators' finished evaluations as the records hold them, running nothing (for the report, the
    site and `study status`): the baseline whose dev score was best, API models, named runs; missing ones are
    left out. Only a scaling study has comparators."""
    if study.spec.kind != "scaling":
        return []
    spec, options = study.spec.comparators, eval_options(study)
    evals = _Evaluations(lab, study, finished_only=True)
    current = _CurrentData(lab)
    evals.records = [r for r in evals.records if current(r)]  # not one made on the task's data before it changed

    def latest(system: str, **fields) -> RunRecord | None:
        found = evals.of(system, **fields)
        return found[-1] if found else None

    records = []
    if spec.baselines:
        model = study.cells[0].config["base_model"]
        dev = {name: latest(model, task=study.task, split="dev", format=fmt, shots=shots, limit=spec.dev_limit)
               for name, (fmt, shots) in BASELINES.items()}
        if all(dev.values()):
            fmt, shots = BASELINES[best_baseline(dev)]  # type: ignore[arg-type] - none is None here
            if record := latest(model, format=fmt, shots=shots, **options):
                records.append(record)
    for name in spec.api:
        if record := latest(name, **{**options, "protocol": "generate"}):
            records.append(record)
    for ref in spec.runs:  # as comparator_evals takes them; one not there (or not one) is left out
        try:
            record = named_comparator(lab, study, ref)
        except LlamalabError:
            continue
        if record.run.finished and current(record):
            records.append(record)
    return records


def comparators_left_out(lab: Lab, study: Study) -> list[str]:
    """Why each comparator the study names would be left out of its results (`study status` says it; `study run`
    refuses before any cell trains): a run `comparators.runs` names that is missing, ambiguous, of another task
    or split, unfinished or made on older data, and an API model lab.yaml does not have."""
    if study.spec.kind != "scaling":
        return []
    why = []
    for ref in study.spec.comparators.runs:
        try:
            named_comparator(lab, study, ref, usable=True)
        except LlamalabError as exc:
            why.append(str(exc))
    if unknown := [name for name in study.spec.comparators.api if name not in lab.config.api_models]:
        known = ", ".join(lab.config.api_models) or "none yet"
        why.append(f"{study.path}: key 'comparators.api': {', '.join(map(repr, unknown))} is not an API model of "
                   f"lab.yaml's api_models (it has: {known}); add it there or leave it out")
    return why


def named_comparator(lab: Lab, study: Study, ref: str, usable: bool = False) -> RunRecord:
    """The eval run `comparators.runs` names (its id, or a unique part of it), of the study's task and split: one
    rule for `study run`, `study status`, the report and the site. With `usable`, also finished and made on the
    task's data as it is now (else the report would leave it out)."""
    record = find_run(lab.runs_dir, ref, "eval")
    if record.run.task.name != study.task or record.run.task.split != study.spec.eval.split:
        raise LlamalabError(f"comparator run {record.id} evaluated {record.run.task.name}/{record.run.task.split}, "
                            f"not the study's {study.task}/{study.spec.eval.split}")
    if usable and not record.run.finished:  # its predictions cover part of the split: no test on them
        raise LlamalabError(f"comparator run {record.id} is {record.run.status}, not finished: resume it "
                            f"(`llamalab eval ... --resume`) or leave it out of `comparators.runs`")
    if usable and not _CurrentData(lab)(record):
        raise LlamalabError(f"comparator run {record.id} was made on task {study.task!r}'s data (or its model) "
                            "as it was before they changed: evaluate that system again, and name the new run in "
                            "`comparators.runs`")
    return record


def comparator_evals(lab: Lab, study: Study, console: Console) -> list[RunRecord]:
    """The comparators' evaluations on the study's split: the base model with its best prompt chosen on dev, API
    models, and named eval runs. Finished evaluations with the same settings are reused."""
    from llamalab.evaluation.evaluate import evaluate, load_system

    spec, options = study.spec.comparators, eval_options(study)
    records = []
    if spec.baselines:
        model = study.cells[0].config["base_model"]
        with load_system(lab, model) as base:
            dev = {name: evaluate(lab, base, task=study.task, split="dev", format=fmt, shots=shots,
                                  limit=spec.dev_limit, reuse=True, console=console)
                   for name, (fmt, shots) in BASELINES.items()}
            fmt, shots = BASELINES[best_baseline(dev)]
            records.append(evaluate(lab, base, format=fmt, shots=shots, reuse=True, console=console, **options))
    for name in spec.api:
        records.append(evaluate(lab, name, reuse=True, console=console, **{**options, "protocol": "generate"}))
    records += [named_comparator(lab, study, ref, usable=True) for ref in spec.runs]
    return records
