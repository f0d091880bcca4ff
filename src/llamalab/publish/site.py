"""`llamalab site build|serve`: the lab website, a static site generated from the lab folder and its records.

Every page links relatively (`../tasks/x/index.html`, never `/tasks/x/`), so the same files work opened from
the file system and served under any sub-path, such as a GitHub Pages project site. Every piece of text from a
user, a dataset or a model goes through Jinja's autoescaping, and raw HTML in Markdown is disabled; a
Content-Security-Policy forbids inline scripts as a second line of defence.

The examples of any built assignment's hidden test are left out of everything that shows examples (a run's
predictions.jsonl copy, the example-by-example pages), whether or not the assignment is public: the site is.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import jinja2
from pydantic import BaseModel

from llamalab.assignments.publish import HiddenTest, hidden_tests, public_assignments
from llamalab.config import LlamalabError
from llamalab.evaluation.compare import (
    TIME_NOTE,
    comparison_warnings,
    earlier_data_note,
    format_delta,
    format_interval,
    format_p,
    interval_note,
    latest_evals,
    n_range,
    tests_run,
)
from llamalab.lab import Lab
from llamalab.publish import content, figures
from llamalab.publish.results import (
    QuantBoard,
    StudyBoard,
    SweepBoard,
    TaskBoard,
    load_tasks,
    loss_history,
    relative_run_path,
    scaling_points,
    study_boards,
    task_boards,
)
from llamalab.publish.tables import (
    cost_note,
    format_cost,
    format_seconds,
    quant_caption,
    quant_cells,
    study_caption,
    study_cells,
    sweep_caption,
    sweep_cells,
)
from llamalab.runs.files import staged_folder, write_text_atomic
from llamalab.runs.record import CONFIG_FILE, PREDICTIONS, RUN_FILE, TRAIN_LOG, RunRecord, list_runs
from llamalab.tasks.checks import check_task_data
from llamalab.tasks.data import load_task_data
from llamalab.tasks.task import NAME, NAME_RULE, Task, suggested_name

NAV = [("index.html", "Home"), ("tasks/index.html", "Tasks"), ("runs/index.html", "Runs"),
       ("posts/index.html", "Posts"), ("projects/index.html", "Projects"), ("people.html", "People"),
       ("publications.html", "Publications")]
_RUN_FILES = (RUN_FILE, CONFIG_FILE, "metrics.json", PREDICTIONS, TRAIN_LOG, "chat_template.jinja")
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.I)


SITE_MARKER = ".llamalab-site"  # in every built site: a folder holding it may be replaced by the next build


def build_site(lab: Lab, out: Path | None = None) -> Path:
    """Generate the whole site into `out` (default: <lab>/site), replacing a previous build only when done.

    A build replaces its folder whole, so `out` must be new, empty, or a site built before (one holding
    SITE_MARKER): a `docs/` of notes, or the lab's `data/`, is never replaced."""
    target = (out or lab.root / "site").resolve()
    default = target == (lab.root / "site").resolve()
    if lab.root.resolve().is_relative_to(target):
        raise LlamalabError(f"--out {out}: the site cannot replace the folder the lab is in; choose a new folder")
    built_before = (target / SITE_MARKER).is_file() or all(  # a build from before the marker, by its layout
        (target / part).exists() for part in ("index.html", "tasks", "runs", "posts"))
    if target.is_file() or (target.is_dir() and not default and not built_before and any(target.iterdir())):
        raise LlamalabError(f"--out {out}: {target} holds files a site build did not make, and a build replaces "
                            "its folder whole: choose a new or empty folder (or delete that one)")
    _check_page_names(lab.root)
    with staged_folder(target) as staging:
        _Builder(lab, staging).build()
        _redact_secrets(lab, staging)
        (staging / SITE_MARKER).write_text("built by `llamalab site build`: the next build replaces this folder\n")
    return target


def _check_page_names(root: Path) -> None:
    """A post's or a project's file name is its page's (posts/NAME.md is posts/NAME.html): refuse one that would
    replace its section's list of pages (index) or break the links to it."""
    for folder in ("posts", "projects"):
        for path in sorted((root / folder).glob("*.md")):
            if path.name.startswith(".") or not path.is_file():  # as content.load_posts and load_projects skip
                continue
            stem = path.stem
            if stem.casefold() == "index":
                raise LlamalabError(f"{folder}/{path.name}: its page would be {folder}/{stem}.html, the list of all "
                                    f"{folder}, and replace it: rename the file, e.g. to "
                                    f"{folder}/{folder[:-1]}-index.md")
            if not NAME.fullmatch(stem):
                valid = suggested_name(stem, f"my-{folder[:-1]}")
                raise LlamalabError(f"{folder}/{path.name}: its file name is its page's address on the site "
                                    f"({folder}/{stem}.html), which it would break: rename the file to "
                                    f"{folder}/{valid}.md ({NAME_RULE})")


def _pretty_json(value: Any) -> str:
    """A record part as indented JSON, with exactly the keys its run.json has."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_unset=True)
    return json.dumps(value, indent=2, sort_keys=True, default=str)


class _Builder:
    def __init__(self, lab: Lab, out: Path):
        self.lab, self.out = lab, out
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("llamalab.publish", "templates"),
            autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True,
        )
        self.env.filters.update(interval=format_interval, p=format_p, cost=format_cost, seconds=format_seconds,
                                tojson_pretty=_pretty_json,
                                safe_url=safe_url, cost_note=cost_note, interval_note=interval_note,
                                delta=format_delta, prediction_warnings=comparison_warnings, n_range=n_range,
                                count="{:,}".format, earlier_data_note=earlier_data_note,
                                tests_run=tests_run)
        self.env.globals["time_note"] = TIME_NOTE

    def build(self) -> None:
        lab = self.lab
        self.assignments = public_assignments(lab)  # the handouts staff chose to publish
        self.hidden = hidden_tests(lab)  # by task: examples that assignments grade on, never published
        self.nav = NAV + [("assignments/index.html", "Assignments")] if self.assignments else NAV
        self.posts = content.load_posts(lab.root)
        self.tasks = load_tasks(lab)
        self.boards = {b.name: b for b in task_boards(lab)}
        self.runs = [r for r in list_runs(lab.runs_dir) if r.run.finished]
        self.run_ids = {r.id for r in self.runs}
        self.trained = {r.id: r for r in self.runs if r.run.kind == "train"}
        shutil.copytree(Path(__file__).parent / "static", self.out / "assets")

        self.page("index.html", "home.html", "Home", boards=list(self.boards.values()), posts=self.posts[:3],
                  tasks=self.tasks)
        self.page("people.html", "people.html", "People", people=content.load_people(lab.root),
                  members=lab.config.members)
        projects = content.load_projects(lab.root)
        self.page("projects/index.html", "projects.html", "Projects", projects=projects)
        for project in projects:
            self.page(f"projects/{project.slug}.html", "project.html", project.title, project=project,
                      task_names={t.name for t in self.tasks})
        self.page("posts/index.html", "posts.html", "Posts", posts=self.posts)
        for post in self.posts:
            self.page(f"posts/{post.slug}.html", "post.html", post.title, post=post)
        self._feed()
        self.page("publications.html", "publications.html", "Publications",
                  publications=content.load_publications(lab.root))
        self.page("tasks/index.html", "tasks.html", "Tasks", tasks=self.tasks, boards=self.boards)
        self.studies = study_boards(lab)
        for task in self.tasks:
            self._task(task)
        for study in self.studies:
            self._study(study)
        self.page("runs/index.html", "runs.html", "Runs", runs=self.runs[::-1])
        for record in self.runs:
            self._run(record)
        self._assignments()

    def page(self, path: str, template: str, title: str, **context: Any) -> None:
        root = "../" * path.count("/")
        html = self.env.get_template(template).render(
            root=root, title=title, lab=self.lab.config, nav=self.nav, here=path, section=path.split("/")[0],
            run_link=lambda run_id: f"{root}runs/{run_id}/index.html" if run_id in self.run_ids else None,
            **context,
        )
        write_text_atomic(self.out / path, html)

    def _task(self, task: Task) -> None:
        folder = f"tasks/{task.name}"
        board = self.boards.get(task.name)
        figures_ = []
        if board:
            figures.save(figures.metric_by_system(board.comparison), self.out / folder / "by-system", ("svg",))
            figures_.append(("by-system.svg", f"{board.metric} of each system on {task.name}, with 95% CIs"))
            if (fig := figures.metric_vs_cost(board.comparison)) is not None:
                figures.save(fig, self.out / folder / "vs-cost", ("svg",))
                figures_.append(("vs-cost.svg", f"{board.metric} on {task.name} against cost per 1,000 examples"))
            if curves := scaling_points(board, self.trained):
                figures.save(figures.scaling(board.comparison, curves), self.out / folder / "scaling", ("svg",))
                figures_.append(("scaling.svg", f"{board.metric} on {task.name} against the number of fine-tuning "
                                 "examples, with the baselines as lines"))
        studies = [b for b in self.studies if b.study.task == task.name]
        # no board: evaluations there may be, all made before the task's data changed (never "none yet")
        earlier = [] if board else latest_evals(self.lab, task, "test").earlier_data
        self.page(f"{folder}/index.html", "task.html", f"Task: {task.name}", task=task, board=board, studies=studies,
                  card=data_card(self.lab, task), figures=figures_, earlier=earlier)
        if board:
            hidden = self.hidden.get(task.name, HiddenTest())
            rows = drilldown_rows(task, board, hidden.ids)
            shown = {row["id"] for row in rows}
            held_out = len({i for e in board.entries for i in e.predictions if i not in shown})
            self.page(f"{folder}/examples.html", "examples.html", f"{task.name}: example by example", task=task,
                      board=board, rows=rows, held_out=held_out, assignments=hidden.assignments)

    def _study(self, board: StudyBoard | SweepBoard | QuantBoard) -> None:
        folder = f"studies/{board.name}"
        if isinstance(board, QuantBoard):
            alt = f"{board.metric} on {board.study.task} of each system against its GGUF file size, with 95% CIs"
            figures.save(figures.quant_tradeoff(board.rows, board.metric, alt), self.out / folder / "tradeoff",
                         ("svg",))
            header, body = quant_cells(board)
            self.page(f"{folder}/index.html", "quant_study.html", f"Study: {board.name}", board=board, alt=alt,
                      header=header, body=body, caption=quant_caption(board))
            return
        band = "the band is a 95% percentile bootstrap over the examples and seeds"
        if isinstance(board, SweepBoard):
            alt = f"{board.result.metric} on {board.study.task} of each setting, best at the top"
            figures.save(figures.sweep_settings(board.result, alt), self.out / folder / "settings", ("svg",))
            (header, body), caption = sweep_cells(board), sweep_caption(board)
            sentences, figure, comparators = [board.result.sentence()], "settings.svg", []
            note = f"{band}; grey: worse than the best after Holm correction"
        else:
            alt = f"{board.result.metric} on {board.study.task} against the number of fine-tuning examples"
            figures.save(figures.study_curve(board.result, alt), self.out / folder / "curve", ("svg",))
            (header, body), caption = study_cells(board), study_caption(board)
            comparators = list(board.result.crossovers)
            sentences, figure = [c.sentence() for c in comparators], "curve.svg"
            note = f"{band}; a star marks each crossover"
        self.page(f"{folder}/index.html", "study.html", f"Study: {board.name}", board=board, alt=alt, header=header,
                  body=body, caption=caption, sentences=sentences, figure=figure, figure_note=note,
                  comparators=comparators)

    def _run(self, record: RunRecord) -> None:
        folder = f"runs/{record.id}"
        (self.out / folder).mkdir(parents=True)
        files = [name for name in _RUN_FILES if (record.folder / name).is_file()]
        hidden = self.hidden.get(record.run.task.name) if record.run.kind == "eval" else None
        if hidden is not None and record.run.task.split != "test":
            hidden = None  # the hidden tests are test examples
        held_out = 0
        for name in files:  # the raw records travel with the page, so "its predictions" is one click away
            if name == PREDICTIONS and hidden is not None:
                held_out = _copy_without(record.folder / name, self.out / folder / name, hidden.ids)
            else:
                shutil.copyfile(record.folder / name, self.out / folder / name)
        loss = None
        if record.run.kind == "train" and (history := loss_history(record)):
            figures.save(figures.loss_curve(history, f"training loss: {record.run.name}"),
                         self.out / folder / "loss", ("svg",))
            loss = "loss.svg"
        config_path = record.folder / CONFIG_FILE
        config = config_path.read_text(encoding="utf-8") if config_path.is_file() else ""
        self.page(f"{folder}/index.html", "run.html", f"Run {record.id}", run=record.run, files=files, loss=loss,
                  config=config, record_path=relative_run_path(record, self.lab.root), held_out=held_out,
                  assignments=hidden.assignments if hidden is not None else [])

    def _assignments(self) -> None:
        """A page per public assignment (its handout, and the leaderboard staff exported), and their index."""
        if not self.assignments:
            return
        self.page("assignments/index.html", "assignments.html", "Assignments", assignments=self.assignments)
        for item in self.assignments:
            self.page(f"assignments/{item.name}/index.html", "assignments.html", f"Assignment: {item.name}",
                      assignment=item)

    def _feed(self) -> None:
        base = self.lab.config.website.url.rstrip("/")
        updated = max((p.date for p in self.posts), default=None)
        xml = self.env.get_template("feed.xml").render(
            # Without a site address, links are relative to the feed itself (it lives in posts/).
            lab=self.lab.config, posts=self.posts[:20], base=f"{base}/posts/" if base else "",
            updated=f"{updated}T00:00:00Z" if updated else "1970-01-01T00:00:00Z",
        )
        write_text_atomic(self.out / "posts" / "feed.xml", xml)


def safe_url(value: str) -> str:
    """The URL if it is web, mail or relative; "" for anything else (javascript:, data:, ...)."""
    cleaned = "".join(c for c in str(value or "") if c.isprintable() and not c.isspace())
    scheme = cleaned.split(":", 1)[0].lower() if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", cleaned) else ""
    return cleaned if scheme in ("", "http", "https", "mailto") else ""


def data_card(lab: Lab, task: Task) -> dict:
    """Source, license, counts, label balance and the leakage check of a task's data (or why it cannot be read
    now: one task's broken data is said on its page, and does not stop the site)."""
    try:
        data = load_task_data(task, strict=False)
    except LlamalabError as exc:
        data = None
        # the site is published: no machine's path is part of it (a data file as the task file writes it)
        problem = str(exc)
        for file in task.data.files:
            for where in {str(task.data_path(file)), str(task.data_path(file).resolve())}:
                problem = problem.replace(where, file.path)
        problem = "the data cannot be read now: " + problem.replace(f"{task.lab_root.resolve()}/", "").replace(
            f"{task.lab_root}/", "")
    report = check_task_data(data, task) if data is not None else None
    folders = sorted({(task.lab_root / f.path).parent for f in task.data.files})
    sources = []
    for folder in folders:
        source = folder / "SOURCE.md"
        text = source.read_text(encoding="utf-8") if source.is_file() else ""
        match = re.search(r"License:\*{0,2}\s*(.+?)(?:\.\s|\.?$)", text, re.M)
        sources.append({"folder": folder.relative_to(task.lab_root).as_posix(),
                        "license": match.group(1).strip() if match else "not stated (see the data folder)",
                        "html": _demote_headings(content.render_markdown(text)) if text else ""})
    if report is None:
        return {"counts": {}, "balance": {}, "overlap": {}, "warnings": [], "errors": [problem], "sources": sources}
    return {"counts": report.counts, "balance": report.label_balance, "overlap": report.overlap,
            "warnings": report.warnings, "errors": report.errors, "sources": sources}


def _demote_headings(html: str) -> str:
    """Headings of an embedded document sit below the page's own h1 and h2."""
    return re.sub(r"<(/?)h([1-6])>", lambda m: f"<{m.group(1)}h{min(int(m.group(2)) + 2, 6)}>", html)


def _copy_without(source: Path, target: Path, hidden: set[str]) -> int:
    """Copy a predictions.jsonl leaving out the rows of hidden examples (each other line kept byte for byte); how
    many examples were left out. A line that is no JSON object with an id (a kill's truncated last line, which may
    be half of a hidden row) is left out too, uncounted: readers of the records skip it anyway."""
    kept: list[bytes] = []
    left_out: set[str] = set()
    with source.open("rb") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                continue
            if row["id"] in hidden:
                left_out.add(row["id"])  # a resumed run may hold a row twice: one example
            else:
                kept.append(line if line.endswith(b"\n") else line + b"\n")
    target.write_bytes(b"".join(kept))
    return len(left_out)


def drilldown_rows(task: Task, board: TaskBoard, hidden: set[str] | frozenset[str] = frozenset()) -> list[dict]:
    """One row per example any system saw: the input, the gold answer, and each system's answer and verdict;
    none for a `hidden` example (an assignment's hidden test)."""
    try:
        examples = {ex.id: ex for split in load_task_data(task, strict=False).splits.values() for ex in split}
    except LlamalabError:  # the data cannot be read now (the data card says why): each answer's prompt shows
        examples = {}
    ids = list(dict.fromkeys(i for e in board.entries for i in e.predictions if i not in hidden))
    rows = []
    for example_id in ids:
        answers = []
        for entry in board.entries:
            row = entry.predictions.get(example_id)
            if row is None:
                answers.append(None)
                continue
            text, raw = _answer_text(row), row.get("generation")
            answers.append({"text": text, "raw": raw if raw is not None and raw.strip() != text else None,
                            "correct": _is_correct(row)})
        present = [a for a in answers if a]
        ex = examples.get(example_id)
        text = "\n".join(str(ex.fields.get(f, "")) for f in task.data.text_fields) if ex else \
            next(e.predictions[example_id]["prompt"] for e in board.entries if example_id in e.predictions)
        gold = next(e.predictions[example_id]["gold"] for e in board.entries if example_id in e.predictions)
        rows.append({
            "id": example_id, "text": text, "gold": gold if isinstance(gold, str) else json.dumps(gold),
            "answers": answers,
            "disagree": len({a["text"] for a in present}) > 1,
            "wrong": [i for i, a in enumerate(answers) if a and a["correct"] is False],
        })
    return rows


def _answer_text(row: dict) -> str:
    value = row.get("prediction", row.get("generation"))
    if value is None:
        return "(not valid JSON)" if row.get("valid_json") is False else "(no answer)"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _is_correct(row: dict) -> bool | None:
    if "correct" in row:
        return bool(row["correct"])
    if "fp" in row and "fn" in row:
        return row["fp"] == 0 and row["fn"] == 0
    return None


def _secret_values(lab: Lab) -> dict[str, str]:
    """Values of environment variables that hold keys: the API keys lab.yaml names, and anything key-like."""
    names = {m.api_key_env for m in lab.config.api_models.values() if m.api_key_env}
    names |= {name for name in os.environ if _SECRET_NAME.search(name)}
    # as the client sends it (stripped: a key read from a file ends in a line break) and as it is set
    return {name: os.environ[name].strip() for name in names if len(os.environ.get(name, "").strip()) >= 8}


def _redact_secrets(lab: Lab, folder: Path) -> None:
    """Last line of defence: no secret from the environment leaves in a page, even if a record held one."""
    secrets = _secret_values(lab)
    if not secrets:
        return
    for path in folder.rglob("*"):
        if path.suffix in (".svg", ".html", ".xml", ".json", ".jsonl", ".yaml", ".jinja", ".css", ".js"):
            text = path.read_text(encoding="utf-8")
            redacted = text
            for name, value in secrets.items():
                redacted = redacted.replace(value, f"[redacted ${name}]")
            if redacted != text:
                path.write_text(redacted, encoding="utf-8")


def serve_site(folder: Path, port: int = 8000, base: str = "/") -> http.server.ThreadingHTTPServer:
    """A local server for the built site, mounted at `base` (e.g. /my-lab/, as on GitHub Pages)."""
    base = "/" + base.strip("/") + "/" if base.strip("/") else "/"

    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path: str) -> str:
            if not path.startswith(base):
                return str(folder / "__outside_base__")
            return super().translate_path("/" + path[len(base):])

        def log_message(self, *args: Any) -> None:  # quiet: the console shows the URL once
            pass

    if not (folder / "index.html").is_file():
        raise LlamalabError(f"{folder} holds no built site (no index.html): run `llamalab site build` first")
    handler = functools.partial(Handler, directory=str(folder))
    try:
        return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OverflowError:
        raise LlamalabError(f"--port {port}: a port is a number from 1 to 65535") from None
    except OSError as exc:
        raise LlamalabError(f"cannot serve on 127.0.0.1:{port} ({exc.strerror or exc}): another server may be "
                            "using it; give another --port") from None


