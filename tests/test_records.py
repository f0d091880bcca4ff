from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from llamalab.config import LlamalabError
from llamalab.runs.files import append_jsonl, read_jsonl, write_json_atomic
from llamalab.runs.record import RunRecord, config_hash, find_run, list_runs, matching_runs, now_iso, resume_run
from llamalab.runs.schema import SCHEMA_VERSION, EvalRun, TrainRun, migrate
from tests.records import eval_fields, train_fields

FIXTURES = Path(__file__).parent / "fixtures" / "records"  # records written by llamalab before schema_version
OLD_EVAL = FIXTURES / "20261127-201029-eval-sentiment-smollm2-135m-instruct-3dc7"
OLD_TRAIN = FIXTURES / "20261127-201442-train-sentiment-lora-7895"


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_record_is_complete_and_tracks_status(tmp_path):
    record = RunRecord.create(tmp_path, "eval", "sentiment-base", {"split": "test"}, **eval_fields())
    saved = json.loads((record.folder / "run.json").read_text())
    assert saved["status"] == "running"
    assert saved["config_hash"] == config_hash({"split": "test"})
    assert set(saved["environment"]) == {"git", "packages", "hardware"}
    assert saved["environment"]["packages"]["torch"]
    assert (record.folder / "config.yaml").read_text() == "split: test\n"

    with record.tracking():
        record.update(metrics={"accuracy": {"estimate": 0.9, "low": 0.8, "high": 0.95, "n": 10}})
        time.sleep(0.05)
    done = RunRecord.load(record.folder).run
    assert done.status == "finished" and done.ended >= done.started and 0.05 <= done.timings["total_s"] < 5
    assert done.peak_memory_mb > 0
    assert done.metrics["accuracy"].estimate == 0.9 and done.metrics["accuracy"].confidence == 0.95

    failing = RunRecord.create(tmp_path, "eval", "x", {}, **eval_fields())
    with pytest.raises(RuntimeError), failing.tracking():
        raise RuntimeError("boom")
    assert RunRecord.load(failing.folder).run.status == "failed"
    assert "boom" in RunRecord.load(failing.folder).run.error

    interrupted = RunRecord.create(tmp_path, "eval", "y", {}, **eval_fields())
    with pytest.raises(KeyboardInterrupt), interrupted.tracking():
        raise KeyboardInterrupt
    assert RunRecord.load(interrupted.folder).run.status == "interrupted"
    assert find_run(tmp_path, interrupted.id[-4:]).id == interrupted.id


def _saved(record: RunRecord) -> dict:
    return json.loads((record.folder / "run.json").read_text())


def test_every_record_written_carries_the_schema_version(tmp_path):
    assert SCHEMA_VERSION == 11
    evaluation = RunRecord.create(tmp_path, "eval", "e", {"a": 1}, **eval_fields())
    training = RunRecord.create(tmp_path, "train", "t", {"b": 2}, **train_fields())
    for record in (evaluation, training):
        assert _saved(record)["schema_version"] == SCHEMA_VERSION
        with record.tracking():
            record.update(throughput={"tokens_per_s": 1.5})
            assert _saved(record)["schema_version"] == SCHEMA_VERSION
        assert _saved(record)["schema_version"] == SCHEMA_VERSION and _saved(record)["status"] == "finished"
        assert RunRecord.load(record.folder).run == record.run
    assert isinstance(evaluation.run, EvalRun) and isinstance(training.run, TrainRun)


def test_a_malformed_record_is_never_written(tmp_path):
    fields = eval_fields()
    del fields["task"]["split"]
    with pytest.raises(LlamalabError, match=r"task\.split"):
        RunRecord.create(tmp_path / "runs", "eval", "x", {}, **fields)
    with pytest.raises(LlamalabError, match=r"scoring\.protocol"):
        RunRecord.create(tmp_path / "runs", "eval", "x", {}, **{**eval_fields(), "scoring": {"protocol": "guess"}})
    with pytest.raises(LlamalabError, match=r"model"):
        RunRecord.create(tmp_path / "runs", "train", "x", {}, **{**train_fields(), "model": {"name": "m"}})
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # no run folder left

    record = RunRecord.create(tmp_path / "runs", "eval", "x", {}, **eval_fields())
    before = (record.folder / "run.json").read_text()
    with pytest.raises(LlamalabError, match="status"):
        record.update(status="exploded")
    with pytest.raises(LlamalabError, match=r"metrics\.accuracy\.low"):
        record.update(metrics={"accuracy": {"estimate": 0.5, "high": 0.6, "n": 4}})
    assert (record.folder / "run.json").read_text() == before and record.run.status == "running"


def test_a_record_from_a_newer_llamalab_is_refused(tmp_path):
    record = RunRecord.create(tmp_path, "eval", "x", {}, **eval_fields())
    write_json_atomic(record.folder / "run.json", {**_saved(record), "schema_version": 99})
    with pytest.raises(LlamalabError, match="written by a newer llamalab") as error:
        RunRecord.load(record.folder)
    assert "run.json" in str(error.value) and "99" in str(error.value)
    with pytest.raises(LlamalabError, match="newer llamalab"):
        list_runs(tmp_path)


@pytest.mark.parametrize(("folder", "model"), [(OLD_EVAL, EvalRun), (OLD_TRAIN, TrainRun)])
def test_records_of_the_previous_format_load_and_round_trip(tmp_path, folder, model):
    original = json.loads((folder / "run.json").read_text())
    assert "schema_version" not in original  # written before the field existed
    migrated = migrate(original)
    assert migrated["schema_version"] == SCHEMA_VERSION and "schema_version" not in original  # the input is not changed
    assert {k: v for k, v in migrated.items() if k != "schema_version"} == original

    copy = tmp_path / "runs" / folder.name
    copy.mkdir(parents=True)
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    before = (copy / "run.json").read_bytes(), (copy / "run.json").stat().st_mtime_ns
    record = RunRecord.load(copy)
    assert isinstance(record.run, model) and record.run.schema_version == SCHEMA_VERSION and record.run.finished
    assert record.id == folder.name == find_run(tmp_path / "runs", folder.name[-4:]).id
    dumped = record.run.model_dump(mode="json", exclude_unset=True)
    assert dumped.pop("schema_version") == SCHEMA_VERSION
    assert dumped == original
    assert ((copy / "run.json").read_bytes(), (copy / "run.json").stat().st_mtime_ns) == before  # never rewritten
    assert record.config == yaml.safe_load((folder / "config.yaml").read_text())


def test_previous_format_fields_are_typed():
    evaluation, training = RunRecord.load(OLD_EVAL).run, RunRecord.load(OLD_TRAIN).run
    accuracy = evaluation.metrics["accuracy"]
    assert (accuracy.estimate, accuracy.low, accuracy.high, accuracy.n) == (0.76, 0.724, 0.796, 500)
    assert accuracy.method.startswith("percentile bootstrap") and accuracy.confidence == 0.95
    assert evaluation.system.kind == "base" and evaluation.system.model.name == "smollm2-135m-instruct"
    assert evaluation.backend.backend == "hf" and evaluation.backend.model_extra["dtype"] == "float32"
    assert (evaluation.task.split, evaluation.task.n, evaluation.task.split_size) == ("dev", 500, 1066)
    assert evaluation.scoring.protocol == "loglikelihood" and evaluation.scoring.normalize == "sum"
    assert evaluation.prompt.format == "plain" and evaluation.shots == 0
    assert evaluation.predictions_summary.predicted == {"negative": 302, "positive": 198}
    assert evaluation.usage is None and evaluation.environment.git.dirty is False
    assert evaluation.display_label == "smollm2-135m-instruct [plain]"
    assert training.experiment == "sentiment-lora" and training.model.name == "smollm2-135m-instruct"
    assert (training.metrics.steps, training.metrics.epochs, training.metrics.final_loss) == (150, 1.0, 0.165336)
    assert training.data_used.train_examples == 1200 and training.data_used.skipped_too_long == 0
    assert training.precision == "bfloat16 autocast" and training.prompt.template.startswith("Review:")


def test_resume_continues_only_an_unfinished_run_with_the_same_settings(tmp_path):
    config, other = {"split": "dev", "limit": 8}, {"split": "dev", "limit": 9}
    with pytest.raises(LlamalabError, match="no unfinished evaluation of 'e' to resume"):
        resume_run(tmp_path, "eval", "e", config)

    done = RunRecord.create(tmp_path, "eval", "e", config, **eval_fields())
    done.update(status="finished")
    with pytest.raises(LlamalabError, match="no unfinished evaluation"):
        resume_run(tmp_path, "eval", "e", config)  # a finished run is never resumed
    assert RunRecord.load(done.folder).run.status == "finished"

    crashed = RunRecord.create(tmp_path, "eval", "e", config, **eval_fields())
    crashed.update(status="interrupted", pid=None)
    resumed = resume_run(tmp_path, "eval", "e", config)
    assert resumed.id == crashed.id and resumed.run.status == "running" and resumed.run.pid == os.getpid()
    assert len(resumed.run.resumed) == 1
    again = resume_run(tmp_path, "eval", "e", config)  # running, but in this very process
    assert again.id == crashed.id and len(again.run.resumed) == 2
    assert RunRecord.load(crashed.folder).run.resumed == again.run.resumed
    assert RunRecord.load(done.folder).run.status == "finished" and not RunRecord.load(done.folder).run.resumed

    with pytest.raises(LlamalabError, match="different ones") as error:
        resume_run(tmp_path, "eval", "e", other)
    assert config_hash(config) in str(error.value) and config_hash(other) in str(error.value)
    assert crashed.id in str(error.value)

    again.update(pid=os.getppid())  # marked running by another live process: never taken over
    with pytest.raises(LlamalabError, match="still running"):
        resume_run(tmp_path, "eval", "e", config)

    training = RunRecord.create(tmp_path, "train", "e", config, **train_fields())
    training.update(status="failed", pid=None)
    assert resume_run(tmp_path, "train", "e", config).id == training.id  # each kind resumes its own runs


@pytest.mark.parametrize(("key", "value"), [("started", "yesterday"), ("ended", "2026-13-01"),
                                            ("resumed", ["2026-11-29T10:00:00+00:00", "soon"])])
def test_a_record_with_a_time_that_is_not_one_is_refused_when_read(tmp_path, key, value):
    """It loaded, then crashed later with a bare ValueError (resume, is-it-alive, sorting)."""
    record = RunRecord.create(tmp_path, "eval", "x", {}, **eval_fields())
    write_json_atomic(record.folder / "run.json", {**_saved(record), key: value})
    with pytest.raises(LlamalabError, match=rf"run.json.*{key}.*is not an ISO 8601 time"):
        RunRecord.load(record.folder)


def test_a_record_version_must_be_a_number_and_every_problem_is_counted(tmp_path):
    record = RunRecord.create(tmp_path, "eval", "x", {}, **eval_fields())
    saved = _saved(record)
    write_json_atomic(record.folder / "run.json", {**saved, "schema_version": True})
    with pytest.raises(LlamalabError, match="schema_version True is not a version number"):
        RunRecord.load(record.folder)
    broken = {**saved, **{key: 7 for key in ("id", "name", "started", "config_hash", "error", "host",
                                                       "slurm_job")}}
    write_json_atomic(record.folder / "run.json", broken)
    with pytest.raises(LlamalabError, match="; and 2 more"):
        RunRecord.load(record.folder)


def test_runs_are_listed_from_a_lab_its_root_or_its_runs_folder_and_kinds_are_checked(lab):
    record = RunRecord.create(lab.runs_dir, "eval", "x", {}, **eval_fields())
    for where in (lab, lab.root, str(lab.root), lab.runs_dir, str(lab.runs_dir)):
        assert [r.id for r in list_runs(where)] == [record.id], where
        assert find_run(where, record.id[-4:]).id == record.id
    with pytest.raises(LlamalabError, match="run kind 'evaluation': use one of eval, train"):
        list_runs(lab, kind="evaluation")
    with pytest.raises(LlamalabError, match="a runs folder is a path or a Lab, not int"):
        list_runs(3)


def test_find_run_names_one_run_or_lists_the_candidates(tmp_path):
    first = RunRecord.create(tmp_path, "eval", "twin", {}, **eval_fields())
    second = RunRecord.create(tmp_path, "eval", "twin", {}, **eval_fields())
    training = RunRecord.create(tmp_path, "train", "twin-lora", {}, **train_fields())
    # oldest first by start time, also within one second (where run ids order by their random suffix)
    assert [r.id for r in matching_runs(tmp_path, "twin")] == [first.id, second.id, training.id]
    assert [r.id for r in matching_runs(tmp_path, "twin", kind="eval")] == [first.id, second.id]
    assert [r.id for r in matching_runs(tmp_path, first.id)] == [first.id]
    assert matching_runs(tmp_path, first.id, kind="train") == []
    assert find_run(tmp_path, second.id[-4:]).id == second.id
    assert find_run(tmp_path, "twin-lora").id == training.id
    assert find_run(tmp_path, "twin", kind="train").id == training.id
    with pytest.raises(LlamalabError, match="eval run 'twin' is ambiguous") as error:
        find_run(tmp_path, "twin", kind="eval")
    assert first.id in str(error.value) and second.id in str(error.value) and training.id not in str(error.value)
    with pytest.raises(LlamalabError, match="no train run 'nothing'"):
        find_run(tmp_path, "nothing", kind="train")


def _create_many(runs_dir: str, count: int) -> None:
    for i in range(count):
        RunRecord.create(Path(runs_dir), "eval", "same-name", {"i": i, "pid": os.getpid()}, **eval_fields())


def test_concurrent_runs_never_share_a_folder(tmp_path):
    processes = [multiprocessing.Process(target=_create_many, args=(str(tmp_path), 15)) for _ in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    runs = list_runs(tmp_path)
    assert len(runs) == 60
    assert len({r.id for r in runs}) == 60
    configs = {(r.run.pid, r.run.config_hash) for r in runs}
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


def _resume_at_once(runs_dir: str, barrier, results) -> None:
    barrier.wait()
    try:
        record = resume_run(Path(runs_dir), "eval", "e", {"limit": 1})
        results.put(("took", record.id))
        time.sleep(3)  # alive while the other looks
    except LlamalabError as exc:
        results.put(("refused", str(exc)))


def test_two_resumes_at_once_never_both_take_the_run(tmp_path):
    """The check that a run is not alive and the claim are one step: of two `--resume`s started together, one
    takes the run and the other is told it is running (both took it, and appended to one predictions file)."""
    for attempt in range(3):
        runs = tmp_path / str(attempt)
        crashed = RunRecord.create(runs, "eval", "e", {"limit": 1}, **eval_fields())
        crashed.update(status="interrupted", pid=None)
        barrier, results = multiprocessing.Barrier(3), multiprocessing.Queue()
        workers = [multiprocessing.Process(target=_resume_at_once, args=(str(runs), barrier, results))
                   for _ in range(3)]
        for worker in workers:
            worker.start()
        outcomes = sorted(results.get(timeout=60)[0] for _ in workers)
        for worker in workers:
            worker.join()
        assert outcomes == ["refused", "refused", "took"]


def test_a_live_run_of_another_user_is_alive(tmp_path, monkeypatch):
    from llamalab.runs.record import is_alive

    record = RunRecord.create(tmp_path, "eval", "e", {}, **eval_fields())
    record.update(pid=os.getppid())

    def denied(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", denied)
    assert is_alive(record)


def test_damaged_run_files_are_errors_that_name_the_file_and_line(tmp_path):
    from llamalab.runs.record import read_predictions

    record = RunRecord.create(tmp_path, "eval", "e", {"a": 1}, **eval_fields())
    predictions = record.folder / "predictions.jsonl"
    append_jsonl(predictions, [{"id": "x:1", "correct": True}])
    with predictions.open("a") as handle:
        handle.write('{"id": "x:2", "cor\n{"id": "x:3"}\n')
    with pytest.raises(LlamalabError, match=r"predictions.jsonl:2: not JSON .*restore it .*or move the run folder"):
        read_predictions(record.folder)
    predictions.write_text('{"id": "x:1"}\n[1, 2]\n')
    with pytest.raises(LlamalabError, match=r"predictions.jsonl:2: not a JSON object"):
        read_predictions(record.folder)
    predictions.write_text('{"id": "x:1"}\n{"correct": true}\n{"id": "x:3", "trunc')  # the last: a kill mid-append
    with pytest.raises(LlamalabError, match=r"predictions.jsonl:2: a prediction row without an example id"):
        read_predictions(record.folder)
    predictions.write_text('{"id": "x:1"}\n{"id": "x:3", "trunc')
    assert list(read_predictions(record.folder)) == ["x:1"]

    (record.folder / "config.yaml").write_text("a: [1,\n")
    with pytest.raises(LlamalabError, match=r"config.yaml: cannot read this run's settings"):
        record.config  # noqa: B018 - the property reads the file
    (record.folder / "config.yaml").write_text("- a\n- b\n")  # read as no settings: resume compared with {}
    with pytest.raises(LlamalabError, match=r"config.yaml: this run's settings are not a mapping .* a list"):
        record.config  # noqa: B018
    (record.folder / "run.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(LlamalabError, match=r"run.json: cannot read this run record: .*move the run folder"):
        RunRecord.load(record.folder)


def test_a_refused_resume_and_the_resume_hint_give_the_settings_the_run_was_started_with(tmp_path):
    from llamalab.runs.record import overrides_of, settings_differences

    started = {"task": "sentiment", "max_steps": 40, "lora": {"r": 8, "alpha": 16}, "batch_size": 2}
    now = {"task": "sentiment", "max_steps": 6, "lora": {"r": 4, "alpha": 16}, "batch_size": 2}
    assert settings_differences(started, now) == "lora.r: 8 (now 4); max_steps: 40 (now 6)"
    assert overrides_of(started, now) == "lora.r=8 max_steps=40"
    crashed = RunRecord.create(tmp_path, "train", "e", started, **train_fields())
    crashed.update(status="interrupted", pid=None)
    with pytest.raises(LlamalabError, match=r"it had lora.r: 8 \(now 4\); max_steps: 40 \(now 6\).*"
                                            r"`... --resume lora.r=8 max_steps=40`"):
        resume_run(tmp_path, "train", "e", now)
    from llamalab.config import apply_overrides, parse_overrides

    assert apply_overrides(now, parse_overrides(overrides_of(started, now).split())) == started
    import shlex

    listed = {**started, "lora": {**started["lora"], "target_modules": ["q_proj", "v_proj"]}}
    words = shlex.split(overrides_of(listed, now))  # as a shell reads the pasted command
    assert apply_overrides(now, parse_overrides(words)) == listed
    later = {"activation_checkpointing": "auto", "max_grad_norm": 1.0}
    assert overrides_of({"a": 1}, {"a": 1, "max_grad_norm": 0.5}, later) == "max_grad_norm=1.0"
    assert overrides_of({"a": 1}, {"a": 1}, later) == ""


def test_a_pid_reused_by_a_process_started_after_the_run_is_not_the_run(tmp_path):
    """After a reboot or an OOM kill a run's pid may belong to an unrelated process (a root daemon: another
    user's): one that started after the run (last) did is not the run, which can then be resumed."""
    import subprocess

    from llamalab.runs.record import is_alive

    record = RunRecord.create(tmp_path, "eval", "e", {"limit": 1}, **eval_fields())
    time.sleep(2.5)
    later = subprocess.Popen(["sleep", "30"])
    try:
        record.update(pid=later.pid)
        assert not is_alive(record)
        assert resume_run(tmp_path, "eval", "e", {"limit": 1}).id == record.id
        record = RunRecord.load(record.folder)
        record.update(pid=later.pid, resumed=[*record.run.resumed, now_iso()])  # started again after it
        assert is_alive(record)
    finally:
        later.kill()


def test_a_quantization_studys_export_is_told_by_its_record_or_its_file(tmp_path):
    """Schema 9 records an export's GGUF type; an earlier record (a base model whose file is in runs/.gguf/) is
    told by its file's name, so the grader and the scaling figure leave both out."""
    from tests.records import eval_fields

    def record(model: str, quantized: str | None = None):
        fields = eval_fields(model=model)
        if quantized:
            fields["system"]["quantized"] = quantized
        return RunRecord.create(tmp_path, "eval", "x", {}, **fields).run

    assert record("runs/.gguf/tiny-3f2a9c1d-q8_0.gguf").export_type == "q8_0"
    assert record("/lab/runs/.gguf/org-model-3f2a9c1d-f16.gguf").export_type == "f16"
    assert record("runs/.gguf/tiny-3f2a9c1d-q8_0.gguf", quantized="q8_0").export_type == "q8_0"
    assert record("models/tiny-q4_0.gguf").export_type is None  # a GGUF file of the lab's own: a base model
    assert record("/data/myruns/.gguf/llama-3-8b.gguf").export_type is None  # not a study's file name
    assert record("smollm2-135m-instruct").export_type is None


def test_a_run_left_running_on_another_machine_is_resumable_once_its_files_are_silent(tmp_path, monkeypatch):
    """A run killed in a container (every container has a hostname of its own) stayed "running" for good: no
    process can be asked after on another host. A live run touches its run.json every minute (the heartbeat);
    files untouched for ten minutes mean no process works on it, and --resume takes it up."""
    import os

    from llamalab.runs import record as records
    from llamalab.runs.record import SILENT_S, is_alive

    record = RunRecord.create(tmp_path, "eval", "e", {"limit": 1}, **eval_fields())
    record.update(host="container-a", pid=4242)
    assert is_alive(RunRecord.load(record.folder))
    with pytest.raises(LlamalabError, match=r"still running \(pid 4242 on container-a\); its files changed \d+ s "
                                            r"ago: if that machine or container has stopped, the run can be resumed"):
        resume_run(tmp_path, "eval", "e", {"limit": 1})
    long_ago = time.time() - SILENT_S - 5
    os.utime(record.folder / "run.json", (long_ago, long_ago))
    assert not is_alive(RunRecord.load(record.folder))
    assert resume_run(tmp_path, "eval", "e", {"limit": 1}).id == record.id

    # the heartbeat: a run being worked on keeps its run.json fresh while nothing else is written
    monkeypatch.setattr(records, "HEARTBEAT_S", 0.05)
    resumed = RunRecord.load(record.folder)
    with resumed.tracking():
        os.utime(record.folder / "run.json", (long_ago, long_ago))
        deadline = time.time() + 10
        while (record.folder / "run.json").stat().st_mtime < time.time() - 60 and time.time() < deadline:
            time.sleep(0.05)
        assert (record.folder / "run.json").stat().st_mtime > time.time() - 60


@pytest.mark.parametrize("skew_s", [-3600.0, 3600.0])
def test_a_run_on_another_host_is_judged_by_the_file_systems_clock_not_this_machines(tmp_path, monkeypatch, skew_s):
    """On a shared file system the files are stamped by its clock: a node whose own clock is an hour ahead took a
    run another node was working on for a stopped one (and an hour behind, a stopped one for a live one). Silence is
    measured against a file written there now, and nothing is left behind."""
    import os

    from llamalab.runs.record import SILENT_S, is_alive, silent_s

    record = RunRecord.create(tmp_path, "eval", "e", {"limit": 1}, **eval_fields())
    record.update(host="node-b", pid=4242)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew_s)
    assert 0 <= silent_s(RunRecord.load(record.folder)) < 5
    assert is_alive(RunRecord.load(record.folder))
    long_ago = real() - SILENT_S - 5
    os.utime(record.folder / "run.json", (long_ago, long_ago))
    assert not is_alive(RunRecord.load(record.folder))
    assert sorted(p.name for p in tmp_path.iterdir()) == [record.folder.name]
