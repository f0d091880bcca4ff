"""A real HTTP proxy in front of an OpenAI-compatible server that injects faults and counts paid requests.

Faults are chosen per chat completion by a schedule `(body_key, attempt) -> fault | None`, where `attempt` counts
the proxy's sightings of that exact request body (1, 2, ...): decisions do not depend on thread timing, so a
seeded run is reproducible. Requests forwarded to the upstream server are "paid" and counted per body key.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

Schedule = Callable[[str, int], str | None]

# Faults answered by the proxy itself (the upstream never sees, nor bills, the request)...
LOCAL_FAULTS = ("429", "429_date", "500", "503", "drop", "malformed", "no_choices", "401", "404")
# ...and faults that happen after the upstream has done (and billed) the work.
# null_content: billed, with usage, but no text (retried); filtered: the same, ended by a content filter (final);
# filtered_no_usage: that without usage; filtered_prompt: Azure's 400 for a prompt its filter refuses (final).
PAID_FAULTS = ("slow", "truncate", "null_content", "filtered")
DEFAULT_MIX = ("429", "500", "503", "drop", "malformed", "no_choices", "slow", "truncate")


def body_key(body: dict) -> str:
    """The key the proxy counts a request under: sha256 of its canonical JSON body."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seeded_faults(probability: float, seed: int, faults: Iterable[str] = DEFAULT_MIX, clean_after: int = 3) -> Schedule:
    """Each of the first `clean_after` attempts of a request fails with `probability`; later attempts pass."""
    kinds = list(faults)

    def schedule(key: str, attempt: int) -> str | None:
        rng = random.Random(f"{seed}:{key}:{attempt}")
        if attempt > clean_after or rng.random() >= probability:
            return None
        return rng.choice(kinds)

    return schedule


def scripted(faults: list[str | None] | dict[str, list[str | None]]) -> Schedule:
    """Attempt n of a request gets faults[n-1] (a list for every request, or one per body key); later ones pass."""

    def schedule(key: str, attempt: int) -> str | None:
        plan = faults.get(key, []) if isinstance(faults, dict) else faults
        return plan[attempt - 1] if attempt <= len(plan) else None

    return schedule


class FaultProxy:
    """Serves on 127.0.0.1 (a free port) and forwards to `upstream` (e.g. http://127.0.0.1:8080)."""

    def __init__(self, upstream: str, schedule: Schedule | None = None, retry_after_s: int = 1,
                 slow_s: float = 5.0, client_timeout_s: float | None = None, models_delay_s: float = 0.0) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.schedule = schedule or (lambda key, attempt: None)
        self.retry_after_s = retry_after_s
        self.slow_s = slow_s
        self.client_timeout_s = client_timeout_s  # answers slower than this count as lost (the client gave up)
        self.models_delay_s = models_delay_s  # GET /models answers this late (a slow listing, the server reached)
        self.paid: Counter[str] = Counter()  # body key -> requests forwarded to the upstream
        self.lost: Counter[str] = Counter()  # body key -> paid answers the client never got in full
        self.seen: Counter[str] = Counter()  # body key -> chat completion requests received
        self.events: list[tuple[float, str, int, str | None]] = []  # (monotonic time, key, attempt, fault)
        self.filtered_s: list[float] = []  # seconds from request in to answer out, for each content-filter answer
        self.lock = threading.Lock()
        self.in_flight = 0  # chat requests being handled
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The base URL a client should use (with /v1)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def faults_injected(self) -> Counter[str]:
        """How many times each fault was injected."""
        with self.lock:
            return Counter(fault for _, _, _, fault in self.events if fault)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        # A handler may still be at work for a client that gave up (a slow answer): its counts are final only
        # once it is done.
        deadline = time.monotonic() + 60
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)

    def answer_lost(self, key: str) -> None:
        with self.lock:
            self.lost[key] += 1

    def next_attempt(self, key: str) -> tuple[int, str | None]:
        """Record one more sighting of a request body and pick its fault."""
        with self.lock:
            self.seen[key] += 1
            attempt = self.seen[key]
        fault = self.schedule(key, attempt)
        with self.lock:
            self.events.append((time.monotonic(), key, attempt, fault))
        return attempt, fault

    def forward(self, method: str, path: str, body: bytes, headers: dict[str, str],
                key: str | None) -> tuple[int, dict[str, str], bytes]:
        """Send the request upstream and return (status, headers worth relaying, body)."""
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=300)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            if key is not None:
                with self.lock:
                    self.paid[key] += 1
            response = conn.getresponse()
            data = response.read()
            relay = {k: v for k, v in response.getheaders() if k.lower() in ("content-type", "retry-after")}
            return response.status, relay, data
        finally:
            conn.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real API: dropped connections hit pooled sockets too

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class names it so
        """Keep test output quiet."""

    @property
    def proxy(self) -> FaultProxy:
        return self.server.proxy  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        if self.path.endswith("/models"):
            time.sleep(self.proxy.models_delay_s)
        self._reply(*self.proxy.forward("GET", self.path, b"", self._upstream_headers(), None))

    def do_POST(self) -> None:
        with self.proxy.lock:
            self.proxy.in_flight += 1
        try:
            self._post()
        finally:
            with self.proxy.lock:
                self.proxy.in_flight -= 1

    def _post(self) -> None:
        started = time.monotonic()  # as soon as the request is in: the client's clock started no later
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not self.path.endswith("/chat/completions"):
            self._reply(*self.proxy.forward("POST", self.path, body, self._upstream_headers(), None))
            return
        key = body_key(json.loads(body))
        _, fault = self.proxy.next_attempt(key)
        if fault in ("429", "429_date"):
            seconds = self.proxy.retry_after_s
            retry_after = str(seconds) if fault == "429" else formatdate(time.time() + seconds, usegmt=True)
            self._reply_json(429, {"error": {"message": "rate limited (injected)"}}, {"Retry-After": retry_after})
        elif fault in ("500", "503", "401", "404"):
            self._reply_json(int(fault), {"error": {"message": f"injected {fault}"}})
        elif fault == "drop":
            self.close_connection = True  # close the socket without a byte of response
        elif fault == "malformed":
            self._reply(200, {"Content-Type": "application/json"}, b'{"id": "x", "choices": [{"message": {"con')
        elif fault == "no_choices":
            self._reply_json(200, {"id": "x", "object": "chat.completion", "choices": [], "usage": {}})
        elif fault == "slow":
            time.sleep(self.proxy.slow_s)  # the client has timed out by now, but the upstream still does the work
            self._reply(*self.proxy.forward("POST", self.path, body, self._upstream_headers(), key))
            self.proxy.answer_lost(key)
        elif fault == "trickle":  # the whole answer, one byte a second: never a read timeout, never done in time
            status, headers, data = self.proxy.forward("POST", self.path, body, self._upstream_headers(), key)
            self.proxy.answer_lost(key)
            try:
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(name, value)
                self.end_headers()
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(1.0)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
        elif fault == "bad_gzip":  # a 200 whose body its Content-Encoding cannot decode
            self._reply(200, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, b"not gzip at all")
        elif fault == "truncate":
            status, headers, data = self.proxy.forward("POST", self.path, body, self._upstream_headers(), key)
            self._reply(status, headers, data, send=len(data) // 2)
            self.close_connection = True
            self.proxy.answer_lost(key)
        elif fault == "filtered_prompt":  # Azure OpenAI's answer when its filter refuses the prompt: nothing billed
            self._reply_json(400, {"error": {"message": "The response was filtered (injected)", "type": None,
                                             "param": "prompt", "code": "content_filter", "status": 400}})
        elif fault == "filtered_no_usage":
            status, headers, data = self.proxy.forward("POST", self.path, body, self._upstream_headers(), key)
            answer = json.loads(data)
            answer["choices"][0].update(message={**answer["choices"][0]["message"], "content": None},
                                        finish_reason="content_filter")
            del answer["usage"]
            self._reply_json(status, answer)
        elif fault in ("null_content", "filtered"):
            status, headers, data = self.proxy.forward("POST", self.path, body, self._upstream_headers(), key)
            answer = json.loads(data)
            answer["choices"][0]["message"]["content"] = None
            if fault == "filtered":
                answer["choices"][0]["finish_reason"] = "content_filter"
                with self.proxy.lock:  # a busy upstream can outlast the client's timeout: then it never sees this
                    self.proxy.filtered_s.append(time.monotonic() - started)
            else:
                self.proxy.answer_lost(key)
            self._reply_json(status, answer)
        elif fault is None:
            reply = self.proxy.forward("POST", self.path, body, self._upstream_headers(), key)
            # A busy upstream can outlast the client's timeout on its own: that answer is paid and lost too.
            if self.proxy.client_timeout_s is not None and time.monotonic() - started >= self.proxy.client_timeout_s:
                self.proxy.answer_lost(key)
            self._reply(*reply)
        else:
            raise ValueError(f"unknown fault {fault!r}")

    def _upstream_headers(self) -> dict[str, str]:
        headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
        if self.headers.get("Authorization"):
            headers["Authorization"] = self.headers["Authorization"]
        return headers

    def _reply_json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        self._reply(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode())

    def _reply(self, status: int, headers: dict[str, str], data: bytes, send: int | None = None) -> None:
        """Answer with the full Content-Length of `data`, but only its first `send` bytes when given."""
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data if send is None else data[:send])
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (timed out) first
