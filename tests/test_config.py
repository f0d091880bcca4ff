from __future__ import annotations

import pytest

from llamalab.backends.api import ApiModel
from llamalab.config import LlamalabError, apply_overrides, load_config, parse_overrides
from llamalab.lab import LabConfig, find_lab
from llamalab.tasks.task import Task, load_task
from llamalab.training.experiment import Experiment, load_experiment


def test_shipped_configs_load(lab):
    """The example lab's task and experiment files must always match the code."""
    for path in sorted((lab.root / "tasks").glob("*.yaml")):
        assert load_task(path, lab.root).name == path.stem
    for path in sorted((lab.root / "experiments").glob("*.yaml")):
        experiment, _ = load_experiment(path)
        load_task(lab.task_path(experiment.task), lab.root)


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("task: sentiment\nlearning_rte: 0.001\n")
    with pytest.raises(LlamalabError) as err:
        load_config(Experiment, path)
    message = str(err.value)
    assert f"{path}:2" in message
    assert "learning_rte" in message
    assert "did you mean 'learning_rate'" in message


def test_nested_unknown_key_suggests_from_the_nested_model(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("task: sentiment\nlora:\n  alpah: 8\n")
    with pytest.raises(LlamalabError, match=r"exp.yaml:3: unknown key 'lora.alpah': did you mean 'alpha'"):
        load_config(Experiment, path)


def test_wrong_type_names_key_and_value(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("task: sentiment\nbatch_size: lots\n")
    with pytest.raises(LlamalabError, match=r"exp.yaml:2: key 'batch_size'.*got 'lots'"):
        load_config(Experiment, path)


def test_missing_required_key(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("learning_rate: 0.001\n")
    with pytest.raises(LlamalabError, match="missing required key 'task'"):
        load_config(Experiment, path)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text("name: x\ndata: [unclosed\n")
    with pytest.raises(LlamalabError, match="task.yaml:.*not valid YAML"):
        load_config(Task, path)


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("task: sentiment\nlora: {r: 16}\n")
    experiment, resolved = load_experiment(path, parse_overrides(["lora.r=4", "learning_rate=1e-3", "max_steps=7"]))
    assert (experiment.lora.r, experiment.learning_rate, experiment.max_steps) == (4, 1e-3, 7)
    assert resolved["lora"]["r"] == 4
    with pytest.raises(LlamalabError, match="did you mean 'max_steps'"):
        load_experiment(path, {"max_step": 3})
    for shorthand, meant in (("lr", "learning_rate"), ("bs", "batch_size"), ("num_train_epochs", "epochs")):
        with pytest.raises(LlamalabError, match=f"unknown key '{shorthand}': did you mean '{meant}'"):
            load_experiment(path, {shorthand: 3})  # `lr` was offered `lora`
    with pytest.raises(LlamalabError, match="key 'memory_limit': give the unit too, such as 24GB"):
        load_experiment(path, {"memory_limit": 24})
    # YAML's yes/true is a boolean, which a number field took as 1 (`epochs: yes` trained one epoch)
    for key, value in (("epochs", True), ("max_steps", False), ("lora.r", True)):
        with pytest.raises(LlamalabError, match=f"key '{key}': is a number, not yes/no"):
            load_experiment(path, {key: value})
    assert load_experiment(path, {"bf16": True})[0].bf16 == "yes"  # a yes/no setting still reads one
    with pytest.raises(LlamalabError, match="expected key=value"):
        parse_overrides(["justakey"])
    # From Python: dotted keys, or a dict merged into its section (the section's other settings stay)
    data = {"task": "sentiment", "lora": {"r": 16, "alpha": 8}}
    assert apply_overrides(data, {"lora": {"r": 4}})["lora"] == {"r": 4, "alpha": 8}
    assert apply_overrides(data, {"lora.r": 2, "seed": 1}) == {"task": "sentiment", "lora": {"r": 2, "alpha": 8},
                                                             "seed": 1}
    assert data["lora"]["r"] == 16  # a copy: the caller's dict is untouched
    with pytest.raises(LlamalabError, match="'task' is not a section"):
        apply_overrides(data, {"task.name": "x"})


@pytest.mark.parametrize(("text", "message"), [
    (b"task: sentiment\nseed: 1\nlearning_rate: .inf\n", "exp.yaml:3: key 'learning_rate': Input should be a finite"),
    (b"task: sentiment\nweight_decay: .nan\n", "exp.yaml:2: key 'weight_decay': Input should be a finite"),
    (b"task: sentiment\nlora:\n  r: 4\n  dropout: -.inf\n", "exp.yaml:4: key 'lora.dropout'"),
    (b"task: sentiment\nseed: 1\nwarmup_ratio: 2024-02-30\n", "exp.yaml:3: a value YAML cannot read (day is out"),
    (b"task: sentiment\nlora: {r: 4, alpha: 1" + b"0" * 5000 + b"}\n", "exp.yaml:2: a value YAML cannot read"),
    (b"task: sentiment\n# caf\xe9\n", "exp.yaml:2: not UTF-8 (byte 0xe9); save the file as UTF-8"),
    (b"task: sentiment\nseed: 1\nmethod: full\nlora: {r: 4}\n", "exp.yaml:4: key 'lora': `lora` settings given"),
    (b"task: sentiment\nlearning_rate: 1e-4\nseed: 1\nlearning_rate: 1e-3\n",
     "exp.yaml:4: key 'learning_rate' is given twice (first on line 2)"),
    (b"task: sentiment\nlora:\n  r: 4\n  alpha: 8\n  r: 16\n", "exp.yaml:5: key 'r' is given twice (first on line 3)"),
])
def test_values_no_setting_can_mean_name_their_line(tmp_path, text, message):
    """inf/nan (YAML floats), values PyYAML cannot build, bytes that are not UTF-8 and whole-experiment checks: a
    clear error naming the line, never a traceback or a run with learning_rate inf."""
    path = tmp_path / "exp.yaml"
    path.write_bytes(text)
    with pytest.raises(LlamalabError) as error:
        load_experiment(path)
    assert message in str(error.value)


def test_broken_overrides_and_top_level_lists_are_clear_errors(tmp_path):
    with pytest.raises(LlamalabError, match=r"override 'lora.r=\[1,': the value is not valid YAML .*quote it"):
        parse_overrides(["lora.r=[1,"])
    with pytest.raises(LlamalabError, match="override 'seed=2024-02-30': the value is not valid YAML"):
        parse_overrides(["seed=2024-02-30"])
    path = tmp_path / "exp.yaml"
    path.write_text("- task: sentiment\n")
    with pytest.raises(LlamalabError, match=r"exp.yaml \(with overrides lora.r=4\):1: expected settings as "
                                            r"`key: value` lines, but the file holds a list"):
        load_experiment(path, {"lora.r": 4})
    path.write_text("# the learning rate\n\n0.001\n")
    with pytest.raises(LlamalabError, match=r"exp.yaml:3: expected settings as `key: value` lines, but the file "
                                            r"holds 0.001"):
        load_experiment(path)


def test_task_label_checks(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text(
        "name: t\ndata: {files: [{path: a.jsonl, split: train}]}\nprompt: {template: '{{ text }}'}\n"
        "answer: {labels: [a, b], verbalizers: {c: see}}\n"
    )
    with pytest.raises(LlamalabError, match="task.yaml:4: key 'answer.verbalizers': verbalizers name labels not "
                                            "in `labels`: c"):
        load_config(Task, path)


def test_missing_lab_and_unknown_task(lab, tmp_path):
    with pytest.raises(LlamalabError, match="no lab.yaml"):
        find_lab(tmp_path)
    with pytest.raises(LlamalabError, match="nowhere does not exist: check --lab"):
        find_lab(tmp_path / "nowhere")
    with pytest.raises(LlamalabError, match="did you mean 'sentiment'"):
        lab.task_path("sentimnt")


def test_api_models_in_lab_yaml_are_api_models(tmp_path):
    """lab.yaml's api_models entries are the ApiModel the client runs on: named by their key, checked at load."""
    path = tmp_path / "lab.yaml"
    entry = "    base_url: https://api.example.com/v1\n    model: m\n    api_key_env: EXAMPLE_KEY\n"
    path.write_text(f"name: lab\napi_models:\n  gpt:\n{entry}")
    model = load_config(LabConfig, path).api_models["gpt"]
    assert isinstance(model, ApiModel)
    assert (model.name, model.api_key_env, model.max_concurrency, model.max_retries) == ("gpt", "EXAMPLE_KEY", 8, 8)
    assert ApiModel(name="gpt", base_url="https://api.example.com/v1", model="m", api_key_env="EXAMPLE_KEY") == model

    for extra, problem in [
        ("    name: gpt\n", None),  # allowed, and redundant
        ("    name: other\n", r"api model 'gpt' has name 'other': its name is its key"),
        ("    max_retries: -1\n", r"lab.yaml:7: key 'api_models.gpt.max_retries': .*greater than or equal to 0"),
        ("    timeout_s: 0\n", r"key 'api_models.gpt.timeout_s': .*greater than 0"),
        ("    max_concurency: 2\n", r"lab.yaml:7: unknown key 'api_models.gpt.max_concurency': did you mean "
                                    r"'max_concurrency'"),
    ]:
        path.write_text(f"name: lab\napi_models:\n  gpt:\n{entry}{extra}")
        if problem is None:
            load_config(LabConfig, path)
            continue
        with pytest.raises(LlamalabError, match=problem):
            load_config(LabConfig, path)
    path.write_text(f"name: lab\napi_models:\n  gpt:\n{entry.replace('https://', 'ftp://')}")
    with pytest.raises(LlamalabError, match=r"lab.yaml:4: key 'api_models.gpt.base_url'.*must start with http"):
        load_config(LabConfig, path)


def test_aliases_that_refer_to_themselves_or_expand_without_end_are_refused_quickly(tmp_path):
    from llamalab.config import load_yaml

    (tmp_path / "loop.yaml").write_text("name: x\ndata: &a {files: [*a]}\n")
    with pytest.raises(LlamalabError, match=r"loop.yaml:2: an anchor holds an alias to itself"):
        load_yaml(tmp_path / "loop.yaml")
    lines = ["a0: &a0 [x, x]", *(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, 27))]
    (tmp_path / "laughs.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(LlamalabError, match=r"laughs.yaml:1: its aliases expand to [\d,]+ values \(at most"):
        load_yaml(tmp_path / "laughs.yaml")  # was checked in 34 s for 26 levels, doubling with each
    (tmp_path / "merge.yaml").write_text("base: &b {lr: 1}\nrun: {<<: *b, seed: 2}\n")
    assert load_yaml(tmp_path / "merge.yaml")[0]["run"] == {"lr": 1, "seed": 2}


def test_init_on_a_file_says_so(tmp_path):
    from llamalab.lab import init_lab

    (tmp_path / "afile").write_text("x")
    with pytest.raises(LlamalabError, match="afile exists and is not a folder"):
        init_lab(tmp_path / "afile")


def test_a_value_fitting_no_type_of_a_union_is_one_message_and_internal_keys_are_not_suggested(tmp_path):
    from llamalab.config import parse_model
    from llamalab.evaluation.evaluate import EvalSettings

    with pytest.raises(LlamalabError) as error:
        parse_model(EvalSettings, {"system": "x", "task": "t", "batch_size": 0}, "command line")
    assert str(error.value) == ("command line: key 'batch_size': Input should be greater than or equal to 1, or "
                                "input should be 'auto' (got 0)")
    path = tmp_path / "task.yaml"
    path.write_text("name: task\nlab_rot: 1\n")
    with pytest.raises(LlamalabError) as error:
        load_config(Task, path)
    assert "unknown key 'lab_rot'" in str(error.value) and "lab_root" not in str(error.value)


def test_an_override_error_names_the_override_not_a_line_of_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("task: sentiment\nmax_steps: 5\nlora:\n  r: 8\n")
    for overrides, expected in (({"max_steps": 0}, r"exp.yaml \(with overrides max_steps=0\): key 'max_steps'"),
                                ({"lora.rr": 8}, r"\): unknown key 'lora.rr': did you mean 'lora.r'\?")):
        with pytest.raises(LlamalabError, match=expected) as error:
            load_experiment(path, overrides)
        assert "):2" not in str(error.value) and "):4" not in str(error.value)
    path.write_text("task: sentiment\nmax_steps: 0\n")
    with pytest.raises(LlamalabError, match=r"exp.yaml \(with overrides lora.r=4\):2: key 'max_steps'"):
        load_experiment(path, {"lora.r": 4})  # a file's own problem keeps its line


def test_errors_on_two_entries_of_a_mapping_stay_two_and_name_their_entries():
    from llamalab.config import parse_model

    with pytest.raises(LlamalabError) as error:
        parse_model(LabConfig, {"name": "x", "api_models": {"gpt": 5, "claude": 6}}, "lab.yaml")
    lines = str(error.value).splitlines()
    assert len(lines) == 2 and "key 'api_models.gpt'" in lines[0] and "key 'api_models.claude'" in lines[1]


@pytest.mark.parametrize(("url", "why"), [("http://[::1/v1", "is not a URL"), ("https://", "names no host"),
                                          ("https://api.example.com:99999/v1", "is not a URL")])
def test_an_api_base_url_that_is_no_url_is_refused_in_lab_yaml(lab, url, why):
    """It passed the http(s):// check, then the client's first request raised httpx.InvalidURL (a traceback)."""
    import yaml

    from llamalab.lab import find_lab

    config = yaml.safe_load((lab.root / "lab.yaml").read_text())
    config["api_models"] = {"remote": {"base_url": url, "model": "m"}}
    (lab.root / "lab.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(LlamalabError, match=f"base_url.*{why}"):
        find_lab(lab.root)
