"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from llamalab.config import LlamalabError


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _mode_for(path))  # mkstemp makes 0600; a handout or site page must be readable like any file
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mode_for(path: Path) -> int:
    """The permissions `path` keeps if it exists, else those a plain `open()` would give it under the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _readable(folder: Path) -> None:
    """Give the files built in `folder` the permissions a plain `open()` gives under the umask (executables keep
    their x bits): some writers make theirs owner-only (safetensors' weights, mkstemp), and an adapter or export on
    a shared lab machine must be readable by the lab like its other files."""
    mask = _umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            executable = path.stat().st_mode & 0o111
            path.chmod((0o777 if executable else 0o666) & ~mask)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_folder(target: Path, *, shared: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder next to `target`; when the block succeeds the folder becomes `target`, whole.

    Every folder that must appear complete or not at all is built this way. A block that fails leaves `target`
    as it was and removes the staging folder; a kill leaves at worst a stale `.NAME.partial`, which the next build
    of the same target clears, or (killed while swapping) the previous `target` as `.NAME.old`, which the next
    build puts back before it starts.

    By default a `target` that exists when the block succeeds is replaced, and two builds of one `target` take
    turns (a lock, `.NAME.lock` while one is held; so one process must not build a `target` inside a build of the
    same `target`: it would wait for itself). With `shared=True` several processes may
    build the same `target` at once (a cache entry): each stages in its own `.NAME.PID.partial`, the first to finish
    wins, and a build that finds `target` already there when it finishes is discarded, keeping that `target`.
    """
    if shared:
        _clear_dead_stagings(target)
        staging = target.with_name(f".{target.name}.{socket.gethostname()}-{os.getpid()}.partial")
        yield from _staged(target, staging, shared=True)
        return
    with _exclusive(target.with_name(f".{target.name}.lock")):  # two builds of one target: one after the other
        old = target.with_name(f".{target.name}.old")
        if old.is_dir() and not target.exists():
            old.rename(target)  # a kill between the two renames below: the previous build is still whole, restore it
        yield from _staged(target, target.with_name(f".{target.name}.partial"), shared=False)


def _clear_dead_stagings(target: Path) -> None:
    """Remove the shared stagings of `target` that processes of this machine which are gone left (a kill while
    converting a model: gigabytes); another machine's (a cache on a shared drive) cannot be checked and are kept."""
    prefix, host = f".{target.name}.", socket.gethostname()
    for leftover in target.parent.glob(f"{glob.escape(prefix)}*.partial"):
        owner = leftover.name[len(prefix):-len(".partial")]
        where, _, pid = owner.rpartition("-")
        if not pid.isdigit() or where not in (host, ""):  # "": PID alone, as staged before the host was named
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(leftover, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def _staged(target: Path, staging: Path, shared: bool) -> Iterator[Path]:
    """Stage in `staging`, then swap it in as `target`. Whatever fails, the swap included, removes `staging` (no
    `.NAME.partial` is left behind) and puts the previous `target` back if it had been moved aside. A `target` that
    is a file is refused before anything is written: a build makes a folder, and a user's file is no previous build.
    """

    def _remove(path: Path) -> None:  # a folder, file or link: rmtree alone leaves a file where a folder was
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)

    if target.exists() and not target.is_dir():
        raise LlamalabError(f"{target} is a file, and a build writes a folder there: name a folder (or move the file)")
    old = target.with_name(f".{target.name}.old")
    _remove(staging)
    staging.mkdir(parents=True)
    moved = False
    try:
        yield staging
        _readable(staging)
        if shared:
            try:
                staging.rename(target)  # atomic; refused when another build already put a (non-empty) target there
            except OSError:
                if not target.exists():
                    raise
            return
        _remove(old)  # a stale previous build, or a file someone left under our name
        if target.exists() or target.is_symlink():
            target.rename(old)
            moved = True
        staging.rename(target)
        moved = False
        _remove(old)
    except BaseException:
        if moved and not target.exists():
            old.rename(target)  # the swap failed halfway: the previous build is still whole, put it back
        raise
    finally:
        _remove(staging)


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `lock` (made for the purpose, removed after): a second holder waits.

    The holder removes the file before it lets go; one who was waiting then holds a lock on a removed file, which
    is no one's lock, so it takes the lock again on the file as it is now."""
    import fcntl

    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                try:
                    yield
                finally:
                    lock.unlink(missing_ok=True)
                return
        finally:
            os.close(fd)  # lets go of the lock


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_yaml_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def append_jsonl(path: Path, records: list[dict]) -> None:
    """Append whole lines and fsync, so a kill loses at most the batch being written.

    A kill mid-write can leave a truncated last line; `read_jsonl` skips it.
    """
    if not records:
        return
    payload = "".join(json.dumps(r, default=str) + "\n" for r in records)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def repair_jsonl(path: Path) -> None:
    """Cut a truncated final line (left by a kill mid-append) so that appending can continue safely."""
    if not path.is_file():
        return
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with path.open("r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """Every complete record; a truncated final line (from a kill mid-append) is ignored. A line that is not a
    JSON object anywhere else is damage (an edit, a merge conflict, a Git LFS pointer): an error naming it."""
    if not path.is_file():
        return []
    records = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.endswith(b"\n"):
                break
            try:
                row = json.loads(raw)
            except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
                row = exc
            if not isinstance(row, dict):
                what = "not a JSON object" if not isinstance(row, Exception) else f"not JSON ({row})"
                raise LlamalabError(f"{path}:{number}: {what}; the file was edited or damaged: restore it (e.g. "
                                    "from git), or move the run folder out of runs/")
            records.append(row)
    return records
