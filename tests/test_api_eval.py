"""`llamalab eval` of an industry-style API model: a real llama.cpp server behind a fault-injecting proxy."""

from __future__ import annotations

import pytest
import yaml

from llamalab.evaluation.compare import compare
from llamalab.evaluation.evaluate import EvalSettings, evaluate
from llamalab.lab import find_lab
from llamalab.runs.files import read_jsonl
from llamalab.runs.record import list_runs
from tests.fault_proxy import DEFAULT_MIX, FaultProxy, scripted, seeded_faults
from tests.killing import eval_killed_after
from tests.llama_server import API_KEY

pytestmark = pytest.mark.slow
KEY_ENV = "LLAMALAB_EVAL_TEST_KEY"
SETTINGS = {"system": "smol-api", "task": "sentiment", "limit": 16, "max_new_tokens": 4}


def with_api_model(lab, base_url: str):
    config = yaml.safe_load((lab.root / "lab.yaml").read_text())
    config["api_models"] = {"smol-api": {
        "base_url": base_url, "model": "smollm2", "api_key_env": KEY_ENV, "input_price_per_mtok": 0.15,
        "output_price_per_mtok": 0.6, "max_concurrency": 4, "timeout_s": 5,
    }}
    (lab.root / "lab.yaml").write_text(yaml.safe_dump(config))
    return find_lab(lab.root)


@pytest.fixture
def api_env(monkeypatch, tmp_path):
    """Sets the key; returns a function that points the request cache at a fresh file."""
    monkeypatch.setenv(KEY_ENV, API_KEY)

    def fresh_cache(name: str) -> None:
        monkeypatch.setenv("LLAMALAB_API_CACHE", str(tmp_path / f"{name}.sqlite"))

    fresh_cache("first")
    return fresh_cache


def test_api_eval_through_faults_loses_nothing(lab, llama_server, api_env):
    clean_lab = with_api_model(lab, llama_server)
    clean = evaluate(clean_lab, EvalSettings(**SETTINGS))
    clean_rows = {r["id"]: r for r in read_jsonl(clean.folder / "predictions.jsonl")}
    # the server's finish_reason "length" where the 4-token budget ran out: marked per row and counted
    assert all(r["truncated"] is (r["output_tokens"] == 4) for r in clean_rows.values())
    assert clean.run.predictions_summary.truncated == sum(r["truncated"] for r in clean_rows.values())

    api_env("faulty")  # every request must really go through the proxy
    faults = seeded_faults(0.5, seed=32, faults=(*DEFAULT_MIX, "null_content", "filtered", "filtered_prompt"),
                           clean_after=2)
    with FaultProxy(llama_server.removesuffix("/v1"), faults, slow_s=7) as proxy:
        faulty_lab = with_api_model(lab, proxy.url)
        faulty = evaluate(faulty_lab, EvalSettings(**SETTINGS))
        injected = proxy.faults_injected()
        assert injected["null_content"] > 0 and injected["filtered"] > 0 and injected["filtered_prompt"] > 0
    rows = read_jsonl(faulty.folder / "predictions.jsonl")
    assert faulty.run.status == "finished" and len(rows) == 16
    assert faulty.run.scoring.protocol == "generate"
    assert faulty.run.system.kind == "api" and faulty.run.system.api["api_key_env"] == KEY_ENV
    assert API_KEY not in (faulty.folder / "run.json").read_text()
    assert faulty.run.usage.input_tokens > 0 and faulty.run.usage.cost_usd > 0
    # The answers used are the clean run's, but for prompts the filter refused (no usage: 0 tokens); the tokens of
    # answers with no content were billed too, and are priced.
    refused = {r["id"] for r in rows if r["content_filtered"] and r["input_tokens"] == 0}
    assert len(refused) == injected["filtered_prompt"] == faulty.run.usage.content_filtered_unmetered
    retried = faulty.run.usage
    kept = [row for i, row in clean_rows.items() if i not in refused]
    assert (retried.input_tokens, retried.output_tokens) == (sum(r["input_tokens"] for r in kept),
                                                             sum(r["output_tokens"] for r in kept))
    assert retried.retried_input_tokens > 0
    # A content filter's answer is final (not retried) and empty: wrong, and counted. On a loaded machine the
    # upstream can take longer than the client's 5 s timeout: the client never got such an answer, and retried.
    filtered = [r for r in rows if r["content_filtered"] and r["id"] not in refused]
    assert retried.content_filtered == len(filtered) + len(refused)
    assert len(proxy.filtered_s) == injected["filtered"]
    in_time = sum(seconds < 4 for seconds in proxy.filtered_s)
    assert in_time <= len(filtered) <= sum(seconds < 5 for seconds in proxy.filtered_s)
    for row in [r for r in rows if r["content_filtered"]]:
        assert row["generation"] == "" and row["prediction"] is None and not row["correct"]
    assert retried.cost_usd == pytest.approx(sum(r["cost_usd"] for r in kept) + (
        retried.retried_input_tokens * 0.15 + retried.retried_output_tokens * 0.6) / 1e6, abs=2e-6)
    assert {r["id"] for r in rows} == set(clean_rows)
    for row in rows:
        assert row["prompt"].startswith('[{"role": "user", "content": "Answer with exactly one of: negative, positive.')
        assert row["prediction"] in (None, "negative", "positive")

    table = compare(faulty_lab, "sentiment")
    assert {row.protocol for row in table.systems} == {"generate"}
    assert all(row.usage.cost_per_1k_examples_usd > 0 for row in table.systems)


def test_api_eval_resumes_after_kill_without_paying_twice(lab, llama_server, api_env):
    # Answers a busy upstream returns after the client's 5 s timeout are lost and paid again: counted apart.
    with FaultProxy(llama_server.removesuffix("/v1"), client_timeout_s=4.0) as proxy:
        api_lab = with_api_model(lab, proxy.url)
        killed = eval_killed_after(api_lab.root, 6, SETTINGS)
        assert killed.returncode == -9, killed.stderr.decode()[-2000:]
        [interrupted] = list_runs(api_lab.runs_dir, "eval")
        saved = {r["id"] for r in read_jsonl(interrupted.folder / "predictions.jsonl")}
        assert len(saved) == 6

        resumed = evaluate(api_lab, EvalSettings(**SETTINGS), resume=True)
        paid, lost = dict(proxy.paid), sum(proxy.lost.values())
    rows = read_jsonl(resumed.folder / "predictions.jsonl")
    assert resumed.id == interrupted.id and len(rows) == 16 and len({r["id"] for r in rows}) == 16
    # Finished examples are never sent again; only a request in flight at the kill may be paid twice.
    assert sum(paid.values()) - 16 <= 4 + lost
    assert not any(r.get("cached") for r in rows if r["id"] in saved)

    api_env("fresh")  # a clean run that really asks the server again
    fresh = evaluate(with_api_model(lab, llama_server), EvalSettings(**SETTINGS))
    fresh_rows = {r["id"]: r["generation"] for r in read_jsonl(fresh.folder / "predictions.jsonl")}
    assert {r["id"]: r["generation"] for r in rows} == fresh_rows


def test_reuse_and_resume_never_take_a_run_of_another_api_model_under_the_same_name(lab, llama_server, api_env):
    """lab.yaml may point an API name at another model, endpoint or price: the settings (the name) stay the same,
    so a study's reuse returned the old model's run, and a resume mixed two models' answers and prices."""
    settings = {**SETTINGS, "limit": 4}
    # a local model's evaluation recorded under the same name, as evaluations of both kinds recorded their settings
    # before an API model's backend was recorded as api, is not the API model's
    from llamalab.evaluation.evaluate import complete_settings
    from llamalab.evaluation.systems import system_outline
    from llamalab.runs.record import RunRecord
    from llamalab.tasks.task import load_task
    from tests.records import eval_fields

    api_lab = with_api_model(lab, llama_server)
    spec = load_task(api_lab.task_path("sentiment"), api_lab.root)
    legacy = complete_settings(EvalSettings(**settings), spec, system_outline(api_lab, "smol-api")).model_copy(
        update={"backend": "hf"})
    local = RunRecord.create(api_lab.runs_dir, "eval", "sentiment-smol-api", legacy.model_dump(),
                             **eval_fields(label="smol-api", n=4, protocol="generate", fmt="chat"))
    local.update(status="finished")
    first = evaluate(api_lab, EvalSettings(**settings), reuse=True)
    assert first.id != local.id
    assert evaluate(with_api_model(lab, llama_server + "/"), EvalSettings(**settings), reuse=True).id == first.id
    # its config.yaml says what ran it, and a backend named for it (a study's, say) is the same evaluation
    assert first.config["backend"] == first.run.backend.backend == "api"
    assert evaluate(with_api_model(lab, llama_server), EvalSettings(**settings, backend="vllm"), reuse=True).id == (
        first.id)

    config = yaml.safe_load((lab.root / "lab.yaml").read_text())
    config["api_models"]["smol-api"]["model"] = "another-model"
    (lab.root / "lab.yaml").write_text(yaml.safe_dump(config))
    other = evaluate(find_lab(lab.root), EvalSettings(**settings), reuse=True)
    assert other.id != first.id and other.run.system.api["model"] == "another-model"

    other.update(status="running", pid=None)  # as if killed
    config["api_models"]["smol-api"]["input_price_per_mtok"] = 100.0
    (lab.root / "lab.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(Exception, match=rf"run {other.id} cannot be continued: API model smol-api is set otherwise "
                                        r"in lab.yaml now \(input_price_per_mtok 0.15 → 100.0\)"):
        evaluate(find_lab(lab.root), EvalSettings(**settings), resume=True)


def test_a_request_that_fails_for_good_names_its_example(lab, llama_server, api_env):
    """The client numbers requests by their place in the batch; an evaluation's error names the example instead
    (a resumed one sends only the examples left, so "request 2" was no example's number)."""
    import re

    from llamalab.config import LlamalabError
    from llamalab.tasks.data import load_task_data
    from llamalab.tasks.task import load_task

    ids = [ex.id for ex in load_task_data(load_task(lab.task_path("sentiment"), lab.root)).split("test")]
    with FaultProxy(llama_server.removesuffix("/v1"), scripted(["404"])) as proxy, \
            pytest.raises(LlamalabError) as failed:
        evaluate(with_api_model(lab, proxy.url), EvalSettings(**{**SETTINGS, "limit": 4}))
    message = str(failed.value)
    assert "HTTP 404" in message and not re.search(r"request \d", message), message
    assert re.search(r"example (\S+):", message)[1] in ids, message
