"""Bad input through the real command line: a clear message, exit code 2, nothing half-written."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from llamalab.cli import app


def llamalab(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamalab.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_bad_override_is_reported_without_traceback(lab):
    result = llamalab("train", "sentiment-lora", "learning_rat=1", "--lab", str(lab.root))
    assert result.returncode == 2
    assert "unknown key 'learning_rat': did you mean 'learning_rate'?" in result.stderr
    assert "Traceback" not in result.stderr
    assert not lab.runs_dir.exists() or not any(lab.runs_dir.iterdir())


def test_unknown_task_and_outside_a_lab(lab, tmp_path):
    result = llamalab("data", "check", "sentimnt", "--lab", str(lab.root))
    assert result.returncode == 2 and "did you mean 'sentiment'?" in result.stderr
    result = llamalab("compare", "--task", "sentiment", cwd=tmp_path)
    assert result.returncode == 2 and "no lab.yaml" in result.stderr


@pytest.mark.slow  # token lengths under the embedded model's tokenizer
def test_data_check_reports_bad_rows_and_fails(lab):
    with (lab.root / "data" / "rt_polarity" / "rt-polarity.pos").open("ab") as handle:
        handle.write(b"\n\xff ruined\n")  # a blank line is skipped; a byte that is not UTF-8 is not
    result = CliRunner().invoke(app, ["data", "check", "sentiment", "--lab", str(lab.root), "--json"])
    assert result.exit_code == 1
    assert "rt-polarity.pos:5333: not UTF-8 (byte 0xff" in result.stdout


@pytest.mark.slow  # token lengths under the embedded model's tokenizer
def test_data_check_and_show_on_the_example(lab):
    result = CliRunner().invoke(app, ["data", "check", "sentiment", "--lab", str(lab.root)])
    assert result.exit_code == 0, result.output
    assert "train/test overlap" in result.stdout and "data ok" in result.stdout
    shown = CliRunner().invoke(app, ["data", "show", "sentiment", "-n", "2", "--lab", str(lab.root)])
    assert shown.exit_code == 0
    assert "Review: " in shown.stdout and "loss tokens" in shown.stdout


def test_init_creates_a_lab_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "mylab"
    (tmp_path / "gitconfig").write_text("[init]\n\tdefaultBranch = trunk\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
        result = CliRunner().invoke(app, ["init", str(target)])
    assert result.exit_code == 0, result.output
    assert (target / "lab.yaml").is_file() and (target / "runs").is_dir()
    assert sorted(p.stem for p in (target / "tasks").glob("*.yaml")) == [
        "gsm8k", "intent", "scitldr", "sentiment", "wnut17"]
    again = CliRunner().invoke(app, ["init", str(target)])
    assert isinstance(again.exception, Exception) and "already holds a lab" in str(again.exception)


def test_init_dot_fills_the_folder_the_shell_is_in(tmp_path):
    """`llamalab init .` crashed (a path with no name); `init "$PWD"` replaced the folder, leaving the shell in a
    removed one. A killed init's staging inside the folder does not make it "not empty"."""
    here = tmp_path / "newlab"
    (here / ".llamalab-init.partial" / "tasks").mkdir(parents=True)  # what a killed init leaves
    inode = here.stat().st_ino
    result = llamalab("init", ".", cwd=here)
    assert result.returncode == 0, result.stderr
    assert here.stat().st_ino == inode and (here / "lab.yaml").is_file() and (here / ".git").is_dir()
    assert not (here / ".llamalab-init.partial").exists() and sorted(tmp_path.iterdir()) == [here]
    assert subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True).stdout == ""
    listed = llamalab("compare", "--task", "sentiment", cwd=here / "data")
    assert "no finished evaluations" in listed.stderr  # the lab is found from inside it
    taken = tmp_path / "taken"
    (taken / "notes").mkdir(parents=True)
    refused = llamalab("init", str(taken))
    assert refused.returncode == 2 and "is not empty (it holds notes): choose a new folder" in refused.stderr


def test_a_mistyped_lab_inside_a_lab_is_an_error_not_the_enclosing_lab(lab):
    result = llamalab("compare", "--task", "sentiment", "--lab", "typo-lab", cwd=lab.root / "data")
    assert result.returncode == 2 and "lab folder typo-lab does not exist: check --lab" in result.stderr


def test_every_shipped_dataset_has_its_source_and_license(lab):
    for folder in sorted(p for p in (lab.root / "data").iterdir() if p.is_dir() and p.name != "splits"):
        names = {p.name for p in folder.iterdir()}
        assert "SOURCE.md" in names, folder
        assert names & {"LICENSE", "LICENSE.md"}, folder


def test_init_scaffolds_the_lab_website_and_its_deployment(tmp_path):
    import datetime
    import fnmatch

    import yaml

    from llamalab.lab import init_lab
    from llamalab.publish import content

    lab = init_lab(tmp_path / "lab")
    root = lab.root
    today = datetime.date.today()
    posts = content.load_posts(root)
    assert [p.date for p in posts] == [today] and posts[0].slug == f"{today.isoformat()}-welcome"
    assert [p.name for p in content.load_people(root)] == ["Ada Example", "Sam Student"]
    assert content.load_projects(root)[0].tasks == ["sentiment", "intent"]
    pubs = content.load_publications(root)
    assert any("Iñigo Casanueva" in p.authors for p in pubs) and all(p.url.startswith("https://") for p in pubs)

    ignored = [line for line in (root / ".gitignore").read_text().splitlines() if line and not line.startswith("#")]
    for path in ("site/", "runs/x/checkpoints/", "runs/x/adapter/", "model.safetensors", "m.gguf", ".cache/"):
        assert any(fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "*") for pattern in ignored), path

    workflow = yaml.safe_load((root / ".github" / "workflows" / "site.yml").read_text())
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    assert any(step.get("run") == "llamalab site build" for step in build["steps"])
    assert any(step.get("uses", "").startswith("actions/upload-pages-artifact") for step in build["steps"])
    assert any(step.get("uses", "").startswith("actions/deploy-pages") for step in deploy["steps"])
    assert workflow["permissions"]["pages"] == "write"


def git(cwd, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_init_makes_the_lab_a_git_repository_so_records_carry_its_commit(tmp_path):
    from llamalab.runs.record import RunRecord
    from llamalab.runs.schema import GitState
    from tests.records import eval_fields

    target = tmp_path / "mylab"
    (tmp_path / "gitconfig").write_text("[init]\n\tdefaultBranch = trunk\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
        result = CliRunner().invoke(app, ["init", str(target)])
    assert result.exit_code == 0, result.output
    assert "made the lab a git repository" in result.output
    assert git(target, "rev-parse", "--show-toplevel") == str(target.resolve())
    assert git(target, "log", "--format=%s") == "llamalab init: example lab"  # exactly one commit
    # on main whatever git's default branch is: the scaffolded site workflow deploys pushes to main only
    assert git(target, "branch", "--show-current") == "main"
    assert "branches: [main]" in (target / ".github" / "workflows" / "site.yml").read_text()
    assert git(target, "status", "--porcelain") == ""  # everything committed (or git-ignored)

    record = RunRecord.create(target / "runs", "eval", "x", {}, **eval_fields())
    assert record.run.environment.git == GitState(commit=git(target, "rev-parse", "HEAD"), dirty=False)
    # llamalab's own outputs (that run's folder, a report) do not make the next run's lab "uncommitted"
    for built in ("reports", "assignments"):
        (target / built / "r").mkdir(parents=True)
        (target / built / "r" / "README.md").write_text("x")
    assert RunRecord.create(target / "runs", "eval", "x", {}, **eval_fields()).run.environment.git.dirty is False
    (target / "tasks" / "sentiment.yaml").write_text((target / "tasks" / "sentiment.yaml").read_text() + "\n")
    assert RunRecord.create(target / "runs", "eval", "x", {}, **eval_fields()).run.environment.git.dirty is True


def test_init_inside_a_git_repository_makes_no_nested_one(tmp_path):
    outer = tmp_path / "work"
    outer.mkdir()
    git(outer, "init", "--quiet")
    result = CliRunner().invoke(app, ["init", str(outer / "labs" / "mylab")])
    assert result.exit_code == 0, result.output
    assert f"inside the git repository {outer.resolve()}" in result.output
    assert not (outer / "labs" / "mylab" / ".git").exists()
    assert git(outer / "labs" / "mylab", "rev-parse", "--show-toplevel") == str(outer.resolve())


def test_init_commits_on_a_fresh_machine_and_as_the_user_otherwise(tmp_path, monkeypatch):
    from llamalab.lab import init_lab

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.gitconfig here
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    for who in ("AUTHOR", "COMMITTER"):
        for what in ("NAME", "EMAIL"):
            monkeypatch.delenv(f"GIT_{who}_{what}", raising=False)
    fresh = init_lab(tmp_path / "fresh").root
    assert git(fresh, "log", "--format=%an <%ae>") == "llamalab <llamalab@localhost>"
    assert "[user]" not in (fresh / ".git" / "config").read_text()  # the fallback is for that commit only

    (tmp_path / ".gitconfig").write_text("[user]\n\tname = Ada Example\n\temail = ada@example.org\n")
    configured = init_lab(tmp_path / "configured").root
    assert git(configured, "log", "--format=%an <%ae>") == "Ada Example <ada@example.org>"


def test_init_without_git_says_so_instead_of_failing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git on it
    result = CliRunner().invoke(app, ["init", str(tmp_path / "mylab")])
    assert result.exit_code == 0, result.output
    assert "git is not installed" in result.output
    assert (tmp_path / "mylab" / "lab.yaml").is_file() and not (tmp_path / "mylab" / ".git").exists()


def test_a_mistyped_run_id_says_it_is_neither_a_run_nor_a_model(lab):
    result = CliRunner().invoke(app, ["export", "nosuchrun", str(lab.root / "out"), "--lab", str(lab.root)])
    assert "no train run or API model named 'nosuchrun' in this lab, and base model 'nosuchrun' not found" in (
        str(result.exception))
    # an evaluation's id: what it evaluated, and the train run to name instead
    from llamalab.runs.record import RunRecord
    from tests.records import eval_fields

    evaluation = RunRecord.create(lab.runs_dir, "eval", "sentiment-tuned", {},
                                  **eval_fields(label="tuned", kind="finetuned", train_run="20261129-train-tuned-ab12"))
    result = CliRunner().invoke(app, ["export", evaluation.id[-4:], str(lab.root / "out"), "--lab", str(lab.root)])
    assert str(result.exception) == (f"{evaluation.id[-4:]!r} names evaluation run {evaluation.id} (of tuned), not a "
                                     "train run or a model; its train run is 20261129-train-tuned-ab12")


def test_an_unfinished_run_names_the_resume_that_continues_it_with_its_overrides(lab):
    from llamalab.config import LlamalabError
    from llamalab.evaluation.systems import resolve_system
    from llamalab.runs.record import RunRecord
    from llamalab.training.experiment import load_experiment
    from tests.records import train_fields

    _, resolved = load_experiment(lab.experiment_path("sentiment-lora"), {"max_steps": 40, "lora.r": 4})
    record = RunRecord.create(lab.runs_dir, "train", "sentiment-lora", resolved,
                              **train_fields(experiment="sentiment-lora"))
    record.update(pid=2**22 + 7)  # its process is gone: killed
    with pytest.raises(LlamalabError, match=r"stopped before it finished \(its process is gone\), not finished: "
                                            r"resume it with `llamalab train sentiment-lora --resume lora.r=4 "
                                            r"max_steps=40`"):
        resolve_system(lab, record.id)
    # started from Python under a name of its own: no `llamalab train mine`, which has no experiment file
    named = RunRecord.create(lab.runs_dir, "train", "mine", resolved, **train_fields(experiment="mine"))
    named.update(status="interrupted")
    with pytest.raises(LlamalabError, match=r"resume it with `train\(lab, experiment, name='mine', resume=True\)` "
                                            r"in Python, with the experiment it was started from"):
        resolve_system(lab, named.id)


def test_data_commands_refuse_counts_below_one_and_p95_is_never_rounded_down(lab):
    import numpy as np

    from llamalab.tasks.checks import _stats

    for args in (["data", "check", "sentiment", "--max-new-tokens", "0"], ["data", "show", "sentiment", "-n", "-1"],
                 ["data", "check", "sentiment", "--max-length", "0"]):
        result = CliRunner().invoke(app, [*args, "--lab", str(lab.root)])
        assert result.exit_code == 2 and "Invalid value" in result.output, args
    rng = np.random.default_rng(3)
    for _ in range(200):
        values = rng.integers(1, 50, size=int(rng.integers(1, 40)))
        stats = _stats(values)
        assert stats["p95"] >= np.percentile(values, 95) and stats["p95"] <= stats["max"]


def test_a_local_model_is_named_without_this_machines_paths(lab, tmp_path):
    """Tables, the site and posts are published: a GGUF file or model folder is named by its path in the lab,
    or by its own name when outside it (its absolute path was the label)."""
    from llamalab.evaluation.systems import base_label, system_outline

    outside = tmp_path / "models" / "m.gguf"
    outside.parent.mkdir()
    outside.write_bytes(b"GGUF")
    inside = lab.root / "runs" / ".gguf" / "x-q8_0.gguf"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"GGUF")
    assert base_label(lab, str(outside)) == "m.gguf"
    assert base_label(lab, str(inside)) == "runs/.gguf/x-q8_0.gguf"
    assert base_label(lab, "smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert system_outline(lab, str(outside)).label == "m.gguf"


def test_a_mistyped_split_or_task_is_named_as_such(lab):
    runner = CliRunner()
    result = runner.invoke(app, ["compare", "--task", "sentiment", "--split", "dv", "--lab", str(lab.root)])
    assert result.exit_code == 2 and "'dv' is not a split: use train, dev or test" in " ".join(result.output.split())
    result = runner.invoke(app, ["report", "--task", "sentimnt", "--lab", str(lab.root)])
    assert "did you mean 'sentiment'" in str(result.exception)


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_ctrl_c_says_what_is_kept_and_how_to_go_on(lab, tiny_model_dir, stop):
    """Ctrl-C stopped a command with exit code 130 and not a word; it says what is kept and how to continue, and
    the run is marked interrupted. So does SIGTERM (`kill`, `docker stop`), which left the run "running"."""
    import signal
    import time

    from llamalab.runs.record import list_runs

    child = subprocess.Popen([sys.executable, "-m", "llamalab.cli", "eval", str(tiny_model_dir), "--task", "sentiment",
                              "--protocol", "generate", "--max-new-tokens", "8", "--lab", str(lab.root)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not list(lab.runs_dir.glob("*/predictions.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.2)  # until its first predictions are saved
    child.send_signal(getattr(signal, stop))
    output, _ = child.communicate(timeout=120)
    assert child.returncode == 130, output[-2000:]
    said = "interrupted" if stop == "SIGINT" else "SIGTERM received"
    assert f"{said}: stopping. Finished work is kept: a train or eval run continues with --resume" in output
    [record] = list_runs(lab.runs_dir, "eval")
    assert record.run.status == "interrupted"


def test_eval_option_errors_name_the_option_typed(lab):
    """`--limit 0` said "key 'limit'", `--batch-size abc` "key 'batch_size'": the settings' keys, not the options."""
    runner = CliRunner()
    for args, option in ((["--limit", "0"], "--limit"), (["--batch-size", "abc"], "--batch-size")):
        result = runner.invoke(app, ["eval", "smollm2-135m-instruct", "--task", "sentiment", *args,
                                     "--lab", str(lab.root)])
        said = str(result.exception)  # a LlamalabError: one red line from `llamalab`
        assert f"command line: {option}: " in said and "key '" not in said, said


def test_paths_dates_and_files_that_cannot_be_used_are_one_line_each(lab, tmp_path):
    """A file where a folder must be, an impossible date in front matter, a publications.bib that is not UTF-8,
    a --format that is neither plain nor chat, JSON Python cannot build: each an error line, exit code 2 (data
    check: 1, its bad rows listed), no traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = llamalab("init", str(blocker / "lab"))
    assert result.returncode == 2 and f"cannot use {blocker}: File exists" in one_line(result.stderr), result.stderr
    assert "Traceback" not in result.stderr

    post = next((lab.root / "posts").glob("*.md"))
    text = post.read_text()
    post.write_text(text.replace("date: ", "date: 2026-13-45 #", 1))
    result = llamalab("site", "build", "--lab", str(lab.root))
    assert result.returncode == 2, result.stderr
    assert "a date must be a real one, written YYYY-MM-DD" in one_line(result.stderr), result.stderr
    post.write_text(text)

    (lab.root / "publications.bib").write_bytes(b"@article{a, title={\xff}, year={2020}}\n")
    result = llamalab("site", "build", "--lab", str(lab.root))
    assert result.returncode == 2 and "publications.bib: not UTF-8" in one_line(result.stderr), result.stderr

    result = llamalab("data", "show", "sentiment", "--format", "xml", "--lab", str(lab.root))
    assert result.returncode == 2 and "--format: use plain or chat (got 'xml')" in one_line(result.stderr)

    (lab.root / "data" / "big.jsonl").write_text('{"text": "a", "label": "positive", "n": 1' + "0" * 5000 + "}\n"
                                                 + "[" * 100_000 + "]" * 100_000 + "\n"
                                                 + '{"text": "b", "label": "negative"}\n')
    (lab.root / "tasks" / "big.yaml").write_text("name: big\ndata:\n  files: [{path: data/big.jsonl, split: test}]\n"
                                                 "prompt: {template: '{{ text }}'}\n"
                                                 "answer: {labels: [negative, positive]}\n")
    result = llamalab("data", "check", "big", "--lab", str(lab.root))
    assert result.returncode == 1 and "Traceback" not in one_line(result.stderr), result.stderr
    shown = one_line(result.stdout + result.stderr)
    assert "data/big.jsonl:1: malformed JSON (an integer of over 4,300 digits" in shown
    assert "data/big.jsonl:2: malformed JSON" in shown



def test_outputs_and_comparators_that_cannot_be_used_are_refused_before_any_work(lab, tmp_path):
    """An assignment --out among other files (the lab's tasks/), a predictions OUT that is a folder, a study's API
    comparator lab.yaml does not have: refused before a model loads or a cell trains, nothing written."""
    tasks_before = sorted(p.name for p in (lab.root / "tasks").iterdir())
    result = llamalab("assignment", "build", "sentiment", "--out", str(lab.root / "tasks"), "--lab", str(lab.root))
    assert result.returncode == 2 and "holds files an assignment build did not make" in one_line(result.stderr)
    assert sorted(p.name for p in (lab.root / "tasks").iterdir()) == tasks_before

    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text('{"id": "a", "text": "fine"}\n')
    result = llamalab("assignment", "predict", "smollm2-135m-instruct", str(inputs), str(tmp_path), "--task",
                      "sentiment", "--lab", str(lab.root))
    assert result.returncode == 2 and f"{tmp_path} is a folder: name the file to write" in one_line(result.stderr)

    study = lab.root / "studies" / "unknown-api.yaml"
    study.write_text("kind: scaling\nexperiment: sentiment-lora\ngrid: {train_examples: [2, 4]}\n"
                     "comparators: {api: [gpt9], baselines: false}\n")
    result = llamalab("study", "run", "unknown-api", "--lab", str(lab.root))
    assert result.returncode == 2, result.stderr
    assert "key 'comparators.api': 'gpt9' is not an API model of lab.yaml's api_models" in one_line(result.stderr)
    assert not lab.runs_dir.exists() or not any(lab.runs_dir.iterdir())


def test_repeats_and_empty_names_are_refused(lab, tmp_path):
    """A quantization study listing a type (or a system) twice, a post author that is empty: refused, nothing
    written; a study point whose evaluation lost its predictions file names the file."""
    from types import SimpleNamespace

    from llamalab.studies.scaling import no_common_examples

    study = lab.root / "studies" / "twice.yaml"
    study.write_text("kind: quantization\nquantize: {systems: [smollm2-135m-instruct], types: [f16, q8_0, F16]}\n")
    result = llamalab("study", "status", "twice", "--lab", str(lab.root))
    assert result.returncode == 2 and "f16 listed more than once in `types`" in one_line(result.stderr), result.stderr
    posts = sorted(p.name for p in (lab.root / "posts").iterdir())
    result = llamalab("post", "new", "Week 49", "--author", " ", "--lab", str(lab.root))
    assert result.returncode == 2 and "--author: give a name" in one_line(result.stderr), result.stderr
    assert sorted(p.name for p in (lab.root / "posts").iterdir()) == posts

    kept, lost = tmp_path / "kept", tmp_path / "lost"
    kept.mkdir()
    lost.mkdir()
    (kept / "predictions.jsonl").write_text("")
    why = no_common_examples("400 training examples", [SimpleNamespace(id="a", folder=kept),
                                                        SimpleNamespace(id="b", folder=lost)])
    assert why.startswith(f"400 training examples: {lost / 'predictions.jsonl'} is missing"), why

def one_line(text: str) -> str:
    """Console output with its wrapping undone (rich wraps at the terminal's width)."""
    return " ".join(text.split())
