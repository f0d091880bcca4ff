"""staged_folder: the one way a folder appears complete or not at all (lab init, export, weights, model cache)."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from pathlib import Path

import pytest

from llamalab.runs.files import staged_folder, write_text_atomic


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_success_replaces_the_target_whole(tmp_path: Path) -> None:
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with staged_folder(target) as staging:
        assert staging.parent == tmp_path and staging.name == ".adapter.partial"
        assert list(staging.iterdir()) == []
        (staging / "new.bin").write_text("new")
        assert (target / "old.bin").is_file()  # readers see the old folder until the block ends
    assert [p.name for p in target.iterdir()] == ["new.bin"]
    assert leftovers(tmp_path) == []


def test_failure_leaves_the_old_target_and_no_staging(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "model"  # missing parents are created
    with pytest.raises(RuntimeError), staged_folder(target) as staging:
        (staging / "half.bin").write_text("half")
        raise RuntimeError("killed mid-save")
    assert not target.exists() and leftovers(target.parent) == []

    target.mkdir()
    (target / "old.bin").write_text("old")
    with pytest.raises(KeyboardInterrupt), staged_folder(target) as staging:
        (staging / "half.bin").write_text("half")
        raise KeyboardInterrupt
    assert [p.name for p in target.iterdir()] == ["old.bin"]
    assert leftovers(target.parent) == []


def test_a_stale_staging_folder_from_a_kill_is_cleared(tmp_path: Path) -> None:
    stale = tmp_path / ".lab.partial"
    stale.mkdir()
    (stale / "junk").write_text("from a killed build")
    with staged_folder(tmp_path / "lab") as staging:
        assert list(staging.iterdir()) == []
        (staging / "lab.yaml").write_text("name: x\n")
    assert [p.name for p in (tmp_path / "lab").iterdir()] == ["lab.yaml"]
    assert leftovers(tmp_path) == []


def test_a_kill_between_the_swapping_renames_loses_nothing(tmp_path: Path) -> None:
    """Killed after the old target moved aside and before the new one moved in: the next build starts from the old
    one (what a build keeps from it, e.g. staff files next to an assignment, is still there)."""
    target = tmp_path / "assignment"
    (tmp_path / ".assignment.old").mkdir()
    (tmp_path / ".assignment.old" / "leaderboard.csv").write_text("staff file")
    (tmp_path / ".assignment.partial").mkdir()  # the finished staging folder, never moved in
    with staged_folder(target) as staging:
        assert (target / "leaderboard.csv").read_text() == "staff file"
        (staging / "kept.csv").write_text((target / "leaderboard.csv").read_text())
    assert [p.name for p in target.iterdir()] == ["kept.csv"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask_or_keep_the_files_mode(tmp_path: Path, umask: int) -> None:
    """A written page or handout is as readable as a file `open()` makes (mkstemp alone gives 0600); a file that
    exists keeps its mode (e.g. an executable script)."""
    before = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "index.html", "<p>hi</p>")
        assert (tmp_path / "index.html").stat().st_mode & 0o777 == 0o666 & ~umask
        script = tmp_path / "run_autograder"
        script.write_text("#!/bin/sh\n")
        script.chmod(0o755)
        write_text_atomic(script, "#!/bin/sh\necho new\n")
        assert script.stat().st_mode & 0o777 == 0o755 and "new" in script.read_text()
        assert os.umask(umask) == umask  # writing left the umask as it was
    finally:
        os.umask(before)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_a_staged_folders_files_follow_the_umask_whoever_wrote_them(tmp_path: Path, umask: int) -> None:
    """safetensors writes weights owner-only (0600): an adapter or export on a shared machine was unreadable by
    the rest of the lab. Executables keep their x bits."""
    import torch
    from safetensors.torch import save_file

    before = os.umask(umask)
    try:
        with staged_folder(tmp_path / "adapter") as staging:
            save_file({"w": torch.zeros(2)}, staging / "adapter_model.safetensors")
            (staging / "sub").mkdir()
            (staging / "sub" / "run.sh").write_text("#!/bin/sh\n")
            (staging / "sub" / "run.sh").chmod(0o700)
        assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
        assert (tmp_path / "adapter" / "sub" / "run.sh").stat().st_mode & 0o777 == 0o777 & ~umask
    finally:
        os.umask(before)


def test_shared_build_keeps_a_target_another_process_finished_first(tmp_path: Path) -> None:
    target = tmp_path / "model-abc"
    with staged_folder(target, shared=True) as staging:
        # no clash with another process's staging, here or on another machine sharing the cache
        assert staging.name == f".model-abc.{socket.gethostname()}-{os.getpid()}.partial"
        (staging / "config.json").write_text("mine")
        target.mkdir()  # meanwhile another process completes the same build
        (target / "config.json").write_text("theirs")
    assert (target / "config.json").read_text() == "theirs"
    assert leftovers(tmp_path) == []

    other = tmp_path / "model-def"
    with staged_folder(other, shared=True) as staging:
        (staging / "config.json").write_text("mine")
    assert (other / "config.json").read_text() == "mine"


def test_a_shared_staging_left_by_a_killed_process_of_this_machine_is_removed(tmp_path: Path) -> None:
    """A kill while converting a model into the shared cache left its gigabytes in `.NAME.PID.partial` for good:
    the next build of that entry removes the stagings of this machine's processes that are gone, and keeps a
    live process's and another machine's."""
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        host = socket.gethostname()
        names = {"dead": f".model.{host}-{gone.pid}.partial", "old-style": f".model.{gone.pid}.partial",
                 "live": f".model.{host}-{live.pid}.partial", "elsewhere": f".model.other-node-{gone.pid}.partial"}
        for name in names.values():
            (tmp_path / name).mkdir()
            (tmp_path / name / "model.safetensors").write_bytes(b"x" * 10)
        with staged_folder(tmp_path / "model", shared=True) as staging:
            (staging / "config.json").write_text("{}")
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {"model", names["live"], names["elsewhere"]}
    finally:
        live.kill()


def _build(target: str, barrier) -> None:
    with staged_folder(Path(target), shared=True) as staging:
        (staging / "who").write_text(str(os.getpid()))
        (staging / "config.json").write_text("{}")
        barrier.wait(timeout=30)  # every process has a full staging folder before any finishes


def test_concurrent_shared_builds_give_one_complete_target(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(3)
    target = tmp_path / "model"
    workers = [context.Process(target=_build, args=(str(target), barrier)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "who"]
    assert int((target / "who").read_text()) in {w.pid for w in workers}
    assert leftovers(tmp_path) == []


def _rebuild(target: str, files: int, started) -> None:
    with staged_folder(Path(target)) as staging:
        started.set()  # the other build starts while this one is writing
        for k in range(files):
            (staging / f"page-{k}.html").write_text(str(os.getpid()))
            time.sleep(0.002)


def test_concurrent_builds_of_one_target_take_turns_and_each_leaves_it_whole(tmp_path: Path) -> None:
    """Two `site build`s at once: the second used to clear the first's staging folder as it wrote."""
    context = multiprocessing.get_context("fork")
    target = tmp_path / "site"
    firsts = [context.Event() for _ in range(3)]
    workers = []
    for started in firsts:
        workers.append(context.Process(target=_rebuild, args=(str(target), 200, started)))
        workers[-1].start()
        started.wait(timeout=30)
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    pages = sorted(target.iterdir())
    assert len(pages) == 200 and len({p.read_text() for p in pages}) == 1  # one build's pages, all of them
    assert leftovers(tmp_path) == []  # no staging, no old copy, no lock file
