from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from llamalab.runs.files import append_jsonl, read_jsonl, write_json_atomic
from llamalab.runs.record import RunRecord, config_hash, find_run, list_runs


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_record_is_complete_and_tracks_status(tmp_path):
    record = RunRecord.create(tmp_path, "eval", "sentiment-base", {"split": "test"}, task={"name": "sentiment"})
    saved = json.loads((record.folder / "run.json").read_text())
    assert saved["status"] == "running"
    assert saved["config_hash"] == config_hash({"split": "test"})
    assert set(saved["environment"]) == {"git", "packages", "hardware"}
    assert saved["environment"]["packages"]["torch"]
    assert (record.folder / "config.yaml").read_text() == "split: test\n"

    with record.tracking():
        record.update(metrics={"accuracy": 0.9})
    done = RunRecord.load(record.folder).data
    assert done["status"] == "finished" and done["ended"] and done["timings"]["total_s"] >= 0
    assert done["peak_memory_mb"] > 0

    failing = RunRecord.create(tmp_path, "eval", "x", {})
    with pytest.raises(RuntimeError), failing.tracking():
        raise RuntimeError("boom")
    assert RunRecord.load(failing.folder).data["status"] == "failed"
    assert "boom" in RunRecord.load(failing.folder).data["error"]

    interrupted = RunRecord.create(tmp_path, "eval", "y", {})
    with pytest.raises(KeyboardInterrupt), interrupted.tracking():
        raise KeyboardInterrupt
    assert RunRecord.load(interrupted.folder).data["status"] == "interrupted"
    assert find_run(tmp_path, interrupted.id[-4:]).id == interrupted.id


def _create_many(runs_dir: str, count: int) -> None:
    for i in range(count):
        RunRecord.create(Path(runs_dir), "eval", "same-name", {"i": i, "pid": os.getpid()})


def test_concurrent_runs_never_share_a_folder(tmp_path):
    processes = [multiprocessing.Process(target=_create_many, args=(str(tmp_path), 15)) for _ in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    runs = list_runs(tmp_path)
    assert len(runs) == 60
    assert len({r.id for r in runs}) == 60
    configs = {(r.data["pid"], r.data["config_hash"]) for r in runs}
    assert len(configs) == 60  # every folder holds the record its own creator wrote


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"v": object.__new__(type("Unserialisable", (), {"__str__": None}))})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary file left behind


def _append_forever(path: str) -> None:
    i = 0
    while True:
        append_jsonl(Path(path), [{"i": i, "pad": "x" * 5000}])
        i += 1


def test_killed_writer_never_leaves_a_bad_record(tmp_path):
    path = tmp_path / "predictions.jsonl"
    writer = multiprocessing.Process(target=_append_forever, args=(str(path),))
    writer.start()
    while not path.exists() or path.stat().st_size < 200_000:
        pass
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()
    records = read_jsonl(path)
    assert [r["i"] for r in records] == list(range(len(records)))

    with path.open("a") as handle:  # a kill mid-line leaves a truncated record: it is skipped
        handle.write('{"i": 99')
    assert len(read_jsonl(path)) == len(records)
