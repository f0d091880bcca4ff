"""Run records: one self-describing folder per train or eval run, in plain text.

runs/<run-id>/run.json (typed and versioned: runs/schema.py) holds what ran (resolved config and
its hash, model, data hashes, git commit, packages, hardware), how it went (status, times,
throughput, peak memory) and its metrics. Every write is atomic, and run ids are claimed with
mkdir, so concurrent runs never collide.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import secrets
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llamalab.config import LlamalabError
from llamalab.runs.files import write_json_atomic, write_yaml_atomic
from llamalab.runs.schema import RUN_TYPES, EvalRun, RecordError, Run, TrainRun, parse_run, problems

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"  # the resolved settings the run was started with
TRAIN_LOG = "train_log.jsonl"  # one row per logged training step
PREDICTIONS = "predictions.jsonl"  # an eval run's rows, one per example (prompt, prediction, scores)
# A running run's process touches its run.json this often; a run on another machine whose files have been left
# untouched for SILENT_S has no live process (a container or machine that stopped) and can be resumed.
HEARTBEAT_S = 60.0
SILENT_S = 600.0
_PACKAGES = ("llamalab", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "numpy", "scipy")


def read_predictions(folder: Path) -> dict[str, dict]:
    """A run's prediction rows by example id, in file order. A row written twice (a resumed run can hold one)
    counts once, the first: the one its evaluation's own metrics counted."""
    from llamalab.runs.files import read_jsonl

    rows: dict[str, dict] = {}
    path = Path(folder) / PREDICTIONS
    for number, row in enumerate(read_jsonl(path), 1):
        if not isinstance(row.get("id"), str):
            raise LlamalabError(f"{path}:{number}: a prediction row without an example id; the file was edited or "
                                "damaged: restore it (e.g. from git), or move the run folder out of runs/")
        rows.setdefault(row["id"], row)
    return rows


def config_hash(config: dict) -> str:
    """A short, stable hash of a resolved config (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class RunRecord:
    """A run folder and its typed run.json (`run`), rewritten atomically on every update."""

    def __init__(self, folder: Path, run: Run):
        self.folder = folder
        self.run = run

    @property
    def id(self) -> str:
        return self.run.id

    @property
    def config(self) -> dict[str, Any]:
        """The run's resolved settings (config.yaml), or {} when it has none."""
        path = self.folder / CONFIG_FILE
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise LlamalabError(f"{path}: cannot read this run's settings ({str(exc).splitlines()[0]}); restore the "
                                "file (e.g. from git), or move the run folder out of runs/") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise LlamalabError(f"{path}: this run's settings are not a mapping of keys to values (it holds a "
                                f"{type(data).__name__}); restore the file (e.g. from git), or move the run folder "
                                "out of runs/")
        return data

    @classmethod
    def create(cls, runs_dir: Path, kind: str, name: str, config: dict, **fields: Any) -> RunRecord:
        """Claim a new run folder and write its initial record (status: running).

        `fields` are the kind's own parts of the record (see runs/schema.py); they are validated first, so a
        record that could not be read back is never written."""
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:60]
        run = _validated(RUN_TYPES[kind], {
            "id": f"{stamp}-{kind}-{slug}-0000", "kind": kind, "name": name, "started": now_iso(),
            "config_hash": config_hash(config), **fields, "environment": environment(runs_dir.parent),
            "pid": os.getpid(), "host": socket.gethostname(), "slurm_job": slurm_job(),
        })
        runs_dir.mkdir(parents=True, exist_ok=True)
        while True:
            run_id = f"{stamp}-{kind}-{slug}-{secrets.token_hex(2)}"
            try:
                (runs_dir / run_id).mkdir()  # atomic: two runs can never claim the same folder
                break
            except FileExistsError:
                continue
        record = cls(runs_dir / run_id, run.model_copy(update={"id": run_id}))
        write_yaml_atomic(record.folder / CONFIG_FILE, config)
        record.save()
        return record

    @classmethod
    def load(cls, folder: str | Path) -> RunRecord:
        folder = Path(folder)  # from Python a folder may come as text
        path = folder / RUN_FILE
        if not path.is_file():
            raise LlamalabError(f"{folder} is not a run folder (no {RUN_FILE})")
        try:
            return cls(folder, parse_run(json.loads(path.read_text(encoding="utf-8"))))
        except (RecordError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LlamalabError(f"{path}: cannot read this run record: {exc}; restore it (e.g. from git), or move "
                                "the run folder out of runs/ to go on without it") from None

    def update(self, **fields: Any) -> None:
        """Change top-level fields (validated: a wrong shape fails here, not in a reader) and save."""
        self.run = _validated(type(self.run), {**self.run.model_dump(), **fields})
        self.save()

    def save(self) -> None:
        write_json_atomic(self.folder / RUN_FILE, self.run.model_dump(mode="json"))

    @contextlib.contextmanager
    def tracking(self) -> Iterator[RunRecord]:
        """Mark the run finished, interrupted (Ctrl-C, a Slurm time limit) or failed (with the error) when the
        block ends."""
        start = time.perf_counter()
        status, error = "finished", None
        stop = _heartbeat(self.folder / RUN_FILE)
        try:
            yield self
        except BaseException as exc:
            status, error = ("interrupted", None) if _interruption(exc) else ("failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            stop.set()
            timings = dict(self.run.timings)
            timings["total_s"] = round(timings.get("total_s", 0) + time.perf_counter() - start, 2)
            # the peak over the run's sessions, and over its training processes (the first one records its own)
            peak = max(self.run.peak_memory_mb or 0, peak_memory_mb())
            self.update(status=status, ended=now_iso(), error=error, timings=timings, peak_memory_mb=peak)


def _heartbeat(path: Path) -> threading.Event:
    """Touch `path` every HEARTBEAT_S until the returned event is set: a run's files then say it is being worked
    on, also to a machine that cannot ask after its process (`is_alive`)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):  # between an atomic write's rename and the next: the next touches
                os.utime(path)

    threading.Thread(target=beat, name="llamalab-heartbeat", daemon=True).start()
    return stop


def _interruption(exc: BaseException) -> bool:
    """Ctrl-C, or Slurm stopping a job at its time limit (submitit raises its UncompletedJobError in the job):
    the run can continue where it stopped, so it is interrupted, not failed (a plain rerun takes it up)."""
    kind = type(exc)
    return isinstance(exc, KeyboardInterrupt) or (kind.__module__.startswith("submitit")
                                                   and kind.__name__ == "UncompletedJobError")


def _validated(model: type[EvalRun] | type[TrainRun], data: dict[str, Any]) -> Run:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise LlamalabError(f"a {data.get('kind')} run record would be malformed: {problems(exc)}") from None


def list_runs(runs_dir: Path | str, kind: str | None = None) -> list[RunRecord]:
    """All runs (of one kind: "train" or "eval") in a lab's runs folder (`lab.runs_dir`; a lab itself, or its
    root folder, stands for its runs/), oldest first by their start time (to the millisecond: run ids give only
    the second, then a random suffix). A run.json this llamalab cannot read is an error naming it."""
    runs_dir = _runs_folder(runs_dir)
    if kind not in (None, *RUN_TYPES):
        raise LlamalabError(f"run kind {kind!r}: use one of {', '.join(RUN_TYPES)} (or none for every run)")
    if not runs_dir.is_dir():
        return []
    records = []
    for folder in sorted(runs_dir.iterdir()):
        if (folder / RUN_FILE).is_file():
            record = RunRecord.load(folder)
            if kind is None or record.run.kind == kind:
                records.append(record)
    return sorted(records, key=started_at)


def _runs_folder(where: Any) -> Path:
    """The runs folder `where` names: a path (a lab's root stands for its runs/) or a Lab."""
    if hasattr(where, "runs_dir"):
        return Path(where.runs_dir)
    if not isinstance(where, str | Path):
        raise LlamalabError(f"a runs folder is a path or a Lab, not {type(where).__name__}")
    where = Path(where)
    return where / "runs" if (where / "lab.yaml").is_file() else where


def started_at(record: RunRecord) -> tuple[datetime, str]:
    """When a run started (to the millisecond), then its id: the order runs are listed in, oldest first."""
    started = datetime.fromisoformat(record.run.started)  # validated when read
    return (started if started.tzinfo else started.replace(tzinfo=UTC)), record.id


def names_run(ref: str, run_id: str) -> bool:
    """Whether `ref` names the run: the run id or any part of it (a prefix, the random suffix, the experiment
    name). The one rule for naming a run anywhere (eval, export, compare, report)."""
    return bool(ref) and ref in run_id


def matching_runs(runs_dir: Path | str, ref: str, kind: str | None = None) -> list[RunRecord]:
    """The run whose id is `ref`, else every run `ref` names (see `names_run`)."""
    runs_dir = _runs_folder(runs_dir)
    if (runs_dir / ref / RUN_FILE).is_file():
        record = RunRecord.load(runs_dir / ref)
        return [record] if kind is None or record.run.kind == kind else []
    return [r for r in list_runs(runs_dir, kind) if names_run(ref, r.id)]


def find_run(runs_dir: Path | str, ref: str, kind: str | None = None) -> RunRecord:
    """The one run `ref` names (see `matching_runs`), or an error: listing the runs it names when several, and
    saying where it looked when none."""
    runs_dir = _runs_folder(runs_dir)
    matches = matching_runs(runs_dir, ref, kind)
    if len(matches) == 1:
        return matches[0]
    what = f"{kind} run" if kind else "run"
    if matches:
        raise LlamalabError(f"{what} {ref!r} is ambiguous: {', '.join(r.id for r in matches)}")
    raise LlamalabError(f"no {what} {ref!r} in {runs_dir}")


API_IDENTITY = ("base_url", "model", "input_price_per_mtok", "output_price_per_mtok")  # what answers and costs are of


@dataclass(frozen=True)
class Inputs:
    """What a run's settings do not pin down but its results depend on: the weights it started from (a model
    folder or GGUF file rewritten in place keeps its path, so its settings), the task's data files and definition
    (its file's data layout, prompt and answer), and an API model's endpoint, model id and prices (lab.yaml may
    point its name at another)."""

    revision: str | None = None  # the base model's (train) or evaluated model's (eval) revision
    data_sha256: dict[str, str] | None = None
    task_sha256: str | None = None  # Task.definition_sha256(the run's kind)
    api: dict | None = None  # the API model's settings (ApiModel), for an evaluation of one

    def differ(self, record: RunRecord) -> str | None:
        """Why `record` did not start from these inputs, or None if it did (or cannot tell)."""
        run = record.run
        model = run.model if run.kind == "train" else getattr(run.system, "model", None)
        recorded = getattr(model, "revision", None)
        if self.revision and recorded and recorded != self.revision:
            return f"its weights ({model.name}) were revision {recorded} and are now {self.revision}"
        if self.data_sha256 and run.task.data_sha256 and run.task.data_sha256 != self.data_sha256:
            return f"task {run.task.name!r}'s data files changed since it started"
        if self.task_sha256 and run.task.definition_sha256 and run.task.definition_sha256 != self.task_sha256:
            return (f"task {run.task.name!r} was defined otherwise when it started (tasks/{run.task.name}.yaml: its "
                    "prompt, answer or data layout changed)")
        was = getattr(run.system, "api", None) if run.kind == "eval" else None
        if self.api and was and (changed := [key for key in API_IDENTITY if key in was and _api_value(was[key])
                                             != _api_value(self.api.get(key))]):
            shown = ", ".join(f"{key} {was.get(key)} → {self.api.get(key)}" for key in changed)
            return f"API model {run.system.label} is set otherwise in lab.yaml now ({shown})"
        return None


def _api_value(value: Any) -> Any:
    return value.rstrip("/") if isinstance(value, str) else value


def same_settings(record: RunRecord, now: str, before: set[str],
                  where: Callable[[RunRecord], bool] = lambda record: True) -> bool:
    """Whether a run was started with the settings hashed `now` (or as an earlier llamalab recorded them:
    `before`) and `where` says it is of the same thing (an evaluation: of the same system; a record of an earlier
    llamalab may have recorded another system under these settings)."""
    return (record.run.config_hash == now or record.run.config_hash in before) and where(record)


def finished_run(runs_dir: Path, kind: str, config: dict, name: str | None = None,
                 inputs: Inputs = Inputs(), also: Sequence[dict] = (),
                 where: Callable[[RunRecord], bool] = lambda record: True) -> RunRecord | None:
    """The latest finished run of this kind (and name) started with exactly these settings (or the same settings
    as recorded by an earlier llamalab: `also`), taken only `where` it says so (`same_settings`), if any, from the
    same `inputs` (a run whose recorded weights or data differ from them is not the same run)."""
    now, before = config_hash(config), {config_hash(c) for c in also}
    done = [r for r in list_runs(runs_dir, kind) if r.run.finished and same_settings(r, now, before, where)
            and (name is None or r.run.name == name) and inputs.differ(r) is None]
    return done[-1] if done else None


# Settings that change how fast or in how much memory a run goes, never its numbers: a run killed for memory (or
# one the plan sized for another card) continues with other values (a smaller eval batch; checkpointing on).
RESUME_ANY = {"eval": ("batch_size",), "train": ("activation_checkpointing", "memory_limit")}


def _continues(record: RunRecord, kind: str, config: dict, wanted: str, before: set[str],
               where: Callable[[RunRecord], bool]) -> bool:
    """Whether `--resume` with `config` may continue `record`: the same settings (`same_settings`), or settings
    that differ only in what `RESUME_ANY` names."""
    if same_settings(record, wanted, before, where):
        return True
    loose = [{k: v for k, v in settings.items() if k not in RESUME_ANY[kind]} for settings in (record.config, config)]
    return loose[0] == loose[1] and where(record)


def has_unfinished(runs_dir: Path, kind: str, name: str, config: dict, inputs: Inputs = Inputs(),
                   also: Sequence[dict] = (), where: Callable[[RunRecord], bool] = lambda record: True) -> bool:
    """Whether an unfinished run of this kind, name and settings exists that `resume_run` would continue (the
    latest such, from the same `inputs`; `also` and `where` as there)."""
    wanted, before = config_hash(config), {config_hash(c) for c in also}
    same = [r for r in list_runs(runs_dir, kind) if r.run.name == name and not r.run.finished
            and _continues(r, kind, config, wanted, before, where)]
    return bool(same) and inputs.differ(same[-1]) is None


def resume_run(runs_dir: Path, kind: str, name: str, config: dict, inputs: Inputs = Inputs(),
               also: Sequence[dict] = (), where: Callable[[RunRecord], bool] = lambda record: True) -> RunRecord:
    """The latest unfinished run of this kind and name started with the same settings (`also`: as an earlier
    llamalab recorded them; those `RESUME_ANY` names may differ), taken only `where` it says so
    (`same_settings`), marked running again.

    The one rule for `--resume` (train and eval): a run started with other settings is never continued, and
    one still being worked on by a live process is never taken over."""
    wanted, before = config_hash(config), {config_hash(c) for c in also}
    unfinished = [r for r in list_runs(runs_dir, kind) if r.run.name == name and not r.run.finished]
    same = [r for r in unfinished if _continues(r, kind, config, wanted, before, where)]
    what = "evaluation" if kind == "eval" else "run"
    if not same:
        if unfinished:
            latest = unfinished[-1]
            defaults = _later_settings() if kind == "train" else None
            changed = settings_differences(latest.config, config, defaults)
            raise LlamalabError(f"no unfinished {what} of {name!r} with these settings: {latest.id} was started with "
                                f"different ones (config hash {latest.run.config_hash}, now {wanted}"
                                + (f"; it had {changed}" if changed else "") + "); resume with the same settings"
                                + (f", e.g. `... --resume {_how_to_set(kind, latest.config, config, defaults)}`"
                                   if changed else ""))
        raise LlamalabError(f"no unfinished {what} of {name!r} to resume in {runs_dir}")
    record = same[-1]
    if why := inputs.differ(record):
        raise LlamalabError(f"run {record.id} cannot be continued: {why}, so its finished part would not match the "
                            "rest; start it afresh (without --resume)")
    with _claim_lock(runs_dir):  # two resumes at once: the second sees the first's claim, not a dead run
        record = RunRecord.load(record.folder)
        if is_alive(record):
            elsewhere = record.run.host is not None and record.run.host != socket.gethostname()
            where = f" on {record.run.host}" if record.run.host else ""
            raise LlamalabError(
                f"run {record.id} is still running (pid {record.run.pid}{where})" + (
                    f"; its files changed {silent_s(record):.0f} s ago: if that machine or container has stopped, "
                    f"the run can be resumed once they have been untouched for {SILENT_S / 60:.0f} minutes"
                    if elsewhere else ""))
        record.update(status="running", pid=os.getpid(), host=socket.gethostname(), slurm_job=slurm_job(),
                      resumed=[*record.run.resumed, now_iso()])
    return record


@contextlib.contextmanager
def _claim_lock(runs_dir: Path) -> Iterator[None]:
    """Held while a process checks that a run is not alive and marks it as its own (one file for the runs
    folder, not one left in every resumed run's folder)."""
    import fcntl

    with (runs_dir / ".claim.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): data}


def _changed(theirs: dict, ours: dict, defaults: dict | None = None) -> list[tuple[str, Any, Any]]:
    """(dotted key, the run's value, ours) where two settings differ; a key left out of either (recorded before it
    existed, or at its default) counts as its value in `defaults`."""
    a, b = (_flat(settings) for settings in (theirs, ours))
    for flat in (a, b):
        flat |= {key: value for key, value in (defaults or {}).items() if key not in flat}
    return [(key, a.get(key), b.get(key)) for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)]


def settings_differences(theirs: dict, ours: dict, defaults: dict | None = None) -> str:
    """The settings a run had that differ from `ours`, as `key: value (now other)`, e.g. for a resume refused."""
    return "; ".join(f"{key}: {mine!r} (now {now!r})" for key, mine, now in _changed(theirs, ours, defaults))


def overrides_of(theirs: dict, ours: dict, defaults: dict | None = None) -> str:
    """The `key=value` overrides that turn settings `ours` into the run's `theirs`, quoted for a shell."""
    import shlex

    return " ".join(shlex.quote(f"{key}={json.dumps(mine, separators=(',', ':'))}")
                    for key, mine, _ in _changed(theirs, ours, defaults))


def _how_to_set(kind: str, theirs: dict, ours: dict, defaults: dict | None) -> str:
    """The settings that turn `ours` into the run's: `train`'s key=value overrides, or `eval`'s options."""
    if kind == "train":
        return overrides_of(theirs, ours, defaults)
    import shlex

    return " ".join(f"--{key.replace('_', '-')} {shlex.quote(str(mine))}" if mine is not None else
                    f"(no --{key.replace('_', '-')})" for key, mine, _ in _changed(theirs, ours, defaults))


def _later_settings() -> dict:
    """Experiment settings added after the first records, which a run at their default leaves out."""
    from llamalab.training.experiment import LATER_SETTINGS

    return dict(LATER_SETTINGS)


def silent_s(record: RunRecord) -> float:
    """Seconds since any of the run's files (run.json, its predictions, its training log) last changed, by the clock
    that stamps them: on a shared file system the server's, so that a node whose own clock is off does not take a
    run another node is working on for a stopped one (or the reverse)."""
    times = []
    for name in (RUN_FILE, PREDICTIONS, TRAIN_LOG):
        with contextlib.suppress(OSError):
            times.append((record.folder / name).stat().st_mtime)
    return _file_clock(record.folder.parent) - max(times, default=0.0)


def _file_clock(folder: Path) -> float:
    """Now, as the file system holding `folder` stamps a file written there (this machine's clock where nothing can
    be written)."""
    try:
        handle, name = tempfile.mkstemp(prefix=".clock-", dir=folder)
    except OSError:
        return time.time()
    try:
        return os.fstat(handle).st_mtime
    finally:
        os.close(handle)
        with contextlib.suppress(OSError):
            os.unlink(name)


def slurm_job() -> str | None:
    """The Slurm job this process is in (a job array's task as ARRAYID_TASK, as squeue names it), if any."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID") or None


def slurm_job_alive(job: str) -> bool | None:
    """Whether Slurm still has `job` queued or running; None when Slurm cannot be asked from here."""
    import shutil

    if shutil.which("squeue") is None:
        return None
    try:
        done = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:  # squeue refuses a job id it no longer knows
        return False if "Invalid job id" in done.stderr else None
    return bool(done.stdout.strip())


def is_alive(record: RunRecord) -> bool:
    """Whether a run marked running is still being worked on by a live process (other than this one).

    A run on another machine (a cluster node) is checked through its Slurm job where it recorded one (a job that
    was killed, cancelled or ran out of time leaves the record "running"); where Slurm cannot say, by its files: a
    live process touches its run.json every minute, so files untouched for SILENT_S mean no process works on it (a
    container or machine that stopped)."""
    pid = record.run.pid
    if record.run.status != "running" or not pid:
        return False
    if record.run.host is not None and record.run.host != socket.gethostname():
        job = record.run.slurm_job
        if job is not None and job == slurm_job():
            return True  # another node of this very job
        if job is not None and (alive := slurm_job_alive(job)) is not None:
            return alive
        return silent_s(record) < SILENT_S
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    # a process that started after the run last did is another one under a reused pid (after a reboot, say)
    began = _process_start(pid)
    latest = max(datetime.fromisoformat(t).timestamp() for t in (record.run.started, *record.run.resumed))
    return began is None or began <= latest + 2


def _process_start(pid: int) -> float | None:
    """When process `pid` started (Unix time), where /proc says; else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def peak_memory_mb() -> float:
    """Peak resident memory of this process (and GPU memory when CUDA is in use)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            peak = max(peak, torch.cuda.max_memory_allocated() / 2**20)
    return round(peak, 1)


def environment(lab_root: Path) -> dict[str, Any]:
    """Git state of the lab, package versions and hardware, so a number can be traced and reproduced."""
    return {"git": git_state(lab_root), "packages": _package_versions(), "hardware": _hardware()}


def git_state(cwd: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:  # what llamalab itself writes (run records, reports, the site, assignments) is not an uncommitted change
        mine = [f":(exclude){folder}" for folder in ("runs", "reports", "site", "assignments")]
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", ".", *mine))}
    except (subprocess.SubprocessError, FileNotFoundError):
        return {"commit": None, "dirty": None}


def _package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform says."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _hardware() -> dict[str, Any]:
    import psutil

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": None,
    }
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info
