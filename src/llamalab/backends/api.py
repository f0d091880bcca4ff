"""A client for OpenAI-compatible chat completion APIs: retries, adaptive concurrency and a persistent cache.

An eval against a paid API can run for hours: a dropped connection, a 429 storm or a killed process must
neither lose results nor pay twice for them, and a wrong URL or missing key must fail in seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import Field, field_validator, model_validator

from llamalab.config import KeyProblem, LlamalabError, StrictModel

if TYPE_CHECKING:  # imported where used: lab.py reads ApiModel on every CLI start, which must not pay for httpx
    import httpx

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
# A server asking for a longer pause than this is treated as asking for this long, so a bogus header can't stall us.
RETRY_AFTER_CAP_S = 300.0
RETRYABLE_STATUS = {408, 429}


class ApiModel(StrictModel):
    """An industry model behind an OpenAI-compatible chat API: an entry of `api_models:` in lab.yaml.

    The key is never stored, here or anywhere: `api_key_env` names the environment variable it is read from.
    """

    name: str = Field(description="how the lab names it: its key under api_models (filled in from there)")
    base_url: str = Field(description="the API root, e.g. https://api.openai.com/v1")
    model: str = Field(description="the model id sent in each request")
    api_key_env: str | None = Field(None, description="NAME of the environment variable holding the key")
    input_price_per_mtok: float = Field(0.0, ge=0, description="USD per million input tokens")
    output_price_per_mtok: float = Field(0.0, ge=0, description="USD per million output tokens")
    max_concurrency: int = Field(8, ge=1, description="most requests in flight at once")
    timeout_s: float = Field(60.0, gt=0, description="seconds to wait for one response")
    max_retries: int = Field(8, ge=0, description="retries of a failed request before giving up")

    @model_validator(mode="after")
    def _key_variable(self) -> ApiModel:
        """A key pasted where its variable's name goes is refused without being repeated (the error would carry it
        into logs, study failure notes and CI output)."""
        if self.api_key_env is not None and _looks_like_a_key(self.api_key_env):
            raise KeyProblem("api_key_env", "must be the NAME of an environment variable (letters, digits and _, "
                             "e.g. OPENAI_API_KEY), not the key itself: set the key in that variable")
        return self

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value)
            host, _ = parts.hostname, parts.port  # a bad port raises too
        except ValueError as exc:
            raise ValueError(f"is not a URL ({exc})") from None
        if not host:
            raise ValueError("names no host: e.g. https://api.openai.com/v1")
        return value


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request."""

    messages: list[dict[str, str]]
    max_tokens: int = 64
    temperature: float = 0.0
    stop: list[str] | None = None


@dataclass(frozen=True)
class ChatResult:
    """The outcome of one request; `cached` results were paid for in an earlier run and cost 0 now.

    `retried_*_tokens`: what earlier attempts of the request cost and could not be used (a 200 whose body had usage
    but no text); `cost_usd` includes them, and the cache keeps them with the answer (a cache hit's example costs, at
    list prices, what it cost to get). `content_filtered`: the provider's content filter ended the answer
    (`finish_reason: content_filter`) or refused the prompt (HTTP 400, error code content_filter); its text,
    possibly empty, is the answer, not retried (a filter fires again on the same prompt). Such an answer without
    usage, or with only some of its token counts, counts the tokens it was sent and is `unmetered`: its cost here
    is a lower bound."""

    text: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_s: float
    cached: bool
    attempts: int
    retried_input_tokens: int = 0
    retried_output_tokens: int = 0
    content_filtered: bool = False
    unmetered: bool = False  # a filtered answer the provider sent no (or not all) token counts for
    # `finish_reason: length`, the max_tokens budget spent; None where not known (no finish_reason, or a cache entry
    # written before this was kept)
    truncated: bool | None = None


class ApiError(LlamalabError):
    """An API call failed in a way the user must fix (config, key, server) or retries could not overcome;
    `request` is the failed request's position in its batch (its message says "request N"), None for the client."""

    def __init__(self, message: str, request: int | None = None):
        super().__init__(message)
        self.request = request


def request_body(model: ApiModel, request: ChatRequest) -> dict[str, Any]:
    """The JSON body sent for `request`: the same request always gives the same body."""
    body: dict[str, Any] = {
        "model": model.model,
        "messages": request.messages,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
    }
    if request.stop is not None:
        body["stop"] = request.stop
    return body


def cache_key(model: ApiModel, request: ChatRequest) -> str:
    """The persistent cache key: everything that determines the response, and nothing secret."""
    identity = {
        "base_url": model.base_url.rstrip("/"),
        "model": model.model,
        "messages": request.messages,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "stop": request.stop,
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or unparsable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)


class ChatClient:
    """Sends batches of chat requests to one API model, caching every success at `cache_path` (sqlite)."""

    def __init__(self, model: ApiModel, cache_path: Path) -> None:
        import httpx

        self.model = model
        self._base = model.base_url.rstrip("/")
        self._key = _read_key(model)
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(model.timeout_s, connect=min(model.timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=model.max_concurrency, max_keepalive_connections=model.max_concurrency),
        )
        self._cache = _Cache(cache_path)
        self._limit = _AdaptiveLimit(model.max_concurrency)

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the HTTP connections and the cache database."""
        self._http.close()
        self._cache.close()

    def complete_many(
        self, requests: list[ChatRequest], on_result: Callable[[int, ChatResult], None] | None = None
    ) -> list[ChatResult]:
        """Complete every request (cache first, then the API), in input order.

        `on_result(index, result)` is called from the calling thread as each result is ready, after the result
        is committed to the cache. Identical requests in one batch are sent once. The first error that retries
        cannot fix stops the batch and is raised as ApiError; everything finished before it stays cached.
        """
        keys = [cache_key(self.model, r) for r in requests]
        for index, request in enumerate(requests):
            _check_request(index, request)
        by_key: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            by_key.setdefault(key, []).append(index)
        results: list[ChatResult | None] = [None] * len(requests)

        def deliver(indices: list[int], result: ChatResult) -> None:
            for n, index in enumerate(indices):
                # Later duplicates in the batch reuse the first one's response: free, like a cache hit.
                results[index] = result if n == 0 else _as_cached(result)
                if on_result is not None:
                    on_result(index, results[index])

        pending: list[str] = []
        for key, indices in by_key.items():
            hit = self._cache.get(key)
            if hit is None:
                pending.append(key)
            else:
                deliver(indices, hit)
        if pending:
            self._probe()
            self._run(pending, by_key, requests, deliver)
        return cast(list[ChatResult], results)

    def _run(
        self,
        pending: list[str],
        by_key: dict[str, list[int]],
        requests: list[ChatRequest],
        deliver: Callable[[list[int], ChatResult], None],
    ) -> None:
        stop = threading.Event()
        executor = ThreadPoolExecutor(max_workers=min(self.model.max_concurrency, len(pending)))
        futures: dict[Future[ChatResult], str] = {}
        try:
            for key in pending:
                first = by_key[key][0]
                futures[executor.submit(self._fetch, first, key, requests[first], stop)] = key
            for future in as_completed(futures):
                deliver(by_key[futures[future]], future.result())
        finally:
            # On any error (or Ctrl-C) the other workers stop before their next attempt; responses already
            # in flight still land in the cache, so a rerun pays for none of them again.
            stop.set()
            executor.shutdown(wait=True, cancel_futures=True)

    def _probe(self) -> None:
        """Fail in seconds, not after hours of retries, when the server is unreachable or rejects the key."""
        import httpx

        url = f"{self._base}/models"
        try:
            response = self._http.get(url, timeout=PROBE_TIMEOUT_S)
        except httpx.ReadTimeout:  # reached, but slow to list its models: the requests themselves have retries
            log.warning("%s: %s did not list its models within %d s; sending the requests anyway", self.model.name,
                        url, PROBE_TIMEOUT_S)
            return
        except httpx.TransportError as exc:
            raise ApiError(
                f"api model {self.model.name!r}: cannot reach {self.model.base_url} ({_describe(exc)}); "
                "is the server running and base_url right?"
            ) from None
        if response.status_code in (401, 403):
            raise ApiError(self._http_error(url, response))

    def _fetch(self, index: int, key: str, request: ChatRequest, stop: threading.Event) -> ChatResult:
        """Send one request until it succeeds, retrying what a retry can fix; cache the success."""
        url = f"{self._base}/chat/completions"
        body = request_body(self.model, request)
        billed = [0, 0]  # tokens of attempts that came back with usage but could not be used
        for attempt in range(1, self.model.max_retries + 2):
            ticket = self._limit.acquire()
            outcome: ChatResult | _Retry | None = None
            try:
                if stop.is_set():
                    raise ApiError(f"request {index}: batch stopped", index)
                outcome = self._attempt(index, url, body, attempt)
            finally:
                throttled = isinstance(outcome, _Retry) and outcome.throttled
                self._limit.release(ticket, success=isinstance(outcome, ChatResult), throttled=throttled)
            if isinstance(outcome, ChatResult):
                cost = self._cost(outcome.input_tokens + billed[0], outcome.output_tokens + billed[1])
                result = replace(outcome, retried_input_tokens=billed[0], retried_output_tokens=billed[1],
                                 cost_usd=cost)
                self._cache.put(key, result)
                return result
            if outcome.billed is not None:
                billed = [billed[0] + outcome.billed[0], billed[1] + outcome.billed[1]]
            if attempt > self.model.max_retries:
                break
            # Full jitter spreads retries of many workers apart; the server's Retry-After is a floor.
            delay = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))
            if outcome.retry_after is not None:
                delay = max(delay, outcome.retry_after)
            # seen on the console (no handler is set: Python prints warnings) once waiting is worth a word
            (log.warning if attempt > 1 or delay >= 10 else log.info)(
                "%s request %d: %s; retry %d in %.1fs", self.model.name, index, outcome.reason, attempt, delay)
            if stop.wait(delay):
                raise ApiError(f"request {index}: batch stopped", index)
        spent = f" ({billed[0]:,} input and {billed[1]:,} output tokens were billed for unusable answers)" if any(
            billed) else ""
        raise ApiError(
            f"api model {self.model.name!r}: request {index} to {url} failed after "
            f"{self.model.max_retries + 1} attempts{spent}; last error: {outcome.reason}", index
        )

    def _attempt(self, index: int, url: str, body: dict[str, Any], attempt: int) -> ChatResult | _Retry:
        """One HTTP attempt: a result, a retryable failure, or ApiError for what no retry can fix."""
        import httpx

        start = time.monotonic()
        try:
            response = self._post(url, body, start + self.model.timeout_s)
        except (httpx.TransportError, httpx.DecodingError) as exc:
            return _Retry(self._redact(_describe(exc)))
        if response is None:
            return _Retry(f"no complete answer within timeout_s ({self.model.timeout_s:g} s)")
        latency = time.monotonic() - start
        status = response.status_code
        if status == 200:
            parsed = _parse_completion(response)
            if isinstance(parsed, _Retry):
                return parsed
            text, input_tokens, output_tokens, filtered, unmetered, truncated = parsed
            return ChatResult(text=text, input_tokens=input_tokens, output_tokens=output_tokens,
                              cost_usd=self._cost(input_tokens, output_tokens), latency_s=latency, cached=False,
                              attempts=attempt, content_filtered=filtered, unmetered=unmetered, truncated=truncated)
        if status == 400 and _prompt_filtered(response):
            # Azure's content filter refusing the prompt: as final as a filtered answer, and with no usage
            return ChatResult(text="", input_tokens=0, output_tokens=0, cost_usd=0.0, latency_s=latency,
                              cached=False, attempts=attempt, content_filtered=True, unmetered=True)
        if status in RETRYABLE_STATUS or status >= 500:
            reason = self._redact(f"HTTP {status}: {_server_message(response, self._redact)}")
            return _Retry(reason, parse_retry_after(response.headers.get("retry-after")), throttled=status == 429)
        raise ApiError(f"request {index}: {self._http_error(url, response)}", index)

    def _post(self, url: str, body: dict[str, Any], deadline: float) -> httpx.Response | None:
        """The response, read in full by `deadline` (None past it): httpx's timeout is per read, so a server
        trickling bytes (or keep-alive whitespace) held a request open for ever."""
        import httpx

        with self._http.stream("POST", url, json=body) as streamed:
            raw = []
            for chunk in streamed.iter_raw():
                raw.append(chunk)
                if time.monotonic() > deadline:
                    return None
            response = httpx.Response(streamed.status_code, headers=streamed.headers, content=b"".join(raw),
                                      request=streamed.request)
            response.read()  # decoded as the headers say (gzip, ...): a damaged body raises DecodingError here
            return response

    def _cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.model.input_price_per_mtok + output_tokens * self.model.output_price_per_mtok) / 1e6

    def _http_error(self, url: str, response: httpx.Response) -> str:
        message = f"{url} answered HTTP {response.status_code}: {_server_message(response, self._redact)}"
        if response.status_code in (401, 403):
            source = f"${self.model.api_key_env}" if self.model.api_key_env else "api_key_env (none is set)"
            message += f" (check the API key in {source})"
        return self._redact(message)

    def _redact(self, text: str) -> str:
        # Some servers echo the key they rejected; it must never reach a log or an error message.
        return text.replace(self._key, "***") if self._key else text


@dataclass(frozen=True)
class _Retry:
    """A failed attempt that a retry may fix."""

    reason: str
    retry_after: float | None = None
    throttled: bool = False
    billed: tuple[int, int] | None = None  # (input, output) tokens the server's usage says this attempt cost


class _AdaptiveLimit:
    """AIMD concurrency limit: halve on 429, grow by one after a run of `limit` successes, up to the maximum."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = maximum
        self._in_flight = 0
        self._successes = 0
        self._epoch = 0
        self._cond = threading.Condition()

    def acquire(self) -> int:
        """Wait for a free slot; the returned ticket says which limit epoch the request was sent in."""
        with self._cond:
            self._cond.wait_for(lambda: self._in_flight < self.limit)
            self._in_flight += 1
            return self._epoch

    def release(self, ticket: int, success: bool, throttled: bool = False) -> None:
        """Free a slot and adapt the limit to the outcome."""
        with self._cond:
            self._in_flight -= 1
            if throttled:
                self._successes = 0
                # A burst of 429s answers requests sent under one limit: cut once for it, not once per 429.
                if ticket == self._epoch:
                    self.limit = max(1, self.limit // 2)
                    self._epoch += 1
                    log.info("throttled: concurrency limit now %d", self.limit)
            elif success:
                self._successes += 1
                if self._successes >= self.limit and self.limit < self.maximum:
                    self.limit += 1
                    self._successes = 0
            self._cond.notify_all()


class _Cache:
    """Successful responses in sqlite (WAL): safe for threads and processes, each row committed at once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            # timeout: another process writing the same cache makes us wait, not fail.
            self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
                "input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, created REAL NOT NULL)"
            )
            # What a response cost besides itself, and whether a content filter cut it: a table of its own, so that
            # an older llamalab sharing the cache still reads and writes `responses` as it always has.
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS response_extras (key TEXT PRIMARY KEY, retried_input_tokens INTEGER NOT "
                "NULL, retried_output_tokens INTEGER NOT NULL, content_filtered INTEGER NOT NULL)"
            )
            # Whether max_tokens cut the answer (1) or not (0); no row: not known (written before this table)
            self._db.execute("CREATE TABLE IF NOT EXISTS response_truncated (key TEXT PRIMARY KEY, truncated "
                             "INTEGER NOT NULL)")
        except sqlite3.Error as exc:
            raise ApiError(f"{path}: cannot open the API response cache ({exc})") from None

    def get(self, key: str) -> ChatResult | None:
        with self._lock:
            row = self._db.execute(
                "SELECT r.text, r.input_tokens, r.output_tokens, e.retried_input_tokens, e.retried_output_tokens, "
                "e.content_filtered, t.truncated FROM responses r LEFT JOIN response_extras e ON e.key = r.key "
                "LEFT JOIN response_truncated t ON t.key = r.key WHERE r.key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        # content_filtered: 0 no, 1 yes, 2 yes and unmetered (1 with 0 input tokens: unmetered, as stored before 2)
        filtered = row[5] or 0
        return ChatResult(text=row[0], input_tokens=row[1], output_tokens=row[2], cost_usd=0.0, latency_s=0.0,
                          cached=True, attempts=0, retried_input_tokens=row[3] or 0, retried_output_tokens=row[4] or 0,
                          content_filtered=bool(filtered), unmetered=filtered == 2 or (filtered == 1 and not row[1]),
                          truncated=None if row[6] is None else bool(row[6]))

    def put(self, key: str, result: ChatResult) -> None:
        filtered = (2 if result.unmetered else 1) if result.content_filtered else 0
        extras = (result.retried_input_tokens, result.retried_output_tokens, filtered)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # the response and its extras land together or not at all
            try:
                self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                                 (key, result.text, result.input_tokens, result.output_tokens, time.time()))
                if any(extras):
                    self._db.execute("INSERT OR REPLACE INTO response_extras VALUES (?, ?, ?, ?)", (key, *extras))
                else:
                    self._db.execute("DELETE FROM response_extras WHERE key = ?", (key,))
                if result.truncated is None:
                    self._db.execute("DELETE FROM response_truncated WHERE key = ?", (key,))
                else:
                    self._db.execute("INSERT OR REPLACE INTO response_truncated VALUES (?, ?)",
                                     (key, int(result.truncated)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()


_KEY_PREFIXES = ("sk-", "sk_", "gsk_", "hf_", "AIza", "xai-", "pk-", "key-", "ghp_", "github_pat_")


def _looks_like_a_key(name: str) -> bool:
    """Not an environment variable's name, or shaped like a key (a provider's prefix; long, mixing lower case and
    digits), which a variable's name never is in practice."""
    return (not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name.startswith(_KEY_PREFIXES)
            or (len(name) >= 20 and any(c.islower() for c in name) and any(c.isdigit() for c in name)))


def _read_key(model: ApiModel) -> str | None:
    if model.api_key_env is None:
        return None
    key = os.environ.get(model.api_key_env, "").strip()
    if not key:
        raise ApiError(
            f"api model {model.name!r} needs an API key: set {model.api_key_env} in the environment "
            f"(lab.yaml names the variable, never the key itself)"
        )
    if not key.isascii() or not key.isprintable():
        # a line break or control character pasted with it: the HTTP library's error would quote the header, key
        # and all, into the run's error message and record
        raise ApiError(f"{model.api_key_env} holds characters an API key cannot have (a line break or other "
                       "control character, or non-ASCII): set it to the key alone")
    return key


def _check_request(index: int, request: ChatRequest) -> None:
    ok = isinstance(request.messages, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in request.messages
    )
    if not ok or not request.messages:
        raise ApiError(f"request {index}: messages must be a non-empty list of {{'role': str, 'content': str}}",
                       index)


def _parse_completion(response: httpx.Response) -> tuple[str, int, int, bool, bool, bool | None] | _Retry:
    """(text, input tokens, output tokens, cut by a content filter, token counts missing, cut by max_tokens or None
    where the response has no finish_reason) from a 200 response, or why it can't be used (a retryable problem)
    with the tokens its usage says were billed all the same."""
    try:
        data = response.json()
    except ValueError:
        return _Retry(f"malformed JSON in the response body ({len(response.content)} bytes)")
    usage = data.get("usage") if isinstance(data, dict) else None
    tokens = [usage.get(k) for k in ("prompt_tokens", "completion_tokens")] if isinstance(usage, dict) else []
    billed = (tokens[0], tokens[1]) if tokens and all(_count(t) for t in tokens) else None
    try:
        choice = data["choices"][0]
        finish = choice.get("finish_reason") if isinstance(choice, dict) else None
        filtered = finish == "content_filter"
        # a filtered answer may leave the content out altogether (Azure: "no content")
        text = choice["message"].get("content") if filtered else choice["message"]["content"]
    except (KeyError, IndexError, TypeError, AttributeError):
        return _Retry("response lacks choices[0].message.content", billed=billed)
    if filtered and text is None:
        text = ""  # the filter's answer: nothing (scored as unparsed, so wrong)
    if not isinstance(text, str):
        return _Retry(f"response content is {type(text).__name__}, not text", billed=billed)
    if billed is None:
        if filtered:  # final all the same: count the tokens it did report (usage.content_filtered_unmetered)
            known = [t if _count(t) else 0 for t in tokens] or [0, 0]
            return text, known[0], known[1], True, True, False
        return _Retry("response lacks usage.prompt_tokens and usage.completion_tokens as whole numbers")
    truncated = finish == "length" if isinstance(finish, str) and finish else None
    return text, billed[0], billed[1], filtered, False, truncated


def _prompt_filtered(response: httpx.Response) -> bool:
    """A 400 whose error says a content filter refused the prompt (Azure OpenAI: error.code content_filter)."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(error, dict) and error.get("code") == "content_filter"


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _server_message(response: httpx.Response, redact) -> str:
    """The server's own words on a failed request; a body that is not JSON is cut to 300 characters, after
    `redact` (a key echoed across the cut would otherwise leave its first characters in the message)."""
    try:
        data = response.json()
    except ValueError:
        data = None
    message = None
    if isinstance(data, dict):
        # OpenAI puts it in error.message; FastAPI-based servers (llama.cpp's Python server) in detail.
        error = data.get("error") or data.get("detail")
        message = error.get("message") if isinstance(error, dict) else error
    return str(message or redact(response.text)[:300] or response.reason_phrase).strip()


def _describe(exc: httpx.TransportError) -> str:
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return f"connection error ({type(exc).__name__}: {exc})"


def _as_cached(result: ChatResult) -> ChatResult:
    return replace(result, cost_usd=0.0, latency_s=0.0, cached=True, attempts=0)
