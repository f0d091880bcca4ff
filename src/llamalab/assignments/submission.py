"""Reading a submission that may be hostile: every file is found, opened and read under limits, never trusted.

A file is looked for at the top of the submission, else in one folder below it (an uploaded `submit/`), else in a
zip archive uploaded instead of the files, which is read in memory and never extracted. Symbolic links (for
example to the hidden labels), anything that is not a regular file, unsafe names in a zip, and files over their
size limit are refused before a byte is read. Each refusal is a message for the student, never an exception.
"""

from __future__ import annotations

import lzma
import os
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from llamalab.assignments.rubric import Limits

_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class SubmittedFile:
    """One expected file: its bytes, or why it could not be read (`problem`); `where` says where it was found."""

    name: str
    data: bytes | None = None
    problem: str | None = None
    where: str = ""


@dataclass(frozen=True)
class Submission:
    files: dict[str, SubmittedFile]
    notes: list[str]  # how the submission was read (a folder, a zip), for the student


def shown(name: str, limit: int = 60) -> str:
    """A name from the submission as safe, short text for a message (quotes, escapes, truncation)."""
    text = name if len(name) <= limit else name[:limit] + "..."
    return ascii(text)


def read_submission(folder: Path, names: tuple[str, ...], limits: Limits) -> Submission:
    """The expected files of the submission in `folder`, each read or refused with a reason."""
    try:
        info = os.lstat(folder)
    except OSError:
        return _all_missing(names, "the submission folder does not exist")
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        return _all_missing(names, "the submission is not a folder (a symbolic link or a file)")
    entries = _entries(folder)
    found = {name: _locate(folder, entries, name) for name in names}
    if all(where is None for where in found.values()):
        zips = sorted(name for name, kind in entries.items() if kind == "file" and name.lower().endswith(".zip"))
        if len(zips) == 1:
            return _read_zip(folder / zips[0], zips[0], names, limits)
        if len(zips) > 1:
            return _all_missing(names, f"found {len(zips)} zip archives and no files: upload one")
    files = {}
    for name in names:
        where = found[name]
        if where is None:
            files[name] = SubmittedFile(name, problem=f"{name} is missing: upload it at the top of the submission")
        elif isinstance(where, str):
            files[name] = SubmittedFile(name, problem=where)
        else:
            files[name] = _read_file(where, name, limits.of(name), where.relative_to(folder).as_posix())
    return Submission(files, [])


def _all_missing(names: tuple[str, ...], why: str) -> Submission:
    return Submission({name: SubmittedFile(name, problem=why) for name in names}, [])


def _entries(folder: Path) -> dict[str, str]:
    """Each entry of a folder as "file", "dir", "link" or "other", without following links."""
    kinds = {}
    with os.scandir(folder) as it:
        for entry in it:
            if entry.is_symlink():
                kinds[entry.name] = "link"
            elif entry.is_dir(follow_symlinks=False):
                kinds[entry.name] = "dir"
            elif entry.is_file(follow_symlinks=False):
                kinds[entry.name] = "file"
            else:
                kinds[entry.name] = "other"
    return kinds


def _locate(folder: Path, entries: dict[str, str], name: str) -> Path | str | None:
    """Where `name` is: a path, a refusal (str), or None when it is nowhere."""
    if name in entries:
        return _refusal(name, entries[name]) or folder / name
    homes = []
    for sub in sorted(n for n, kind in entries.items() if kind == "dir"):
        inner = _entries(folder / sub)
        if name in inner:
            homes.append((sub, inner[name]))
    if len(homes) > 1:
        return f"{name} is in {len(homes)} folders ({', '.join(shown(s) for s, _ in homes[:3])}): upload one"
    if homes:
        sub, kind = homes[0]
        return _refusal(f"{sub}/{name}", kind) or folder / sub / name
    return None


def _refusal(name: str, kind: str) -> str | None:
    if kind == "link":
        return f"{shown(name)} is a symbolic link; links are never followed: upload the file itself"
    if kind != "file":
        return f"{shown(name)} is not a regular file"
    return None


def _open_regular(path: Path, limit: int, where: str):
    """An open binary handle on a regular file of at most `limit` bytes, or why not (a str).

    Opened without following links and without blocking (a FIFO), then checked on the open file itself, so a file
    swapped after the folder was listed cannot slip through."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return (f"{shown(where)} could not be opened ({exc.strerror or 'error'}); links are never followed: "
                "upload the file itself")
    handle = os.fdopen(fd, "rb")
    info = os.fstat(handle.fileno())
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
        handle.close()
        return _too_big(where, info.st_size, limit) if stat.S_ISREG(info.st_mode) else \
            f"{shown(where)} is not a regular file"
    return handle


def _read_file(path: Path, name: str, limit: int, where: str) -> SubmittedFile:
    """Read at most `limit` bytes: a file that grows after the check still cannot get past."""
    handle = _open_regular(path, limit, where)
    if isinstance(handle, str):
        return SubmittedFile(name, problem=handle)
    with handle:
        data = handle.read(limit + 1)
    return _checked(name, data, limit, where)


def _checked(name: str, data: bytes, limit: int, where: str) -> SubmittedFile:
    if len(data) > limit:
        return SubmittedFile(name, problem=_too_big(where, len(data), limit))
    if not data.strip():
        return SubmittedFile(name, problem=f"{shown(where)} is empty")
    if data.startswith(_ZIP_MAGIC):
        return SubmittedFile(name, problem=f"{shown(where)} is a zip archive, not {name}: upload the file itself")
    return SubmittedFile(name, data=data, where=where)


def _too_big(where: str, size: int, limit: int) -> str:
    return f"{shown(where)} is {_size(size)}, over the limit of {_size(limit)}: it was not read"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} bytes"


# What a damaged or encrypted archive raises while it is read (its compressed data raises its codec's own error)
_DAMAGED = (RuntimeError, zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, zlib.error,
            lzma.LZMAError)


def _read_zip(path: Path, label: str, names: tuple[str, ...], limits: Limits) -> Submission:
    """The expected files from a zip uploaded instead of them, read in memory under the same limits."""
    handle = _open_regular(path, limits.zip_bytes, label)
    if isinstance(handle, str):
        return _all_missing(names, handle)
    try:
        with handle, zipfile.ZipFile(handle) as archive:
            return _from_zip(archive, label, names, limits)
    except _DAMAGED as exc:
        return _all_missing(names, f"{shown(label)} is not a readable zip archive ({type(exc).__name__})")


def _from_zip(archive: zipfile.ZipFile, label: str, names: tuple[str, ...], limits: Limits) -> Submission:
    members = archive.infolist()
    if len(members) > limits.zip_members:
        return _all_missing(names, f"{shown(label)} holds {len(members)} entries, over the limit of "
                                   f"{limits.zip_members}")
    unsafe = [m.filename for m in members if not _safe_member(m.filename)]
    if unsafe:
        return _all_missing(names, f"{shown(label)} holds unsafe names such as {shown(unsafe[0])} (absolute, "
                                   "'..' or odd characters): nothing in it was read")
    links = [m.filename for m in members if stat.S_ISLNK(m.external_attr >> 16)]
    if links:
        return _all_missing(names, f"{shown(label)} holds symbolic links such as {shown(links[0])}: nothing in it "
                                   "was read")
    files = {}
    for name in names:
        homes = sorted((m for m in members if not m.is_dir() and _home(m.filename, name)),
                       key=lambda m: m.filename.count("/"))
        if not homes:
            files[name] = SubmittedFile(name, problem=f"{name} is missing from {shown(label)}")
            continue
        if len(homes) > 1 and homes[0].filename.count("/") == homes[1].filename.count("/"):
            files[name] = SubmittedFile(name, problem=f"{name} is in {shown(label)} more than once")
            continue
        member, limit = homes[0], limits.of(name)
        where = f"{label}:{member.filename}"
        if member.file_size > limit:
            files[name] = SubmittedFile(name, problem=_too_big(where, member.file_size, limit))
            continue
        try:
            with archive.open(member) as stream:  # the header's size may lie: never read past the limit
                data = stream.read(limit + 1)
        except _DAMAGED as exc:
            files[name] = SubmittedFile(name, problem=f"{shown(where)} could not be read from the zip "
                                                      f"({type(exc).__name__}: encrypted or damaged)")
            continue
        files[name] = _checked(name, data, limit, where)
    return Submission(files, [f"read the files from the zip archive {shown(label)}"])


def _safe_member(name: str) -> bool:
    if not name or "\\" in name or "\0" in name or name.startswith("/") or ":" in name.split("/")[0]:
        return False
    if any(not ch.isprintable() for ch in name):
        return False
    return ".." not in PurePosixPath(name).parts


def _home(member: str, name: str) -> bool:
    """Whether a zip member is `name` at the archive's top or one folder below it."""
    parts = PurePosixPath(member).parts
    return parts[-1] == name and len(parts) <= 2
