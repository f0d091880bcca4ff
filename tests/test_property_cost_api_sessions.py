"""Property tests: the time and cost per 1,000 examples of API evaluations, run end to end through `evaluate()`.

The API's network part (`ChatClient._run`, `_probe`) and the clock `evaluate` reads are replaced by scripted
fakes; everything else is llamalab's own: the request cache (SQLite), the per-row cost at list prices
(`backends/chat.py`), each row's share of its batch's time, `--resume` after a kill, the run record, and
`compare`'s table. Each random case evaluates an API model over 1 to 4 sessions (each but the last killed by
Ctrl-C mid-request, the run then sitting dead for hours), sometimes after a `--limit` check whose requests the
cache then answers, with random token counts, retried tokens, prices and request times.

Expected figures come from the README's definitions, computed exactly (fractions) from the scripted inputs:

- time per 1k examples: the evaluation's wall time (the work of every session, once; never the time a killed
  run sat dead, nor a request lost in flight at the kill, which is done again) x 1000 / the examples the API
  answered (answers from the request cache left out: their time is a file read; none answered: "–");
- cost per 1k examples: the list-price cost of every example (tokens used and tokens of retried answers, at
  lab.yaml's prices; a cached answer costs what it cost to get) x 1000 / the examples evaluated; an API model
  lab.yaml gives no prices shows "–", never $0 and never a local-compute estimate;
- examples/s (the run's `throughput`): those examples over that same wall time.

Shown values must be the correctly rounded exact value (whole seconds from 10 s, tenths below; dollars to 4
decimals), except where the exact value lies within the precision llamalab stores its raw data at (a row's
seconds to 1e-6 s, a row's cost to 1e-8 USD) of a rounding boundary: there either neighbour is accepted.
"""

from __future__ import annotations

import io
import re
import types
from fractions import Fraction

import numpy as np
import pytest
from rich.console import Console

from llamalab.backends.api import ChatClient, ChatResult
from llamalab.evaluation import evaluate as evaluate_module
from llamalab.evaluation.compare import compare, comparison_table
from llamalab.evaluation.evaluate import evaluate
from llamalab.lab import find_lab
from llamalab.runs.files import read_jsonl

KEY_ENV = "LLAMALAB_PROPERTY_COST_KEY"


class Clock:
    """The clock `evaluate` reads: it moves only when a scripted request takes time, or a run sits dead."""

    def __init__(self) -> None:
        self.t = Fraction(1_000_000)

    def perf_counter(self) -> float:
        return float(self.t)


class Killed(KeyboardInterrupt):
    """Ctrl-C during a request: the run is marked interrupted and `--resume` continues it."""


class FakeApi:
    """What the API server would answer: for each request (by cache key), fixed token counts and text; each
    request sent takes a random time. `allowed` requests may finish in this session, then the next is killed."""

    def __init__(self, rng: np.random.Generator, clock: Clock) -> None:
        self.rng, self.clock = rng, clock
        self.answers: dict[str, tuple[str, int, int, int, int]] = {}
        self.allowed: int | None = None  # None: no kill this session
        self.work = Fraction(0)  # time of the requests whose answers were delivered
        self.sent = 0

    def answer(self, key: str) -> tuple[str, int, int, int, int]:
        if key not in self.answers:
            rng = self.rng
            retried = rng.random() < 0.15
            self.answers[key] = (str(rng.choice(["positive", "negative", "Positive.", "neutral?"])),
                                 int(rng.integers(1, 4000)), int(rng.integers(0, 300)),
                                 int(rng.integers(1, 4000)) if retried else 0,
                                 int(rng.integers(0, 300)) if retried else 0)
        return self.answers[key]

    def duration(self) -> Fraction:
        # milliseconds to minutes, as a request to a real API may take (queueing, retries with backoff)
        return Fraction(int(self.rng.integers(1, 10**7)), 10**5) if self.rng.random() < 0.9 else \
            Fraction(int(self.rng.integers(1, 10**6)), 10**6)

    def run(self, client: ChatClient, pending, by_key, requests, deliver) -> None:
        for key in pending:
            if self.allowed is not None and self.allowed <= 0:
                self.clock.t += self.duration()  # the request in flight when the run is killed: lost
                raise Killed()
            d = self.duration()
            self.clock.t += d
            text, tokens_in, tokens_out, retried_in, retried_out = self.answer(key)
            result = ChatResult(text=text, input_tokens=tokens_in, output_tokens=tokens_out,
                                cost_usd=client._cost(tokens_in + retried_in, tokens_out + retried_out),
                                latency_s=float(d), cached=False, attempts=2 if retried_in else 1,
                                retried_input_tokens=retried_in, retried_output_tokens=retried_out)
            client._cache.put(key, result)
            self.work += d
            self.sent += 1
            if self.allowed is not None:
                self.allowed -= 1
            deliver(by_key[key], result)


def api_lab(lab, prices: tuple[str, str], local_rate: str | None):
    """The example lab with one API model (`fakeapi`) at these prices and this local compute rate."""
    config = lab.root / "lab.yaml"
    text = re.sub(r"(?m)^local_compute_usd_per_hour:.*$", f"local_compute_usd_per_hour: {local_rate or 'null'}",
                  config.read_text())
    text += ("api_models:\n  fakeapi:\n    base_url: http://127.0.0.1:9/v1\n    model: fake-model\n"
             f"    api_key_env: {KEY_ENV}\n    input_price_per_mtok: {prices[0]}\n"
             f"    output_price_per_mtok: {prices[1]}\n    max_concurrency: 1\n")
    config.write_text(text)
    return find_lab(lab.root)


def install_fakes(monkeypatch, tmp_path, rng) -> tuple[Clock, FakeApi]:
    clock = Clock()
    api = FakeApi(rng, clock)
    monkeypatch.setenv(KEY_ENV, "sk-test")
    monkeypatch.setenv("LLAMALAB_API_CACHE", str(tmp_path / "api-cache.sqlite"))
    monkeypatch.setattr(evaluate_module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(ChatClient, "_probe", lambda self: None)
    monkeypatch.setattr(ChatClient, "_run", lambda self, *args: api.run(self, *args))
    return clock, api


def quiet() -> Console:
    return Console(file=io.StringIO(), width=300)


def rounded_choices(exact: Fraction, slack: Fraction, digits_for) -> set[str]:
    """The correct rounding of `exact`, and of any value within `slack` of it (the raw data's own precision)."""
    return {digits_for(exact - slack), digits_for(exact), digits_for(exact + slack)}


def _float(value: Fraction | None) -> float | None:
    return None if value is None else float(value)


def seconds_text(value: Fraction) -> str:
    """format_seconds' documented rule on an exact value: whole seconds from 10 s, tenths below (half up)."""
    if value >= 10:
        return f"{int((value + Fraction(1, 2)) // 1):,} s"
    tenths = int((value * 10 + Fraction(1, 2)) // 1)
    return f"{tenths // 10}.{tenths % 10} s"


def cost_text(value: Fraction) -> str:
    """format_cost's documented rule on an exact value: dollars to 4 decimals, `<$0.0001` for a cost that would
    read $0.0000 but is not zero."""
    if 0 < value < Fraction(1, 20000):
        return "<$0.0001"
    units = int((value * 10**4 + Fraction(1, 2)) // 1)
    return f"${units // 10**4}.{units % 10**4:04d}"


def rate_text(value: Fraction) -> set[float]:
    return {round(float(value), 2)}


def run_sessions(lab, api: FakeApi, clock: Clock, rng, limit: int, sessions: int) -> tuple:
    """Evaluate `fakeapi` with `--limit limit` in up to `sessions` sessions (each but the last killed after a
    random number of requests, then dead for a while; a session whose requests all finish ends the run). Returns
    (record, the wall time of the work, the sessions run)."""
    api.work = Fraction(0)
    for session in range(sessions):
        last = session == sessions - 1
        api.allowed = None if last else int(rng.integers(0, max(limit // sessions, 1) + 1))
        try:
            record = evaluate(lab, "fakeapi", task="sentiment", limit=limit, resume=session > 0, console=quiet())
        except Killed:
            assert not last
            clock.t += Fraction(int(rng.integers(60, 10**6)))  # the killed run sits dead until resumed
            continue
        clock.t += Fraction(int(rng.integers(60, 10**6)))  # the next command starts later
        return record, api.work, session + 1
    raise AssertionError("unreachable")


@pytest.mark.parametrize("seed", range(16))
def test_api_time_and_cost_per_1k_over_killed_and_resumed_sessions(lab, tmp_path, monkeypatch, seed):
    rng = np.random.default_rng(seed)
    priced = rng.random() < 0.8
    prices = (f"{rng.uniform(0, 20):.3f}", f"{rng.uniform(0.01, 80):.3f}") if priced else ("0", "0")
    local_rate = f"{rng.uniform(0.01, 5):.3f}" if rng.random() < 0.6 else None
    lab = api_lab(lab, prices, local_rate)
    clock, api = install_fakes(monkeypatch, tmp_path, rng)

    limit = int(rng.integers(3, 90))
    if rng.random() < 0.4:  # a quick --limit check first: its answers are in the cache for the full evaluation
        check = evaluate(lab, "fakeapi", task="sentiment", limit=int(rng.integers(1, limit + 1)), console=quiet())
        assert check.run.finished
    sessions = int(rng.integers(1, 5))
    record, work, sessions = run_sessions(lab, api, clock, rng, limit, sessions)

    run = record.run
    assert run.finished and len(run.resumed) == sessions - 1
    n = run.task.n
    assert n == limit
    rows = read_jsonl(record.folder / "predictions.jsonl")
    assert len({r["id"] for r in rows}) == n

    # --- the documented figures, exactly -------------------------------------------------------------------------
    # time per 1k is over the examples the API answered in this evaluation: answers from the request cache (an
    # earlier --limit check's) took a file read, not the API's time
    answered = sum(1 for r in rows if not r.get("cached"))
    seconds_1k = 1000 * work / answered if answered else None
    if answered < n:  # the methods sentence says why the time covers only some examples: not a kill
        from llamalab.publish.methods import _untimed

        assert run.timings["predict_examples"] == answered
        assert _untimed(run).startswith("answered from the API request cache"), _untimed(run)
    p_in, p_out = Fraction(prices[0]), Fraction(prices[1])
    billed = sum(((r["input_tokens"] + r["retried_input_tokens"]) * p_in
                  + (r["output_tokens"] + r["retried_output_tokens"]) * p_out) / 10**6 for r in rows)
    cost_1k = 1000 * billed / n
    # the tokens the rows carry are the API's answers (also for cache hits: the cache kept them)
    for r in rows:
        assert any((r["input_tokens"], r["output_tokens"], r["retried_input_tokens"], r["retried_output_tokens"])
                   == a[1:] for a in api.answers.values())
    time_slack = Fraction(1000 * len(rows), 2 * 10**6) / max(answered, 1)  # each row's seconds are stored to 1e-6 s
    cost_slack = Fraction(1000 * len(rows), 2 * 10**8) / n + Fraction(1, 2 * 10**6)  # rows to 1e-8 $, per 1k to 1e-6

    # --- what the record and every table show -------------------------------------------------------------------
    result = compare(lab, "sentiment")
    [row] = [r for r in result.systems if r.run == record.id]
    assert row.n == n
    shown_time = rounded_choices(seconds_1k, time_slack, seconds_text) if answered else {"–"}
    from llamalab.evaluation.compare import format_cost, format_seconds

    got_seconds = format_seconds(row.seconds_per_1k)
    context = (f"seed {seed}: n={n}, sessions={sessions}, work={float(work)!r} s, exact {_float(seconds_1k)!r} s/1k, "
               f"recorded predict_s={run.timings.get('predict_s')!r}, predict_examples="
               f"{run.timings.get('predict_examples')!r}")
    assert got_seconds in shown_time, f"time per 1k shown {got_seconds}, expected {sorted(shown_time)}; {context}"
    if priced:
        got_cost = format_cost(row.cost_per_1k_usd, row.cost_basis)
        expected_cost = rounded_choices(cost_1k, cost_slack, cost_text)
        assert got_cost in expected_cost, f"cost per 1k shown {got_cost}, expected {sorted(expected_cost)}; {context}"
        assert row.cost_basis == "API list prices"
    else:  # no prices in lab.yaml: unknown, not free, and not a local estimate either
        assert row.cost_per_1k_usd is None and format_cost(row.cost_per_1k_usd, row.cost_basis) == "–"

    rate = run.throughput.get("examples_per_s")
    exact_rate = answered / work if answered else None
    allowed = ({round(float(answered / (work + s)), 2) for s in (-time_slack * answered / 1000, 0,
                                                                  time_slack * answered / 1000)}
               if answered else {None})
    assert rate in allowed, f"examples_per_s {rate}, expected {sorted(allowed)} (exact {_float(exact_rate)}); {context}"

    # the CLI's table shows the same cells as the comparison it prints
    console = Console(record=True, width=400, file=io.StringIO())
    console.print(comparison_table(result))
    [line] = [ln for ln in console.export_text().splitlines() if ln.count("│") > 2 and "fakeapi" in ln]
    cells = [c.strip() for c in line.split("│")[1:-1]]
    assert cells[-2:] == [format_cost(row.cost_per_1k_usd, row.cost_basis), got_seconds]


@pytest.mark.parametrize("seed", range(8))
def test_a_fully_cached_rerun_costs_the_same_per_1k_and_times_only_its_own_work(lab, tmp_path, monkeypatch, seed):
    """A second evaluation (not a resume) of the same requests is answered by the cache: its cost per 1k at list
    prices is the first's, to the last digit shown; its wall time is the (near-zero) time it took itself, not the
    first evaluation's, and never negative or the dead time in between."""
    rng = np.random.default_rng(1000 + seed)
    prices = (f"{rng.uniform(0.01, 20):.3f}", f"{rng.uniform(0.01, 80):.3f}")
    lab = api_lab(lab, prices, None)
    clock, api = install_fakes(monkeypatch, tmp_path, rng)
    limit = int(rng.integers(2, 60))
    first, _, _ = run_sessions(lab, api, clock, rng, limit, int(rng.integers(1, 4)))
    sent = api.sent
    second = evaluate(lab, "fakeapi", task="sentiment", limit=limit, console=quiet())
    assert second.id != first.id and api.sent == sent  # nothing sent again
    assert second.run.usage.cache_hits == limit and second.run.usage.paid_now_usd == 0
    assert second.run.usage.cost_per_1k_examples_usd == pytest.approx(first.run.usage.cost_per_1k_examples_usd,
                                                                      abs=1e-6)
    from llamalab.evaluation.compare import cost_and_time, format_cost

    a, b = cost_and_time(first), cost_and_time(second)
    assert format_cost(a["cost_per_1k_usd"], a["cost_basis"]) == format_cost(b["cost_per_1k_usd"], b["cost_basis"])
    # the cache answered at once (the fake clock did not move): no time of its own to state, never the first run's
    assert b["seconds_per_1k"] is None
