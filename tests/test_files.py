"""staged_folder: the one way a folder appears complete or not at all (lab init, export, weights, model cache)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from llamalab.runs.files import staged_folder


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


def test_shared_build_keeps_a_target_another_process_finished_first(tmp_path: Path) -> None:
    target = tmp_path / "model-abc"
    with staged_folder(target, shared=True) as staging:
        assert staging.name == f".model-abc.{os.getpid()}.partial"  # no clash with another process's staging
        (staging / "config.json").write_text("mine")
        target.mkdir()  # meanwhile another process completes the same build
        (target / "config.json").write_text("theirs")
    assert (target / "config.json").read_text() == "theirs"
    assert leftovers(tmp_path) == []

    other = tmp_path / "model-def"
    with staged_folder(other, shared=True) as staging:
        (staging / "config.json").write_text("mine")
    assert (other / "config.json").read_text() == "mine"


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
