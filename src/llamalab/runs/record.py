"""Run records: one self-describing folder per train or eval run, in plain text.

runs/<run-id>/run.json holds what ran (resolved config and its hash, model, data hashes, git
commit, packages, hardware), how it went (status, times, throughput, peak memory) and its metrics.
Every write is atomic, and run ids are claimed with mkdir, so concurrent runs never collide.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import secrets
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from llamalab.config import LlamalabError
from llamalab.runs.files import write_json_atomic, write_yaml_atomic

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"  # the resolved settings the run was started with
TRAIN_LOG = "train_log.jsonl"  # one row per logged training step
_PACKAGES = ("llamalab", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "numpy", "scipy")


def config_hash(config: dict) -> str:
    """A short, stable hash of a resolved config (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class RunRecord:
    """A run folder and its run.json, rewritten atomically on every update."""

    def __init__(self, folder: Path, data: dict[str, Any]):
        self.folder = folder
        self.data = data

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def config(self) -> dict[str, Any]:
        """The run's resolved settings (config.yaml), or {} when it has none."""
        path = self.folder / CONFIG_FILE
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
        return data if isinstance(data, dict) else {}

    @classmethod
    def create(cls, runs_dir: Path, kind: str, name: str, config: dict, **fields: Any) -> RunRecord:
        """Claim a new run folder and write its initial record (status: running)."""
        runs_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:60]
        while True:
            run_id = f"{stamp}-{kind}-{slug}-{secrets.token_hex(2)}"
            try:
                (runs_dir / run_id).mkdir()  # atomic: two runs can never claim the same folder
                break
            except FileExistsError:
                continue
        record = cls(
            runs_dir / run_id,
            {
                "id": run_id,
                "kind": kind,
                "name": name,
                "status": "running",
                "started": now_iso(),
                "ended": None,
                "config_hash": config_hash(config),
                **fields,
                "environment": environment(runs_dir.parent),
                "pid": os.getpid(),
            },
        )
        write_yaml_atomic(record.folder / CONFIG_FILE, config)
        record.save()
        return record

    @classmethod
    def load(cls, folder: Path) -> RunRecord:
        path = folder / RUN_FILE
        if not path.is_file():
            raise LlamalabError(f"{folder} is not a run folder (no {RUN_FILE})")
        return cls(folder, json.loads(path.read_text(encoding="utf-8")))

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def save(self) -> None:
        write_json_atomic(self.folder / RUN_FILE, self.data)

    @contextlib.contextmanager
    def tracking(self) -> Iterator[RunRecord]:
        """Mark the run finished, interrupted (Ctrl-C) or failed (with the error) when the block ends."""
        start = time.perf_counter()
        status, error = "finished", None
        try:
            yield self
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except BaseException as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            timings = dict(self.data.get("timings") or {})
            timings["total_s"] = round(timings.get("total_s", 0) + time.perf_counter() - start, 2)
            self.update(status=status, ended=now_iso(), error=error, timings=timings, peak_memory_mb=peak_memory_mb())


def list_runs(runs_dir: Path, kind: str | None = None) -> list[RunRecord]:
    """All readable runs, oldest first."""
    if not runs_dir.is_dir():
        return []
    records = []
    for folder in sorted(runs_dir.iterdir()):
        if (folder / RUN_FILE).is_file():
            record = RunRecord.load(folder)
            if kind is None or record.data.get("kind") == kind:
                records.append(record)
    return records


def find_run(runs_dir: Path, run_id: str) -> RunRecord:
    folder = runs_dir / run_id
    if (folder / RUN_FILE).is_file():
        return RunRecord.load(folder)
    matches = [r for r in list_runs(runs_dir) if r.id.startswith(run_id) or r.id.endswith(run_id)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise LlamalabError(f"run {run_id!r} is ambiguous: {', '.join(r.id for r in matches)}")
    raise LlamalabError(f"no run {run_id!r} in {runs_dir}")


def is_alive(record: RunRecord) -> bool:
    """Whether a run marked running is still being worked on by a live process (other than this one)."""
    pid = record.data.get("pid")
    if record.data.get("status") != "running" or not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


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

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "."))}
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


def _hardware() -> dict[str, Any]:
    import psutil

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": None,
    }
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info
