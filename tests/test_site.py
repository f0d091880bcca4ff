"""`llamalab site build`: every page generated from the records, every link resolving, nothing unescaped."""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest

from llamalab.publish.site import build_site, serve_site
from tests.llama_server import API_KEY
from tests.site_pages import broken_links, pages

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(published_lab, tmp_path_factory):
    return build_site(published_lab, tmp_path_factory.mktemp("site") / "site")


def test_every_page_exists_and_every_link_resolves(site, published_lab):
    names = {p.relative_to(site).as_posix() for p in pages(site)}
    runs = sorted(p.name for p in published_lab.runs_dir.iterdir())
    expected = {"index.html", "people.html", "publications.html", "posts/index.html", "projects/index.html",
                "tasks/index.html", "runs/index.html", "tasks/sentiment/index.html", "tasks/sentiment/examples.html",
                "projects/small-vs-industry.html", "studies/tiny-sweep/index.html",
                *(f"runs/{r}/index.html" for r in runs),
                *(f"tasks/{t}/index.html" for t in ("intent", "gsm8k", "wnut17", "scitldr"))}
    assert expected <= names
    assert any(n.startswith("posts/") and n.endswith("-week-one.html") for n in names)
    assert broken_links(site) == []
    assert (site / "tasks" / "sentiment" / "vs-cost.svg").is_file()
    assert (site / "tasks" / "sentiment" / "scaling.svg").is_file()  # two fine-tunes of different sizes


def test_hostile_text_is_escaped_everywhere(site):
    for page in pages(site):
        html = page.read_text()
        assert "<script>window" not in html, page
        assert "onerror=" not in html.replace("onerror=&#34;", "").replace("onerror=&quot;", ""), page
        assert "<svg onload" not in html and 'href="javascript:' not in html, page
        assert html.count("<script") == 1, f"{page}: only the site's own script file may be loaded"
    drilldown = (site / "tasks" / "sentiment" / "examples.html").read_text()
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in drilldown
    people = (site / "people.html").read_text()
    assert "Mallory &lt;script&gt;" in people and "&lt;b&gt;unclosed" in people


def test_no_secret_reaches_the_site(site, published_lab):
    assert API_KEY not in published_lab.config.model_dump_json()
    for path in site.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


def test_feed_is_valid_atom_newest_first(site):
    feed = ET.parse(site / "posts" / "feed.xml").getroot()
    ns = {"a": "http://www.w3.org/2005/Atom"}
    entries = feed.findall("a:entry", ns)
    assert {e.findtext("a:title", namespaces=ns) for e in entries} == {"Week one", "Welcome to the lab notebook"}
    dates = [e.findtext("a:updated", namespaces=ns) for e in entries]
    assert dates == sorted(dates, reverse=True)
    for entry in entries:  # relative links resolve from the feed's own folder
        assert (site / "posts" / entry.find("a:link", ns).get("href")).is_file()


def test_weekly_post_cites_runs_with_intervals(site, published_lab):
    post = next((published_lab.root / "posts").glob("*-week-one.md")).read_text()
    assert "## sentiment" in post and "**Best on accuracy:**" in post
    assert post.count("[run](../runs/") >= 4
    assert "Selection on dev" in post and "## Training runs" in post
    assert "## Studies" in post and "- tiny-sweep (sweep): 2 of 2 cells finished. Best setting: train_examples=" in post
    html = next((site / "posts").glob("*-week-one.html")).read_text()
    assert 'href="../runs/' in html and '/index.html"' in html


def test_served_under_a_sub_path(site):
    server = serve_site(site, 0, "/my-lab/")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for path in ("index.html", "tasks/sentiment/index.html", "assets/site.css", "posts/feed.xml"):
            assert httpx.get(f"{base}/my-lab/{path}").status_code == 200, path
        assert httpx.get(f"{base}/index.html").status_code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_rebuild_replaces_the_site_whole(published_lab, tmp_path):
    out = tmp_path / "site"
    build_site(published_lab, out)
    (out / "stale.html").write_text("old")
    build_site(published_lab, out)
    assert not (out / "stale.html").exists()
    assert not list(tmp_path.glob(".site.*"))


def test_site_build_and_post_new_from_the_command_line(published_lab, tmp_path):
    from typer.testing import CliRunner

    from llamalab.cli import app

    runner = CliRunner()
    built = runner.invoke(app, ["site", "build", "--out", str(tmp_path / "cli-site"), "--lab", str(published_lab.root)])
    assert built.exit_code == 0, built.output
    assert (tmp_path / "cli-site" / "index.html").is_file()
    drafted = runner.invoke(app, ["post", "new", "Nothing new", "--author", "Sam", "--lab", str(published_lab.root)])
    assert drafted.exit_code == 0, drafted.output
    path = Path(drafted.stdout.strip().splitlines()[-1])
    text = path.read_text()
    assert "No new runs since" in text and "authors:\n- Sam" in text  # the previous post already covered every run
    path.unlink()  # the shared lab stays as the other tests expect it


def test_a_secret_that_reaches_a_record_is_redacted(published_lab, tmp_path, monkeypatch):
    import shutil

    from llamalab.lab import find_lab
    from llamalab.publish.site import safe_url

    copy = tmp_path / "lab"
    shutil.copytree(published_lab.root, copy, ignore=shutil.ignore_patterns("site", "reports"))
    leaked = "sk-leaked-0123456789abcdef"
    monkeypatch.setenv("SOME_SERVICE_TOKEN", leaked + "\n")  # read from a file: the client sends it stripped
    post = next((copy / "posts").glob("*-week-one.md"))
    post.write_text(post.read_text() + f"\nOops, pasted a key: {leaked}\n")
    site = build_site(find_lab(copy), tmp_path / "site")
    html = next((site / "posts").glob("*-week-one.html")).read_text()
    assert leaked not in html and "[redacted $SOME_SERVICE_TOKEN]" in html
    assert all(leaked.encode() not in p.read_bytes() for p in site.rglob("*") if p.is_file())

    assert [safe_url(u) for u in ("https://x.org", "mailto:a@b.c", "../runs/x/", "javascript:alert(1)",
                                  " JaVaScRiPt:alert(1)", "java\nscript:alert(1)", "data:text/html,x")] == [
        "https://x.org", "mailto:a@b.c", "../runs/x/", "", "", "", ""]


def test_generation_tasks_get_leaderboards_and_drilldowns(lab, tiny_model_dir, tmp_path):
    from llamalab.evaluation.evaluate import EvalSettings, evaluate

    for task in ("wnut17", "scitldr", "gsm8k"):
        for fmt in ("plain", "chat"):
            evaluate(lab, EvalSettings(system=str(tiny_model_dir), task=task, limit=6, max_new_tokens=4, format=fmt))
    site = build_site(lab, tmp_path / "site")
    assert broken_links(site) == []
    for task, metric in (("wnut17", "entity_f1"), ("scitldr", "rouge1"), ("gsm8k", "exact_match")):
        page = (site / "tasks" / task / "index.html").read_text()
        assert f"ranked by {metric}" in page and "Δ vs best" in page
        drilldown = (site / "tasks" / task / "examples.html").read_text()
        assert drilldown.count('<tr data-disagree="') == 6
        assert "model wrote:" in drilldown or task == "scitldr"  # parsed answers show the raw generation


def test_a_build_never_replaces_a_folder_it_did_not_make(lab, tmp_path):
    """`--out docs` wiped the notes in docs/, `--out data` the lab's datasets: a build replaces only a new or
    empty folder, or a site built before (and the lab's own site/)."""
    from llamalab.config import LlamalabError
    from llamalab.publish.site import SITE_MARKER, build_site

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text("mine")
    for out in (docs, lab.root / "data", lab.root, lab.root / "tasks" / "sentiment.yaml"):
        with pytest.raises(LlamalabError, match="--out"):
            build_site(lab, out)
    assert (docs / "notes.md").read_text() == "mine" and (lab.root / "data").is_dir()
    fresh = tmp_path / "fresh"
    assert (build_site(lab, fresh) / SITE_MARKER).is_file()
    assert (build_site(lab, fresh) / "index.html").is_file()  # its own earlier build: replaced
    (lab.root / "site").mkdir(exist_ok=True)
    (lab.root / "site" / "old.html").write_text("a build from before the marker")
    assert not (build_site(lab) / "old.html").exists()


def test_serving_says_what_is_wrong_in_one_line(lab, tmp_path):
    import socket

    from llamalab.config import LlamalabError
    from llamalab.publish.site import build_site, serve_site

    with pytest.raises(LlamalabError, match="no built site"):
        serve_site(tmp_path)
    folder = build_site(lab, tmp_path / "site")
    with pytest.raises(LlamalabError, match="--port 99999: a port is a number"):
        serve_site(folder, 99999)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(LlamalabError, match="another server may be using it"):
            serve_site(folder, taken.getsockname()[1])


def test_a_task_evaluated_only_before_its_data_changed_says_so(lab, tmp_path):
    from llamalab.publish.site import build_site
    from llamalab.runs.files import append_jsonl
    from llamalab.runs.record import RunRecord
    from tests.records import eval_fields

    fields = eval_fields(label="alpha", n=2)
    fields["task"]["data_sha256"] = {"data/sentiment/rt-polarity.csv": "0" * 64}
    record = RunRecord.create(lab.runs_dir, "eval", "alpha", {"system": "alpha"}, **fields)
    append_jsonl(record.folder / "predictions.jsonl", [
        {"id": f"x:{i}", "gold": "positive", "prediction": "positive", "correct": True} for i in range(2)])
    record.update(status="finished")
    page = (build_site(lab, tmp_path / "site") / "tasks" / "sentiment" / "index.html").read_text()
    assert "made before the task's data files changed (alpha [plain])" in page
    assert "No finished evaluation" not in page
