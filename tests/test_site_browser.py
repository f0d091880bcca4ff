"""The site in a real headless Chromium (Debian's package, driven by Playwright): pages load from the file system
and under a sub-path with no console errors, no hostile text runs, the leaderboard sorts, the drill-down filters,
the pages pass axe's accessibility rules, and dark mode and small screens work."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from llamalab.publish.site import build_site, serve_site
from tests.site_pages import pages

pytestmark = pytest.mark.slow
SCREENSHOTS = Path(os.environ.get("LLAMALAB_SCREENSHOTS", Path(__file__).parent.parent / "build" / "screenshots"))


def chromium_path() -> str:
    path = os.environ.get("LLAMALAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no Chromium found: run `bash scripts/install-chromium.sh` (Debian's chromium package) "
                    "or point LLAMALAB_CHROMIUM at a Chromium binary")
    return path


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site(published_lab, tmp_path_factory) -> Path:
    return build_site(published_lab, tmp_path_factory.mktemp("browser") / "site")


class Watched:
    """A page that records console errors, uncaught exceptions, failed requests and dialogs."""

    def __init__(self, browser, **options):
        self.context = browser.new_context(**options)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"exception: {e}"))
        self.page.on("requestfailed", lambda r: r.failure != "net::ERR_ABORTED"  # aborted by navigating on
                     and self.problems.append(f"request failed: {r.url} ({r.failure})"))
        self.page.on("dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss()))

    def open(self, url: str):
        self.page.goto(url)
        self.page.wait_for_load_state("load")
        assert self.page.evaluate("typeof window.__pwned") == "undefined", f"a payload ran on {url}"
        return self.page

    def close(self):
        self.context.close()


@pytest.fixture
def watched(browser):
    opened: list[Watched] = []

    def make(**options) -> Watched:
        opened.append(Watched(browser, **options))
        return opened[-1]

    yield make
    for w in opened:
        w.close()


def test_every_page_loads_from_the_file_system_cleanly(site, watched):
    w = watched()
    for page in pages(site):
        w.open(page.as_uri())
        assert w.page.locator("h1").count() == 1, page
    assert w.problems == []


def test_pages_work_under_a_sub_path(site, watched):
    server = serve_site(site, 0, "/lab-site/")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        w = watched()
        base = f"http://127.0.0.1:{server.server_address[1]}/lab-site/"
        for path in ("index.html", "tasks/sentiment/index.html", "tasks/sentiment/examples.html", "posts/index.html"):
            page = w.open(base + path)
            assert page.evaluate("getComputedStyle(document.querySelector('.top')).borderBottomStyle") == "solid"
        page.click("nav >> text=Tasks")
        assert page.url == base + "tasks/index.html"
        assert w.problems == []
    finally:
        server.shutdown()
        server.server_close()


def column(page, table: str, index: int) -> list[str]:
    return page.eval_on_selector_all(f"{table} tbody tr", f"rows => rows.map(r => r.children[{index}].textContent)")


def test_leaderboard_sorts(site, watched):
    page = watched().open((site / "tasks" / "sentiment" / "index.html").as_uri())
    table = "table.board"
    before = column(page, table, 0)
    page.click(f"{table} thead button:text('n')")
    assert page.get_attribute(f"{table} thead th:nth-child(3)", "aria-sort") == "descending"
    n = [int(x) for x in column(page, table, 2)]
    assert n == sorted(n, reverse=True)
    page.click(f"{table} thead button:text('System')")
    systems = column(page, table, 0)
    assert systems == sorted(systems, key=str.lower) and sorted(systems) == sorted(before)
    page.click(f"{table} thead button:text('System')")
    assert column(page, table, 0) == sorted(systems, key=str.lower, reverse=True)
    page.focus(f"{table} thead button:text('accuracy')")
    page.keyboard.press("Enter")  # sortable from the keyboard too
    acc = [float(x.split()[0]) for x in column(page, table, 3)]
    assert acc == sorted(acc, reverse=True)


def test_drilldown_filters_disagreements_and_errors(site, watched):
    page = watched().open((site / "tasks" / "sentiment" / "examples.html").as_uri())
    rows = page.locator("#drilldown tbody tr")
    total = rows.count()
    assert total >= 40
    page.select_option("#filter", "disagree")
    visible = page.locator("#drilldown tbody tr:not([hidden])")
    assert 0 < visible.count() < total
    assert set(visible.evaluate_all("rows => rows.map(r => r.dataset.disagree)")) == {"1"}
    assert page.text_content("#shown") == f"{visible.count()} of {total} examples"
    page.select_option("#filter", "wrong-0")
    wrong = visible.evaluate_all("rows => rows.map(r => r.dataset.wrong.split(' '))")
    assert wrong and all("0" in w for w in wrong)
    page.select_option("#filter", "all")
    page.fill("#search", "zzzz-no-such-text")
    assert visible.count() == 0
    page.fill("#search", "")
    assert visible.count() == total


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_passes_axe_accessibility_rules(site, watched, scheme):
    from axe_playwright_python.sync_playwright import Axe

    w = watched(color_scheme=scheme)
    for path in pages(site):
        page = w.open(path.as_uri())
        results = Axe().run(page)
        serious = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
        assert serious == [], f"{path.relative_to(site)} ({scheme}): " + "; ".join(
            f"{v['id']}: {v['help']} ({len(v['nodes'])})" for v in serious)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"


def test_dark_mode_follows_the_system_and_the_toggle(site, watched):
    dark = watched(color_scheme="dark").open((site / "index.html").as_uri())
    background = "getComputedStyle(document.body).backgroundColor"
    assert dark.evaluate(background) == "rgb(15, 23, 42)"
    light = watched(color_scheme="light").open((site / "index.html").as_uri())
    assert light.evaluate(background) == "rgb(255, 255, 255)"
    light.click("#theme-toggle")
    assert light.evaluate(background) == "rgb(15, 23, 42)"
    assert light.get_attribute("#theme-toggle", "aria-pressed") == "true"


def test_small_screens_do_not_scroll_sideways(site, watched):
    w = watched(viewport={"width": 375, "height": 740})
    for path in ("index.html", "tasks/sentiment/index.html", "tasks/sentiment/examples.html"):
        page = w.open((site / path).as_uri())
        assert page.evaluate("document.documentElement.scrollWidth") <= 376, path


def test_screenshots_of_home_and_task_page(site, watched):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    w = watched(viewport={"width": 1280, "height": 900})
    for name, path in (("home", "index.html"), ("task", "tasks/sentiment/index.html")):
        page = w.open((site / path).as_uri())
        shot = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
