"""A real single-node Slurm cluster runs llamalab's jobs through submitit.

The cluster is started by scripts/install-slurm.sh (`make test` runs it first). These tests fail, never skip,
when it is not up: a missing cluster is a broken test environment, not an optional feature.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
from submitit.core.utils import UncompletedJobError

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
START_HINT = "start the cluster with `bash scripts/install-slurm.sh` (make test runs it)"


# Job functions live at module level: submitit pickles them by reference, so the job imports this module
# (the repo root is put on its PYTHONPATH by the executor's slurm_setup).
def report_identity(tag: str) -> dict[str, str | int | None]:
    return {
        "tag": tag,
        "pid": os.getpid(),
        "python": sys.executable,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "setup_marker": os.environ.get("LLAMALAB_SLURM_SETUP"),
    }


def sleep_for(seconds: float) -> str:
    time.sleep(seconds)
    return "woke up"


def run(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}; {START_HINT}"
    return done.stdout


def scontrol_state(job_id: str) -> str:
    """JobState from slurmctld's memory (finished jobs stay there for MinJobAge; no accounting needed)."""
    out = run("scontrol", "show", "job", job_id)
    return out.split("JobState=", 1)[1].split()[0]


def write_tiny_study(lab, model, name: str, training: str, sizes: list[int]) -> None:
    """Experiment `tiny` (the tiny model, LoRA, `training` settings) and study `name` over training-set `sizes`,
    each cell a small Slurm job evaluated on 6 examples, with no baselines."""
    from tests.conftest import write_experiment

    write_experiment(lab, "tiny", f"task: sentiment\nbase_model: {model}\nlora: {{r: 4, alpha: 8}}\n{training}")
    (lab.root / "studies").mkdir(exist_ok=True)
    (lab.root / "studies" / f"{name}.yaml").write_text(
        f"experiment: tiny\ngrid: {{train_examples: {sizes}}}\neval: {{limit: 6}}\ncomparators: {{baselines: false}}\n"
        "resources: {cpus: 1, mem_gb: 2, time_min: 10}\n")


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster() -> str:
    """The default partition of a running cluster; fails loudly when Slurm is not installed or not up."""
    for tool in ("sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo", "sacct"):
        assert shutil.which(tool), f"`{tool}` is not on PATH: {START_HINT}"
    assert " is UP" in run("scontrol", "ping"), f"slurmctld is not up: {START_HINT}"
    partitions = [line.split() for line in run("sinfo", "-h", "-o", "%P %T").splitlines()]
    default = [name.rstrip("*") for name, _ in partitions if name.endswith("*")]
    assert default, f"no default partition in {partitions}"
    states = {state for name, state in partitions if name.rstrip("*") == default[0]}
    assert states & {"idle", "mixed", "allocated", "completing"}, f"no usable node in {default[0]}: {states}"
    return default[0]


@pytest.fixture
def executor(tmp_path: Path, cluster: str) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    assert executor.cluster == "slurm"
    executor.update_parameters(
        name="llamalab-test",
        timeout_min=5,
        cpus_per_task=1,
        mem_gb=0.25,
        slurm_partition=cluster,
        # The job's Python is this one (submitit uses sys.executable); it must import tests.test_slurm.
        slurm_setup=[f"export PYTHONPATH={REPO_ROOT}", "export LLAMALAB_SLURM_SETUP=yes"],
    )
    return executor


def wait_done(job: submitit.Job, timeout_s: float) -> None:
    """job.result() waits forever on a job that never finishes; bound it."""
    wait_until(lambda: job.done(force_check=True), timeout_s, f"Slurm job {job.job_id} (state {job.state})")


def cancel_unless_done(job: submitit.Job) -> None:
    """Leaves no job behind when a test fails half-way."""
    if not job.done():
        job.cancel(check=False)


def test_a_job_runs_on_the_cluster_and_returns_its_result(executor):
    job = executor.submit(report_identity, "hello")
    try:
        wait_done(job, 120)
    finally:
        cancel_unless_done(job)
    result = job.result()
    assert result["tag"] == "hello"
    assert result["slurm_job_id"] == job.job_id  # it ran as that Slurm job...
    assert result["pid"] != os.getpid()  # ...in another process...
    assert result["python"] == sys.executable  # ...with this venv's Python...
    assert result["setup_marker"] == "yes"  # ...after the executor's setup lines
    # The result file is written before the job step ends: COMPLETING, then COMPLETED.
    wait_until(lambda: scontrol_state(job.job_id) == "COMPLETED", 30, f"job {job.job_id} to complete")
    wait_until(lambda: job.watcher.get_state(job.job_id, mode="force") == "COMPLETED", 30, "sacct to say COMPLETED")


def test_a_cancelled_job_ends_cancelled_and_has_no_result(executor):
    job = executor.submit(sleep_for, 600)
    try:
        wait_until(lambda: scontrol_state(job.job_id) == "RUNNING", 60, f"job {job.job_id} to start")
        run("scancel", job.job_id)
        wait_until(lambda: scontrol_state(job.job_id) == "CANCELLED", 60, f"job {job.job_id} to be cancelled")
        # submitit learns the state from sacct (accounting through slurmdbd): "CANCELLED by <uid>".
        wait_until(lambda: job.watcher.get_state(job.job_id, mode="force").startswith("CANCELLED"), 30,
                   "sacct to report the cancellation")
        assert job.state.startswith("CANCELLED")
        assert job.done()
        with pytest.raises(UncompletedJobError, match="CANCELLED"):  # after submitit's 15 s wait for a late result
            job.result()
    finally:
        cancel_unless_done(job)


def test_a_study_runs_on_slurm_and_a_cancelled_cell_completes_with_retry_failed(cluster, lab, tiny_model_dir):
    """Two cells as Slurm jobs; one is cancelled with scancel; `--retry-failed` completes it. The jobs write the
    same records a local run would (same settings hash, status finished)."""
    from typer.testing import CliRunner

    from llamalab.cli import app
    from llamalab.runs.record import list_runs
    from llamalab.studies.run import cell_states
    from llamalab.studies.spec import load_study

    # Long enough (a few hundred tiny steps) that the canceller always finds the first cell still training.
    write_tiny_study(lab, tiny_model_dir, "on-slurm", "max_steps: 300\nsave_steps: 5\n", [8, 16])
    study = load_study(lab, "on-slurm")
    args = ["study", "run", "on-slurm", "--executor", "slurm", "--max-parallel", "1", "--lab", str(lab.root)]

    # Cancel the first cell's job while it trains (array tasks run one at a time with --max-parallel 1).
    import threading

    def cancel_first() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = run("squeue", "-h", "-t", "RUNNING", "-n", "study-on-slurm", "-o", "%i").split()
            trains = [r for r in list_runs(lab.runs_dir, "train") if r.run.status == "running"]
            if running and trains:
                run("scancel", running[0])
                return
            time.sleep(0.1)

    canceller = threading.Thread(target=cancel_first)
    canceller.start()
    first = CliRunner().invoke(app, args)
    canceller.join()
    assert first.exit_code != 0 and "1 of 2 cell(s) failed" in str(first.exception), first.output
    states = cell_states(lab, study)
    assert sorted(s.status for s in states) == ["finished", "interrupted"], [s.status for s in states]

    second = CliRunner().invoke(app, [*args, "--retry-failed"])
    assert second.exit_code == 0, second.output
    assert "1 finished (skipped), 1 to submit" in second.output
    states = cell_states(lab, study)
    assert [s.status for s in states] == ["finished", "finished"]
    for state in states:  # the records a local run would write, for the cell's own settings
        assert state.train.run.config_hash == state.cell.key and state.train.run.host
        assert state.eval.run.metrics["accuracy"].n == 6


def test_a_run_on_a_node_counts_as_alive_only_while_its_job_is(executor, tmp_path):
    """A record left "running" by a job that was killed (out of memory, scancel, a node failure) is not alive:
    Slurm no longer has the job. Without a recorded job, a run on another host counts as alive while its files
    change (tests/test_records.py: once they are untouched for ten minutes it is not)."""
    from llamalab.runs.record import RunRecord, is_alive, slurm_job_alive
    from tests.records import train_fields

    job = executor.submit(sleep_for, 120)
    wait_until(lambda: scontrol_state(job.job_id) == "RUNNING", 60, "the job to start")
    record = RunRecord.create(tmp_path / "runs", "train", "t", {"a": 1}, **train_fields())
    record.update(host="gpu-node-17", pid=4242, slurm_job=job.job_id)
    assert slurm_job_alive(job.job_id) is True and is_alive(record)
    run("scancel", job.job_id)
    wait_until(lambda: not slurm_job_alive(job.job_id), 60, "the job to end")
    assert not is_alive(RunRecord.load(record.folder))
    record.update(slurm_job=None)
    assert is_alive(RunRecord.load(record.folder))


def test_a_stopped_submitter_does_not_submit_a_queued_cell_again(cluster, lab, tiny_model_dir):
    """`study run --executor slurm` waits for its jobs; stopped while a cell's job is queued or running (the
    login session ended), a second `study run` waits for that job instead of training the cell twice."""
    import json

    from typer.testing import CliRunner

    from llamalab.cli import app
    from llamalab.runs.record import list_runs
    from llamalab.studies.run import cell_states
    from llamalab.studies.spec import load_study

    write_tiny_study(lab, tiny_model_dir, "stopped", "max_steps: 40\n", [8])
    ledger = lab.runs_dir / ".jobs" / "stopped" / "submitted.json"
    submitter = subprocess.Popen([sys.executable, "-m", "llamalab.cli", "study", "run", "stopped", "--executor",
                                  "slurm", "--lab", str(lab.root)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")})
    try:
        wait_until(ledger.is_file, 120, "the cell's job to be submitted")
    finally:
        submitter.kill()
        submitter.wait()
    [job] = json.loads(ledger.read_text()).values()
    second = CliRunner().invoke(app, ["study", "run", "stopped", "--executor", "slurm", "--lab", str(lab.root)])
    assert second.exit_code == 0, second.output
    assert f"1 cell(s) already queued or running (jobs {job}): waiting for them" in " ".join(second.output.split())
    assert "submitted job array" not in second.output
    assert json.loads(ledger.read_text()) == {load_study(lab, "stopped").cells[0].key: job}
    assert len(list_runs(lab.runs_dir, "train")) == 1  # trained once
    [state] = cell_states(lab, load_study(lab, "stopped"))
    assert state.status == "finished" and state.train.run.slurm_job == job
