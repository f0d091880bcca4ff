"""From Python (README "From Python"): paths may come as text, and a relative lab root does not tie a task to the
working directory."""

from __future__ import annotations

import textwrap

import pytest

from llamalab import LlamalabError, RunRecord, load_task
from llamalab.tasks.data import load_task_data
from tests.records import eval_fields


def one_file_per_label(root) -> None:
    """tasks/digits.yaml: one text file per label, the labels given as YAML numbers (`label: 1`)."""
    (root / "tasks").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "one.txt").write_text("a\nb\nc\nd\ne\n")
    (root / "data" / "zero.txt").write_text("f\ng\nh\ni\nj\n")
    (root / "tasks" / "digits.yaml").write_text(textwrap.dedent("""\
        name: digits
        data:
          files:
            - {path: data/one.txt, label: 1}
            - {path: data/zero.txt, label: 0}
          split: {dev: 0.2, test: 0.2}
        prompt: {template: "{{ text }}"}
        answer: {type: label, labels: [0, 1]}
        """))


def test_load_task_takes_text_paths_and_a_relative_lab_root(tmp_path, monkeypatch):
    one_file_per_label(tmp_path / "lab")
    monkeypatch.chdir(tmp_path)
    task = load_task("lab/tasks/digits.yaml", "lab")
    assert task.lab_root == (tmp_path / "lab").resolve()  # a Path, made absolute
    monkeypatch.chdir(tmp_path / "lab" / "data")  # elsewhere: the same files
    data = load_task_data(task)
    assert sum(len(split) for split in data.splits.values()) == 10


def test_a_whole_file_label_given_as_a_number_is_text(tmp_path):
    one_file_per_label(tmp_path)
    task = load_task(tmp_path / "tasks" / "digits.yaml", tmp_path)
    assert [f.label for f in task.data.files] == ["1", "0"]  # `label: 1` is the label "1", as labels: [0, 1] are
    data = load_task_data(task)
    assert sorted(ex.answer for split in data.splits.values() for ex in split) == ["0"] * 5 + ["1"] * 5
    (tmp_path / "tasks" / "digits.yaml").write_text(
        (tmp_path / "tasks" / "digits.yaml").read_text().replace("label: 1}", "label: yes}"))
    with pytest.raises(LlamalabError, match=r"digits.yaml:4: key 'data.files.0.label': YAML read an unquoted "
                                            r"yes/no/on/off/true/false as a boolean: quote it"):
        load_task(tmp_path / "tasks" / "digits.yaml", tmp_path)


def test_run_record_load_takes_a_text_folder(tmp_path):
    record = RunRecord.create(tmp_path, "eval", "x", {}, **eval_fields())
    assert RunRecord.load(str(record.folder)).run.id == record.run.id
    with pytest.raises(LlamalabError, match="is not a run folder"):
        RunRecord.load(str(tmp_path))


@pytest.mark.parametrize(("settings", "message"), [
    ({"task": "sentiment", "lr": 1e-4}, "Experiment(...): unknown key 'lr': did you mean 'learning_rate'?"),
    ({"task": "sentiment", "batch_size": 0}, "Experiment(...): key 'batch_size': Input should be greater than"),
    ({"task": "sentiment", "lora": {"r": 0}}, "Experiment(...): key 'lora.r': Input should be greater than"),
    ({"task": "sentiment", "epochs": True}, "Experiment(...): key 'epochs': is a number, not yes/no"),
    ({}, "Experiment(...): missing required key 'task'"),
])
def test_an_experiment_built_in_python_names_the_bad_key_as_a_file_would(settings, message):
    """`Experiment(...)` raises the LlamalabError an experiment file would (a nested LoraSpec's problem named by its
    path under the experiment), not pydantic's ValidationError; the file's message still names the file."""
    from llamalab import Experiment
    from llamalab.config import parse_model

    with pytest.raises(LlamalabError) as raised:
        Experiment(**settings)
    assert str(raised.value).startswith(message)
    with pytest.raises(LlamalabError) as from_file:
        parse_model(Experiment, settings, "experiments/x.yaml")
    assert str(from_file.value) == str(raised.value).replace("Experiment(...)", "experiments/x.yaml")
    # YAML's `yes:` is a key that is not a string: a located error, as before __init__ was wrapped (not a TypeError)
    with pytest.raises(LlamalabError, match="key '1': Keys should be strings"):
        parse_model(Experiment, {"task": "sentiment", True: 3}, "experiments/x.yaml")
