"""The API client against a real OpenAI-compatible server (llama.cpp on the embedded model), with real faults."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from llamalab.backends.api import (
    ApiError,
    ApiModel,
    ChatClient,
    ChatRequest,
    ChatResult,
    _AdaptiveLimit,
    request_body,
)
from tests.fault_proxy import DEFAULT_MIX, FaultProxy, body_key, scripted, seeded_faults
from tests.llama_server import API_KEY, free_port

pytestmark = pytest.mark.slow

KEY_ENV = "LLAMALAB_TEST_API_KEY"
PRICE_IN, PRICE_OUT = 0.15, 0.60
ROOT = Path(__file__).resolve().parent.parent
REQUESTS = [
    ChatRequest(messages=[{"role": "user", "content": f"Continue the list: {i}, {i + 1}, {i + 2},"}], max_tokens=8)
    for i in range(24)
]


def api_model(base_url: str, **overrides: Any) -> ApiModel:
    fields = {
        "name": "smollm2-server", "base_url": base_url, "model": "smollm2", "api_key_env": KEY_ENV,
        "input_price_per_mtok": PRICE_IN, "output_price_per_mtok": PRICE_OUT, "max_concurrency": 4,
        "timeout_s": 10.0, "max_retries": 8,
    }
    return ApiModel(**{**fields, **overrides})


def run_batch(model: ApiModel, cache: Path, requests: list[ChatRequest] = REQUESTS) -> list[ChatResult]:
    with ChatClient(model, cache) as client:
        return client.complete_many(requests)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, API_KEY)


@pytest.fixture(scope="module")
def clean(llama_server: str, tmp_path_factory: pytest.TempPathFactory) -> list[ChatResult]:
    """The batch straight from the server: the reference every faulty run must reproduce."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, API_KEY)
        return run_batch(api_model(llama_server), tmp_path_factory.mktemp("clean") / "cache.sqlite")


def test_clean_run_has_text_usage_and_cost(llama_server: str, clean: list[ChatResult], tmp_path: Path) -> None:
    assert len(clean) == len(REQUESTS)
    for result in clean:
        assert result.text.strip() and result.input_tokens > 0 and result.output_tokens > 0
        price = (result.input_tokens * PRICE_IN + result.output_tokens * PRICE_OUT) / 1e6
        assert result.cost_usd == pytest.approx(price)
        assert not result.cached and result.attempts == 1 and result.latency_s > 0
    assert max(r.output_tokens for r in clean) <= 8
    # finish_reason "length" exactly where the 8-token budget was spent, "stop" where the model ended first
    assert all(r.truncated is (r.output_tokens == 8) for r in clean)
    assert any(r.truncated for r in clean)

    # on_result runs on the caller's thread, once per request, after the row is cached.
    cache = tmp_path / "cache.sqlite"
    seen: list[tuple[int, int]] = []
    with ChatClient(api_model(llama_server), cache) as client:
        results = client.complete_many(REQUESTS[:4], lambda i, r: seen.append((i, threading.get_ident())))
    assert sorted(i for i, _ in seen) == [0, 1, 2, 3]
    assert {ident for _, ident in seen} == {threading.get_ident()}
    assert [r.text for r in results] == [r.text for r in clean[:4]]

    again = run_batch(api_model(llama_server), cache, REQUESTS[:4])
    assert all(r.cached and r.cost_usd == 0 and r.attempts == 0 for r in again)
    assert [(r.text, r.truncated) for r in again] == [(r.text, r.truncated) for r in clean[:4]]
    # The key is only ever sent in a header: never stored.
    for path in tmp_path.iterdir():
        assert API_KEY.encode() not in path.read_bytes(), path
    assert API_KEY not in repr(results)


def test_every_request_survives_injected_faults(llama_server: str, clean: list[ChatResult], tmp_path: Path) -> None:
    model = api_model("http://unused", timeout_s=5.0)
    schedule = seeded_faults(0.6, seed=7, clean_after=2)
    # A busy upstream can outlast the client's timeout without any injected fault; the proxy counts such answers
    # as lost from a margin below the timeout (a reply can reach the client after it gave up).
    with FaultProxy(llama_server.removesuffix("/v1"), schedule, slow_s=6.0, client_timeout_s=4.0) as proxy:
        results = run_batch(model.model_copy(update={"base_url": proxy.url}), tmp_path / "cache.sqlite")
    injected = proxy.faults_injected()  # after the proxy closed: a slow answer nobody waits for is counted too

    assert set(injected) == set(DEFAULT_MIX), injected  # the seed exercises every kind of fault
    assert [r.text for r in results] == [r.text for r in clean]
    assert [(r.input_tokens, r.output_tokens) for r in results] == [(r.input_tokens, r.output_tokens) for r in clean]
    assert any(r.attempts > 1 for r in results)
    for request in REQUESTS:
        key = body_key(request_body(model, request))
        # Nothing lost; a request is only paid again when the upstream's answer was lost after it did the work.
        assert 1 <= proxy.paid[key] <= 1 + proxy.lost[key], (proxy.paid[key], proxy.lost[key])


CHILD = """
import json, os, signal, sys
from pathlib import Path
from llamalab.backends.api import ApiModel, ChatClient, ChatRequest

spec = json.loads(sys.argv[1])
done = open(spec["done_file"], "a")

def on_result(index, result):
    done.write(f"{index}\\n")
    done.flush()
    os.fsync(done.fileno())
    if sum(1 for _ in open(spec["done_file"])) == spec["kill_after"]:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind, like a lost machine

client = ChatClient(ApiModel(**spec["model"]), Path(spec["cache"]))
client.complete_many([ChatRequest(**r) for r in spec["requests"]], on_result)
"""


def test_resume_after_kill_pays_nothing_twice(llama_server: str, clean: list[ChatResult], tmp_path: Path) -> None:
    cache, done_file, kill_after = tmp_path / "cache.sqlite", tmp_path / "done.txt", len(REQUESTS) // 2
    # Answers a busy upstream returns after the client's timeout (10 s) are lost and paid again: counted apart.
    with FaultProxy(llama_server.removesuffix("/v1"), client_timeout_s=9.0) as proxy:
        model = api_model(proxy.url)
        spec = {"model": model.model_dump(), "requests": [dataclasses.asdict(r) for r in REQUESTS],
                "cache": str(cache), "done_file": str(done_file), "kill_after": kill_after}
        child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], cwd=ROOT, capture_output=True,
                               text=True, timeout=120)
        assert child.returncode == -9, child.stderr
        finished = [int(line) for line in done_file.read_text().split()]
        assert len(finished) == kill_after

        results = run_batch(model, cache)
    keys = [body_key(request_body(model, r)) for r in REQUESTS]
    paid, lost = {i: proxy.paid[k] for i, k in enumerate(keys)}, {i: proxy.lost[k] for i, k in enumerate(keys)}

    assert all(results[i].cached and results[i].cost_usd == 0 for i in finished)
    assert all(paid[i] == 1 + lost[i] for i in finished)
    # Only requests in flight at the kill can have been paid twice: at most one per concurrent slot.
    assert all(count >= 1 for count in paid.values())
    assert sum(paid.values()) - len(REQUESTS) <= model.max_concurrency + sum(lost.values())
    assert [r.text for r in results] == [r.text for r in clean]


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for value in (None, "  "):
        if value is None:
            monkeypatch.delenv(KEY_ENV)
        else:
            monkeypatch.setenv(KEY_ENV, value)
        with pytest.raises(ApiError, match=f"set {KEY_ENV} in the environment"):
            ChatClient(api_model("http://127.0.0.1:9/v1"), tmp_path / "cache.sqlite")


def test_server_down_fails_in_seconds_naming_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    start = time.monotonic()
    with pytest.raises(ApiError, match=f"cannot reach {url}"):
        run_batch(api_model(url), tmp_path / "cache.sqlite")
    assert time.monotonic() - start < 6


def test_rejected_key_and_unknown_path_fail_at_once(
    llama_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wrong_key = "sk-wrong-0000000000"
    monkeypatch.setenv(KEY_ENV, wrong_key)
    with pytest.raises(ApiError, match=f"HTTP 401.*{KEY_ENV}") as error:
        run_batch(api_model(llama_server), tmp_path / "a.sqlite")
    assert wrong_key not in str(error.value)

    monkeypatch.setenv(KEY_ENV, API_KEY)
    start = time.monotonic()
    with pytest.raises(ApiError, match="HTTP 404"):
        run_batch(api_model(llama_server.replace("/v1", "/nowhere/v1")), tmp_path / "b.sqlite", REQUESTS[:1])
    assert time.monotonic() - start < 3

    # A 401 on the completion itself (the probe passed) is not retried either.
    with FaultProxy(llama_server.removesuffix("/v1"), scripted(["401"])) as proxy:
        with pytest.raises(ApiError, match="HTTP 401: injected 401"):
            run_batch(api_model(proxy.url), tmp_path / "c.sqlite", REQUESTS[:1])
        assert sum(proxy.seen.values()) == 1


def test_broken_responses_are_retried(llama_server: str, clean: list[ChatResult], tmp_path: Path) -> None:
    model = api_model("http://unused")
    faults = [["truncate", "malformed"], ["no_choices", "drop"], ["500", "503"]]
    keys = [body_key(request_body(model, r)) for r in REQUESTS[:3]]
    with FaultProxy(llama_server.removesuffix("/v1"), scripted(dict(zip(keys, faults, strict=True)))) as proxy:
        results = run_batch(model.model_copy(update={"base_url": proxy.url}), tmp_path / "cache.sqlite", REQUESTS[:3])
    assert [r.attempts for r in results] == [3, 3, 3]
    assert [r.text for r in results] == [r.text for r in clean[:3]]
    assert proxy.paid[keys[0]] == 2  # the truncated answer was paid for, and lost


def test_tokens_billed_for_unusable_answers_are_counted(llama_server: str, clean: list[ChatResult],
                                                         tmp_path: Path) -> None:
    """A 200 whose usage says it was billed but whose content is null is asked for again: its tokens are counted as
    retried and priced into the cost, and the cache keeps them with the answer."""
    model = api_model("http://unused")
    key = body_key(request_body(model, REQUESTS[0]))
    with FaultProxy(llama_server.removesuffix("/v1"), scripted({key: ["null_content", "null_content"]})) as proxy:
        proxied = model.model_copy(update={"base_url": proxy.url})
        [result] = run_batch(proxied, tmp_path / "cache.sqlite", REQUESTS[:1])
    assert proxy.paid[key] == 3 and result.attempts == 3 and result.text == clean[0].text
    assert (result.input_tokens, result.output_tokens) == (clean[0].input_tokens, clean[0].output_tokens)
    assert (result.retried_input_tokens, result.retried_output_tokens) == (2 * clean[0].input_tokens,
                                                                          2 * clean[0].output_tokens)
    assert result.cost_usd == pytest.approx(3 * clean[0].cost_usd)
    [again] = run_batch(proxied, tmp_path / "cache.sqlite", REQUESTS[:1])  # the proxy is gone: from the cache
    assert again.cached and again.retried_input_tokens == result.retried_input_tokens


def test_a_content_filters_answer_is_final_not_retried(llama_server: str, clean: list[ChatResult],
                                                      tmp_path: Path) -> None:
    """finish_reason content_filter with no text: the answer is empty and marked (it would fire again on the same
    prompt, each retry billed); it is cached like any answer."""
    model = api_model("http://unused")
    key = body_key(request_body(model, REQUESTS[0]))
    with FaultProxy(llama_server.removesuffix("/v1"), scripted({key: ["filtered"]})) as proxy:
        proxied = model.model_copy(update={"base_url": proxy.url})
        results = run_batch(proxied, tmp_path / "cache.sqlite", REQUESTS[:2])
        assert proxy.paid[key] == 1
    assert (results[0].text, results[0].content_filtered, results[0].attempts) == ("", True, 1)
    assert results[0].cost_usd == pytest.approx(clean[0].cost_usd) and not results[1].content_filtered
    again = run_batch(proxied, tmp_path / "cache.sqlite", REQUESTS[:2])
    assert again[0].cached and again[0].content_filtered and not again[1].content_filtered


@pytest.mark.parametrize("fault", ["filtered_prompt", "filtered_no_usage"])
def test_a_filtered_answer_without_usage_is_final_and_counts_no_tokens(llama_server: str, tmp_path: Path,
                                                                       fault: str) -> None:
    """A prompt the filter refuses (Azure: HTTP 400, code content_filter) or a filtered answer without usage: final
    (a retry would be refused again; a 400 would otherwise stop the whole eval), empty, 0 tokens (nothing says
    more), and cached."""
    model = api_model("http://unused")
    key = body_key(request_body(model, REQUESTS[0]))
    with FaultProxy(llama_server.removesuffix("/v1"), scripted({key: [fault]})) as proxy:
        proxied = model.model_copy(update={"base_url": proxy.url})
        results = run_batch(proxied, tmp_path / "cache.sqlite", REQUESTS[:2])
        assert proxy.seen[key] == 1 and proxy.paid[key] == (fault == "filtered_no_usage")
    first = results[0]
    assert (first.text, first.content_filtered, first.attempts) == ("", True, 1)
    assert (first.input_tokens, first.output_tokens, first.cost_usd) == (0, 0, 0.0)
    assert not results[1].content_filtered and results[1].input_tokens > 0
    again = run_batch(proxied, tmp_path / "cache.sqlite", REQUESTS[:2])
    assert again[0].cached and again[0].content_filtered and again[0].input_tokens == 0


def test_a_cache_made_by_an_older_llamalab_is_read_and_stays_writable_by_it(tmp_path: Path) -> None:
    """The retried tokens and the filter flag live in a table of their own: an older llamalab, which writes five
    values into `responses`, keeps working on a cache this one has opened, and this one reads its answers."""
    import sqlite3

    from llamalab.backends.api import _Cache

    path = tmp_path / "cache.sqlite"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, text TEXT NOT NULL, input_tokens INTEGER NOT NULL, "
                "output_tokens INTEGER NOT NULL, created REAL NOT NULL)")
    old.execute("INSERT INTO responses VALUES ('a', 'old answer', 5, 2, 0)")
    cache = _Cache(path)
    hit = cache.get("a")
    assert (hit.text, hit.input_tokens, hit.retried_input_tokens, hit.content_filtered) == ("old answer", 5, 0, False)
    assert hit.truncated is None  # the old one never kept whether max_tokens cut it: not known, not "no"
    cache.put("b", dataclasses.replace(hit, text="new", retried_input_tokens=7, retried_output_tokens=1))
    old.execute("INSERT OR REPLACE INTO responses VALUES ('c', 'written by the old one', 1, 1, 0)")
    assert cache.get("b").retried_input_tokens == 7 and cache.get("c").text == "written by the old one"
    cache.put("b", dataclasses.replace(hit, text="again"))  # replaced without extras: none left behind
    assert cache.get("b").retried_input_tokens == 0
    for truncated in (True, False, None):
        cache.put("d", dataclasses.replace(hit, truncated=truncated))
        assert cache.get("d").truncated is truncated
    cache.close()
    old.close()


@pytest.mark.parametrize("usage", [{"prompt_tokens": True, "completion_tokens": 3}, {"prompt_tokens": -1,
                                   "completion_tokens": 3}, {"prompt_tokens": 2.5, "completion_tokens": 3}, None])
def test_a_response_without_whole_token_counts_is_retried(usage) -> None:
    """A normal answer without whole token counts is retried (its cost would be unknown)."""
    import httpx

    from llamalab.backends.api import _parse_completion, _Retry

    body = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": usage}
    outcome = _parse_completion(httpx.Response(200, json=body))
    assert isinstance(outcome, _Retry) and "usage" in outcome.reason and outcome.billed is None
    body["usage"] = {"prompt_tokens": 4, "completion_tokens": 3}
    assert _parse_completion(httpx.Response(200, json=body)) == ("hi", 4, 3, False, False, False)
    body["choices"][0]["finish_reason"] = "length"
    assert _parse_completion(httpx.Response(200, json=body))[-1] is True
    del body["choices"][0]["finish_reason"]  # a server that does not say: not known
    assert _parse_completion(httpx.Response(200, json=body))[-1] is None


def test_retry_after_is_honoured(llama_server: str, tmp_path: Path) -> None:
    model = api_model("http://unused")
    keys = [body_key(request_body(model, r)) for r in REQUESTS[:2]]
    schedule = scripted({keys[0]: ["429"], keys[1]: ["429_date"]})
    with FaultProxy(llama_server.removesuffix("/v1"), schedule, retry_after_s=3) as proxy:
        results = run_batch(model.model_copy(update={"base_url": proxy.url}), tmp_path / "cache.sqlite", REQUESTS[:2])
        arrivals = {(key, attempt): at for at, key, attempt, _ in proxy.events}
    assert [r.attempts for r in results] == [2, 2]
    # Jitter alone waits at most 0.5 s before a second attempt: these gaps come from Retry-After.
    assert arrivals[keys[0], 2] - arrivals[keys[0], 1] >= 3.0
    # An HTTP date has whole seconds, so "now + 3 s" leaves more than 2 s.
    assert arrivals[keys[1], 2] - arrivals[keys[1], 1] >= 1.9


def test_gives_up_after_max_retries_with_the_last_reason(llama_server: str, tmp_path: Path) -> None:
    with FaultProxy(llama_server.removesuffix("/v1"), scripted(["503"] * 5)) as proxy:
        with pytest.raises(ApiError, match="failed after 3 attempts; last error: HTTP 503: injected 503"):
            run_batch(api_model(proxy.url, max_retries=2), tmp_path / "cache.sqlite", REQUESTS[:1])
        assert sum(proxy.seen.values()) == 3


def test_adaptive_limit_halves_on_429_and_grows_back() -> None:
    limit = _AdaptiveLimit(8)
    tickets = [limit.acquire() for _ in range(3)]
    limit.release(tickets[0], success=False, throttled=True)
    assert limit.limit == 4
    limit.release(tickets[1], success=False, throttled=True)  # same burst: no second cut
    assert limit.limit == 4
    limit.release(tickets[2], success=True)
    for _ in range(3):
        limit.release(limit.acquire(), success=True)
    assert limit.limit == 5
    for _ in range(4):
        limit.release(limit.acquire(), success=False, throttled=True)
    assert limit.limit == 1


def test_a_key_with_a_line_break_is_refused_without_quoting_it(monkeypatch):
    from llamalab.backends.api import _read_key

    for bad in ("sk-SECRET123\nxyz", "sk-SECRET\t123", "sk-SECRET\u00e9123"):
        monkeypatch.setenv(KEY_ENV, bad)
        with pytest.raises(ApiError, match=f"{KEY_ENV} holds characters an API key cannot have") as caught:
            _read_key(api_model("http://127.0.0.1:9"))
        assert "SECRET" not in str(caught.value)
    monkeypatch.setenv(KEY_ENV, "  sk-fine-123 \n")
    assert _read_key(api_model("http://127.0.0.1:9")) == "sk-fine-123"


def test_a_filtered_answer_that_leaves_content_out_is_final() -> None:
    """Azure: a filtered non-streaming answer may have no content key at all; it is final, not retried."""
    import httpx

    from llamalab.backends.api import _parse_completion

    usage = {"prompt_tokens": 10, "completion_tokens": 0}
    filtered = {"choices": [{"message": {"role": "assistant"}, "finish_reason": "content_filter"}], "usage": usage}
    assert _parse_completion(httpx.Response(200, json=filtered)) == ("", 10, 0, True, False, False)
    stopped = {"choices": [{"message": {"role": "assistant"}, "finish_reason": "stop"}], "usage": usage}
    assert _parse_completion(httpx.Response(200, json=stopped)).billed == (10, 0)  # retried, its tokens counted


@pytest.mark.parametrize("usage", [{"prompt_tokens": 10}, {"prompt_tokens": 10, "completion_tokens": None},
                                   {"completion_tokens": 0, "prompt_tokens": "10"}, None])
def test_a_filtered_answer_with_part_of_its_usage_counts_what_it_reported_and_is_a_lower_bound(tmp_path: Path,
                                                                                                usage) -> None:
    """A filtered answer whose usage lacks a token count keeps the counts it has, and is marked unmetered: in its
    row, in the cache (a hit is still a lower bound), and in the run's count of unmetered answers."""
    import dataclasses

    import httpx

    from llamalab.backends.api import _Cache, _parse_completion
    from llamalab.evaluation.evaluate import _usage

    body = {"choices": [{"message": {"content": ""}, "finish_reason": "content_filter"}], "usage": usage}
    text, tokens_in, tokens_out, filtered, unmetered, _ = _parse_completion(httpx.Response(200, json=body))
    known = usage or {}
    assert (text, filtered, unmetered) == ("", True, True)
    assert tokens_in == (10 if known.get("prompt_tokens") == 10 else 0) and tokens_out == 0
    cache = _Cache(tmp_path / "cache.sqlite")
    result = ChatResult(text, tokens_in, tokens_out, 0.0, 0.1, False, 1, content_filtered=True, unmetered=True)
    cache.put("k", result)
    cache.put("metered", dataclasses.replace(result, input_tokens=10, unmetered=False))
    hit = cache.get("k")
    assert hit.unmetered and (hit.input_tokens, hit.content_filtered) == (tokens_in, True)
    assert not cache.get("metered").unmetered and cache.get("metered").content_filtered
    cache.close()
    rows = [{"input_tokens": tokens_in, "output_tokens": 0, "cost_usd": 0.0, "latency_s": 0.1,
             "content_filtered": True, "unmetered": True},
            {"input_tokens": 10, "output_tokens": 0, "cost_usd": 0.0, "latency_s": 0.1, "content_filtered": True},
            {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "latency_s": 0.1, "content_filtered": True}]
    usage_of = _usage(rows)
    assert (usage_of["content_filtered"], usage_of["content_filtered_unmetered"]) == (3, 2)  # the last: older rows


def test_a_key_echoed_across_the_cut_of_a_long_error_page_leaves_none_of_it(monkeypatch, tmp_path: Path) -> None:
    """A gateway's HTML error page echoing the Authorization header near character 300: the page was cut before
    the key was masked, so the key's first characters reached run.json and the logs."""
    import httpx

    from llamalab.backends.api import ChatClient

    key = "sk-llamalab-test-7f3a9c0e5d"
    monkeypatch.setenv(KEY_ENV, key)
    with ChatClient(api_model("http://127.0.0.1:9/v1"), tmp_path / "cache.sqlite") as client:
        for cut in range(270, 300):
            page = "<html>" + "x" * (cut - 6) + f"authorization=Bearer {key}</html>"
            response = httpx.Response(502, text=page, request=httpx.Request("POST", "http://127.0.0.1:9/v1"))
            message = client._http_error("http://127.0.0.1:9/v1", response)
            assert key[:4] not in message  # not one character past "sk-"


def test_a_trickled_answer_or_a_body_that_does_not_decode_is_retried(llama_server: str, clean: list[ChatResult],
                                                                      tmp_path: Path) -> None:
    """httpx's timeout is per read: an answer sent a byte a second held a request open for ever (no timeout, no
    retry, a frozen progress bar); a gzip body that does not decode escaped as httpx's own error."""
    with FaultProxy(llama_server.removesuffix("/v1"), scripted({
            body_key(request_body(api_model("http://unused"), REQUESTS[0])): ["trickle", None],
            body_key(request_body(api_model("http://unused"), REQUESTS[1])): ["bad_gzip", None]})) as proxy:
        start = time.monotonic()
        results = run_batch(api_model(proxy.url, timeout_s=2.0), tmp_path / "cache.sqlite", REQUESTS[:2])
        assert time.monotonic() - start < 20
    assert [r.text for r in results] == [r.text for r in clean[:2]]
    assert [r.attempts for r in results] == [2, 2]


def test_a_slow_model_listing_does_not_stop_the_evaluation(llama_server: str, clean: list[ChatResult],
                                                          tmp_path: Path) -> None:
    """The check before the requests timed out on a server slow to list its models and stopped everything,
    saying the server could not be reached; reached is enough (the requests have retries)."""
    from llamalab.backends.api import PROBE_TIMEOUT_S

    with FaultProxy(llama_server.removesuffix("/v1"), models_delay_s=PROBE_TIMEOUT_S + 1) as proxy:
        results = run_batch(api_model(proxy.url), tmp_path / "cache.sqlite", REQUESTS[:1])
    assert results[0].text == clean[0].text


def test_a_key_put_where_its_variables_name_goes_is_refused_without_repeating_it(tmp_path: Path) -> None:
    from llamalab.config import LlamalabError, parse_model

    for pasted in ("sk-proj-SECRETSECRET123", "gsk_8fJk2LmNoPqRsTuVwXyZ0123", "hf_abcdefghijklmnop",
                   "a1b2c3d4e5f6a7b8c9d0e1f2"):  # some keys are valid variable names
        with pytest.raises(LlamalabError, match="api_key_env.*NAME of an environment variable") as error:
            parse_model(ApiModel, {"name": "gpt", "base_url": "https://api.example.com/v1", "model": "m",
                                   "api_key_env": pasted}, "lab.yaml")
        assert pasted not in str(error.value)
    assert api_model("http://127.0.0.1:9/v1", api_key_env="OPENAI_API_KEY_2").api_key_env == "OPENAI_API_KEY_2"
