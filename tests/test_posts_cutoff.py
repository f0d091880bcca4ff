"""Which runs a weekly post covers: each `post new` lists the runs it covers (`runs:`), the next one has every
finished run no earlier post covers (also one recorded late, that ended before the last post), a post that lists
no runs covers those that ended before its `runs_until` or the start of its date in the local time zone, and the
opening sentence's counts and times are those of the runs listed."""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import re
import time

import pytest
import yaml

from llamalab.config import LlamalabError
from llamalab.lab import init_lab
from llamalab.publish.content import load_posts
from llamalab.publish.posts import new_post
from llamalab.runs.record import RunRecord, list_runs
from tests.records import sentiment_eval, train_fields

UTC = datetime.UTC
SINCE = re.compile(r"finished since (\d{4}-\d\d-\d\d \d\d:\d\d) UTC")


@contextlib.contextmanager
def zone(name: str):
    """This process's local time zone is `name` inside the block."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def front(path) -> dict:
    return yaml.safe_load(path.read_text().split("---\n")[1])


def opening(path) -> str:
    return path.read_text().split("---\n", 2)[2].lstrip("\n").split("\n")[0]


def at(when: datetime.datetime) -> str:
    return when.isoformat(timespec="milliseconds")


def evaluation(lab, ended: datetime.datetime | None = None, label: str = "alpha") -> RunRecord:
    """A finished test evaluation; `ended` moves its start and end (a run made elsewhere, copied in later)."""
    record = sentiment_eval(lab, label, [True, False, True, True])
    if ended is not None:
        record.update(started=at(ended - datetime.timedelta(minutes=5)), ended=at(ended))
    return record


def training(lab, ended: datetime.datetime) -> RunRecord:
    record = RunRecord.create(lab.runs_dir, "train", "lora", {"lr": 1e-4}, **train_fields())
    record.update(status="finished", started=at(ended - datetime.timedelta(minutes=5)), ended=at(ended))
    return record


def hand_written(lab, date: datetime.date, extra: str = "") -> None:
    (lab.root / "posts" / f"{date.isoformat()}-notes.md").write_text(
        f"---\ntitle: Notes\ndate: {date.isoformat()}\n{extra}---\nWritten by hand.\n")


def clear_posts(lab) -> None:
    for path in (lab.root / "posts").glob("*.md"):
        path.unlink()


def test_a_lab_made_east_of_utc_has_every_run_in_its_first_post(tmp_path):
    """Kiritimati is UTC+14: from 10:00 UTC its date is tomorrow's, whose UTC midnight is in the future."""
    before = datetime.datetime.now(UTC)
    with zone("Pacific/Kiritimati"):
        lab = init_lab(tmp_path / "lab")
        [welcome] = load_posts(lab.root)
        assert welcome.date == datetime.date.today() and welcome.runs == []
        made = datetime.datetime.fromisoformat(welcome.runs_until)
        assert made.tzinfo is not None and before - datetime.timedelta(milliseconds=1) <= made
        assert made <= datetime.datetime.now(UTC)
        copied = evaluation(lab, ended=before - datetime.timedelta(days=2))  # finished elsewhere, copied in
        fresh = evaluation(lab, label="beta")
        path = new_post(lab, "Week one", ["A"])
    assert front(path)["runs"] == sorted([copied.id, fresh.id])
    since = f"{made:%Y-%m-%d %H:%M} UTC"
    assert opening(path).startswith(f"0 training run(s) and 2 evaluation(s) are in no earlier post: 1 finished since "
                                    f"{since}, and 1 finished by then but were recorded late. ")


@pytest.mark.parametrize(("name", "covered_hour", "new_hour"), [
    ("Etc/GMT-14", 9, 12),  # UTC+14: 2025-03-10 starts at 2025-03-09 10:00 UTC
    ("Etc/GMT+10", 29, 35),  # UTC-10: 2025-03-10 starts at 2025-03-10 10:00 UTC
])
def test_a_post_without_runs_until_covers_runs_before_the_start_of_its_local_date(lab, name, covered_hour, new_hour):
    clear_posts(lab)
    hand_written(lab, datetime.date(2025, 3, 10))
    day_before = datetime.datetime(2025, 3, 9, tzinfo=UTC)
    evaluation(lab, ended=day_before + datetime.timedelta(hours=covered_hour))  # before the post's date began
    after = evaluation(lab, ended=day_before + datetime.timedelta(hours=new_hour), label="beta")
    with zone(name):
        path = new_post(lab, "Week", ["A"], today=datetime.date(2025, 3, 17))
        start = datetime.datetime(2025, 3, 10).astimezone().astimezone(UTC)
    assert front(path)["runs"] == [after.id]
    shown = f"{start:%Y-%m-%d %H:%M} UTC"
    assert opening(path).startswith(f"0 training run(s) and 1 evaluation(s) finished since {shown}. ")


def test_a_cutoff_is_never_later_than_now(lab):
    """A post whose `runs_until` is in the future (written on a machine whose clock runs ahead) covers at most the
    runs that have ended, and the next post names no time still to come."""
    clear_posts(lab)
    ahead = datetime.datetime.now(UTC) + datetime.timedelta(days=2)
    hand_written(lab, datetime.date.today(), f"runs_until: '{at(ahead)}'\n")
    evaluation(lab)
    text = opening(new_post(lab, "Week", ["A"]))
    shown = datetime.datetime.strptime(re.search(r"since (.*) UTC", text)[1], "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    assert shown <= datetime.datetime.now(UTC)


def test_a_run_recorded_after_a_post_that_ended_before_it_is_in_the_next_post(lab):
    first_runs = [evaluation(lab), evaluation(lab, label="beta")]
    week_one = new_post(lab, "Week one", ["A"])
    covered = front(week_one)
    assert covered["runs"] == sorted(r.id for r in first_runs)
    assert "runs: [" in week_one.read_text()  # one compact line
    # a colleague's run, pulled through git: it ended before the post's runs_until
    until = datetime.datetime.fromisoformat(covered["runs_until"])
    late = evaluation(lab, ended=until - datetime.timedelta(hours=3), label="gamma")
    week_two = new_post(lab, "Week two", ["A"])
    assert front(week_two)["runs"] == [late.id]
    assert opening(week_two).startswith(
        f"0 training run(s) and 1 evaluation(s) are in no earlier post: 0 finished since {until:%Y-%m-%d %H:%M} UTC, "
        "and 1 finished by then but were recorded late. ")
    assert f"runs/{late.id}/" in week_two.read_text()
    week_three = new_post(lab, "Week three", ["A"])
    assert front(week_three)["runs"] == [] and opening(week_three).startswith("No new runs since ")


def test_a_post_that_lists_its_runs_covers_exactly_those(lab):
    """A post listing runs covers those, whatever its `runs_until` says; the others are new."""
    a, b = evaluation(lab), evaluation(lab, label="beta")
    hand_written(lab, datetime.date.today(), f"runs_until: '{at(datetime.datetime.now(UTC))}'\nruns: [{a.id}]\n")
    path = new_post(lab, "Week", ["A"])
    assert front(path)["runs"] == [b.id]
    assert "- New: beta [plain]" in path.read_text() and "- New: alpha" not in path.read_text()


def test_a_runs_until_without_a_time_zone_is_refused_naming_the_post(lab):
    hand_written(lab, datetime.date(2025, 3, 10), "runs_until: '2025-03-10T12:00:00'\n")
    with pytest.raises(LlamalabError, match=r"posts/2025-03-10-notes.md: 'runs_until: 2025-03-10T12:00:00' .*UTC "
                                            r"offset"):
        new_post(lab, "Week", ["A"])


def test_a_run_ended_without_a_time_zone_is_refused_naming_its_record(lab):
    record = evaluation(lab)
    record.update(ended="2025-03-10T12:00:00")
    with pytest.raises(LlamalabError, match=rf"{record.id}/run.json: 'ended: 2025-03-10T12:00:00' has no time zone"):
        new_post(lab, "Week", ["A"])


ZONES = ["UTC", "Pacific/Kiritimati", "Asia/Kolkata", "America/Los_Angeles", "Etc/GMT+12"]


@pytest.mark.parametrize("seed", range(10))
def test_every_finished_run_is_in_exactly_one_post_and_each_post_counts_its_runs(lab, seed):
    """Random runs (train and eval, some running for a while, ending at random times: late, early, out of order)
    and random posts, in a random time zone, optionally after a hand-written post that lists no runs. After a last
    post, every finished run is in exactly one post's covered set; each post's counts are its listed runs'."""
    rng = random.Random(seed)
    base = datetime.datetime(2025, 6, 1, tzinfo=UTC)
    clear_posts(lab)
    written, running = [], []
    with zone(rng.choice(ZONES)):
        hand_cutoff = None
        if rng.random() < 0.6:
            day = base.date() + datetime.timedelta(days=rng.randint(-2, 2))
            hand_written(lab, day)
            hand_cutoff = datetime.datetime.combine(day, datetime.time()).astimezone().astimezone(UTC)
        for step in range(rng.randint(4, 10)):
            ended = base + datetime.timedelta(hours=rng.uniform(-96, 240))
            roll = rng.random()
            if roll < 0.35:
                evaluation(lab, ended=ended, label=rng.choice(["alpha", "beta", "gamma"]))
            elif roll < 0.5:
                training(lab, ended)
            elif roll < 0.6:
                running.append(RunRecord.create(lab.runs_dir, "train", "slow", {}, **train_fields()))
            elif roll < 0.7 and running:
                running.pop(rng.randrange(len(running))).update(status="finished", ended=at(ended))
            else:
                written.append(new_post(lab, f"Week {step}", ["A"], today=base.date() + datetime.timedelta(days=step)))
        written.append(new_post(lab, "Last", ["A"], today=base.date() + datetime.timedelta(days=30)))

    finished = {r.id: r for r in list_runs(lab.runs_dir) if r.run.finished}
    ended = {i: datetime.datetime.fromisoformat(r.run.ended) for i, r in finished.items()}
    listed = [front(path)["runs"] for path in written]
    for run in finished:
        holders = sum(run in runs for runs in listed)
        by_hand = hand_cutoff is not None and ended[run] <= hand_cutoff
        assert holders + by_hand == 1, run
    assert all(run in finished for runs in listed for run in runs)
    for path, runs in zip(written, listed, strict=True):
        text, summary = opening(path), front(path)["summary"]
        kinds = [finished[run].run.kind for run in runs]
        if not runs:
            assert text.startswith("No new runs")
            continue
        assert text.startswith(f"{kinds.count('train')} training run(s) and {kinds.count('eval')} evaluation(s) ")
        if m := re.match(r"(\d+) new run\(s\)", summary):
            assert int(m[1]) == len(runs)
        if since := SINCE.search(text):
            shown = datetime.datetime.strptime(since[1], "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
            after = sum(ended[run] > shown for run in runs)
            if late := re.search(r"are in no earlier post: (\d+) finished since .* and (\d+) finished by then", text):
                assert (int(late[1]), int(late[2])) == (after, len(runs) - after)
            else:
                assert after == len(runs)
        else:
            assert "so far" in text
