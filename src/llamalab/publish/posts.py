"""`llamalab post new`: draft this week's findings post from the runs recorded since the last post.

The draft lists new systems, the best result per task and what changed since the last post, each number with
its CI and a link to its run folder (`../runs/<id>/`, which works on GitHub and, rewritten, on the site).
A person edits it and commits it.
"""

from __future__ import annotations

import datetime
import re
import subprocess
from pathlib import Path

import yaml

from llamalab.config import LlamalabError
from llamalab.evaluation.compare import earlier_data_note, format_delta, format_interval, format_p
from llamalab.lab import Lab
from llamalab.publish.content import ContentError, load_posts
from llamalab.publish.results import QuantBoard, StudyBoard, TaskBoard, study_boards, task_boards
from llamalab.publish.tables import md_escape
from llamalab.runs.files import write_text_atomic
from llamalab.runs.record import RunRecord, list_runs
from llamalab.runs.schema import EvalRun, TrainRun


def new_post(lab: Lab, title: str, authors: list[str] | None = None, today: datetime.date | None = None) -> Path:
    """Write posts/<date>-<slug>.md (never overwriting) and return its path.

    New runs are the finished runs no earlier post covers: a post lists the runs it covers (`runs:`, which this
    writes); a post that lists none (hand-written, or older) covers the runs that ended by its `runs_until`, or
    before the start of its date in the local time zone.
    """
    if authors is not None and any(not author.strip() for author in authors):
        raise LlamalabError("--author: give a name (an empty one would be written as an author)")
    today = today or datetime.date.today()
    now = datetime.datetime.now(datetime.UTC)
    posts = load_posts(lab.root)
    finished = [r for r in list_runs(lab.runs_dir) if r.run.finished]
    ended = {r.id: _ended(r) for r in finished}
    listed = {run for p in posts if p.runs is not None for run in p.runs}
    fallback = max((_cutoff(p, now) for p in posts if p.runs is None), default=None)
    new = [r for r in finished if r.id not in listed and (fallback is None or ended[r.id] > fallback)]
    since = max((_cutoff(p, now) for p in posts), default=None)  # what the last post covered runs until
    new_ids = {r.id for r in new}
    old_ids = {r.id for r in finished} - new_ids
    now_boards = task_boards(lab)
    # what the last post could show: its evaluations as they were, also those made before a task's data changed
    before = {b.name: b for b in task_boards(lab, only=old_ids, current_only=False)} if old_ids else {}

    body = [_opening(new, since, ended)]
    changed_tasks = [b for b in now_boards if any(row.run in new_ids for row in b.rows)]
    for board in changed_tasks:
        body.append(_task_section(board, before.get(board.name), new_ids))
    if studies := [b for b in study_boards(lab) if new_ids & set(b.runs)]:
        body.append("## Studies\n\n" + "\n".join(_study_line(b) for b in studies) + "\n")
    if trained := [r for r in new if isinstance(r.run, TrainRun)]:
        body.append("## Training runs\n\n" + "\n".join(_train_line(r) for r in trained) + "\n")
    if dev := [r for r in new if isinstance(r.run, EvalRun) and r.run.task.split != "test"]:
        body.append("## Selection on dev (not test results)\n\n" + "\n".join(_dev_line(r) for r in dev) + "\n")
    body.append("## Next\n\n- (what we try next week)\n")

    until = max([*ended.values(), *([since] if since else [])], default=None)
    front = {
        "title": title, "date": today.isoformat(), "authors": authors or _default_authors(lab),
        "tags": ["weekly", *sorted({b.name for b in changed_tasks})],
        "summary": _summary(changed_tasks, new),
        "runs_until": until.isoformat(timespec="milliseconds") if until else "",
    }
    runs = yaml.safe_dump({"runs": sorted(new_ids)}, default_flow_style=None, width=116)  # one compact list
    path = _free_path(lab.root / "posts", f"{today.isoformat()}-{_slug(title)}")
    text = "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + runs + "---\n\n" + "\n".join(body)
    write_text_atomic(path, text)
    return path


def _ended(record: RunRecord) -> datetime.datetime:
    """When a finished run ended (its start, where no end is recorded), in UTC."""
    key, value = ("ended", record.run.ended) if record.run.ended else ("started", record.run.started)
    time = datetime.datetime.fromisoformat(value)  # validated when read
    if time.tzinfo is None:
        raise LlamalabError(f"{record.folder / 'run.json'}: '{key}: {value}' has no time zone, so it cannot be "
                            f"placed against the posts: add its UTC offset, like '{value}+00:00' for UTC")
    return time.astimezone(datetime.UTC)


def _cutoff(post, now: datetime.datetime) -> datetime.datetime:
    """The time up to which a post covers runs: its `runs_until`, or the start of its date where it was written (a
    local date, read in this machine's time zone); never later than now (a clock ahead, a mistyped date)."""
    if not post.runs_until:
        start = datetime.datetime.combine(post.date, datetime.time()).astimezone()  # naive: local time
        return min(start.astimezone(datetime.UTC), now)
    shown = f"{post.source.parent.name}/{post.source.name}"
    try:
        time = datetime.datetime.fromisoformat(post.runs_until.strip())
    except ValueError:
        time = None
    if time is None or time.tzinfo is None:
        raise ContentError(f"{shown}: 'runs_until: {post.runs_until}' is not a time with its time zone: write it "
                           "quoted with its UTC offset, like runs_until: '2026-11-29T18:46:00+00:00'")
    return min(time.astimezone(datetime.UTC), now)


def _opening(new: list[RunRecord], since: datetime.datetime | None, ended: dict[str, datetime.datetime]) -> str:
    """The post's first sentence: how many runs are new, and (where the last post covered runs until a time) which
    of them finished after it and which finished by then but were recorded late."""
    kinds = {k: sum(1 for r in new if r.run.kind == k) for k in ("train", "eval")}
    counted = f"{kinds['train']} training run(s) and {kinds['eval']} evaluation(s)"
    if since is None:
        when, late = "so far", []
    else:
        since = since.replace(second=0, microsecond=0)  # shown to the minute: a run after it finished since it
        when = f"since {since:%Y-%m-%d %H:%M} UTC"
        late = [r for r in new if ended[r.id] <= since]
    if not new:
        return f"No new runs {when}.\n"
    if late:
        counted += (f" are in no earlier post: {len(new) - len(late)} finished {when}, and {len(late)} finished by "
                    "then but were recorded late")
    else:
        counted += f" finished {when}"
    return (f"{counted}. Every number below comes from the run records: a metric is shown with its 95% confidence "
            "interval in brackets, Δ is a difference from the best system on the examples both saw, with its "
            "Holm-corrected p-value; follow the links for the predictions.\n")


def _task_section(board: TaskBoard, before: TaskBoard | None, new_ids: set[str]) -> str:
    metric, best = board.metric, board.rows[0]
    lines = [f"## {md_escape(board.name)}\n",
             f"- **Best on {metric}:** {md_escape(best.system)}, {format_interval(best.metrics[metric])} "
             f"(n = {best.n:,}) — [run](../runs/{best.run}/)"]
    if before is not None:
        old = before.rows[0]
        hashes = {e.record.id: e.run.task.data_sha256 for e in [*before.entries, *board.entries]}
        data_changed = bool(hashes[old.run] and hashes[best.run]) and hashes[old.run] != hashes[best.run]
        if old.run == best.run:
            lines.append("- **What changed:** the best system is unchanged since the last post.")
        else:
            earlier = " (evaluated before the task's data changed)" if data_changed else ""
            lines.append(f"- **What changed:** the best was {md_escape(old.system)}, "
                         f"{format_interval(old.metrics[metric])}{earlier} — [run](../runs/{old.run}/)")
    else:
        lines.append("- **What changed:** first results on this task.")
    for row in board.rows:
        if row.run in new_ids:
            vs = row.vs_reference
            test = "the best system" if vs is None else (
                f"Δ {format_delta(vs)} vs best, p {_p(vs.p_holm)} ({vs.test}, Holm)"
                if vs.delta is not None else f"not tested against the best ({vs.test.removeprefix('none: ')})")
            lines.append(f"- New: {md_escape(row.system)}, {metric} {format_interval(row.metrics[metric])}; {test} "
                         f"— [run](../runs/{row.run}/)")
    if note := earlier_data_note(board.comparison):
        lines.append(f"- {md_escape(note)}")
    return "\n".join(lines) + "\n"


def _p(value: float) -> str:
    text = format_p(value)
    return text.replace("<", "< ") if text.startswith("<") else f"= {text}"


def _train_line(record: RunRecord) -> str:
    run = record.run
    assert isinstance(run, TrainRun)
    loss = f"loss {run.metrics.first_loss:.3f} → {run.metrics.final_loss:.3f} over {run.metrics.steps} steps" \
        if run.metrics else "no loss recorded"
    rate = run.throughput.get("tokens_per_s")
    speed = f", {rate:,.0f} tokens/s" if rate else ""
    return f"- {md_escape(run.name)} on {md_escape(run.task.name)}: {loss}{speed} — [run](../runs/{record.id}/)"


def _study_line(board: StudyBoard | QuantBoard) -> str:
    return (f"- {md_escape(board.name)} ({board.study.spec.kind}): {md_escape(board.summary())} — "
            f"[study](../studies/{board.name}.yaml)")  # the study file on GitHub, its page on the site


def _dev_line(record: RunRecord) -> str:
    run = record.run
    assert isinstance(run, EvalRun)
    metric, m = next(iter(run.metrics.items()), (None, None))
    value = f"{metric} {format_interval(m)}" if m else "no metrics"
    return (f"- {md_escape(run.task.name)} / {run.task.split}: {md_escape(run.system.label)} "
            f"({run.prompt.format if run.prompt else None}, {run.shots}-shot): {value} — [run](../runs/{record.id}/)")


def _summary(boards: list[TaskBoard], new: list[RunRecord]) -> str:
    if not boards:
        return f"{len(new)} new run(s); no new test results."
    parts = [f"{b.name}: best {b.metric} {b.rows[0].metrics[b.metric].estimate:.3f} ({b.rows[0].system})"
             for b in boards]
    return "; ".join(parts) + "."


def _default_authors(lab: Lab) -> list[str]:
    try:
        name = subprocess.run(["git", "config", "user.name"], cwd=lab.root, capture_output=True, text=True,
                              timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        name = ""
    if name:
        return [name]
    return [lab.config.members[0].name] if lab.config.members else []


def _slug(title: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.casefold()).strip("-")[:60].strip("-")
    if not slug:
        raise LlamalabError(f"title {title!r} has no letters or digits to name the post file by")
    return slug


def _free_path(folder: Path, stem: str) -> Path:
    path, n = folder / f"{stem}.md", 2
    while path.exists():
        path, n = folder / f"{stem}-{n}.md", n + 1
    return path
