"""The report's Markdown shows a label as written everywhere it appears: in the headline sentence, the table and
the methods text (README.md and methods.md) alike, never as emphasis, code, a link or HTML in some of them."""

from __future__ import annotations

import html
import re

from markdown_it import MarkdownIt

from llamalab.publish.report import build_report
from tests.records import sentiment_eval

# What a system label may hold that Markdown reads as markup
HOSTILE = ["*star* __bold__ `code`", "<b>html</b> #1 & [link](http://x.test) _under_"]


def rendered_text(markdown: str) -> str:
    """The text a reader sees (GitHub-like CommonMark, raw HTML on), tags removed."""
    page = MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def test_labels_read_as_written_in_the_headline_the_table_and_the_methods(lab):
    # Tied for best (the headline names both), on different numbers of examples (the methods name both)
    sentiment_eval(lab, HOSTILE[0], [True, False] * 2)
    sentiment_eval(lab, HOSTILE[1], [True, False] * 4)
    folder = build_report(lab, "markdown")
    labels = [f"{label} [plain]" for label in HOSTILE]

    readme = (folder / "README.md").read_text()
    headline = next(line for line in readme.splitlines() if line.startswith("Best system on accuracy"))
    shown = rendered_text(headline)
    assert any(shown.startswith(f"Best system on accuracy: {first} (tied with {second}), 0.500")
               for first, second in (labels, labels[::-1])), shown
    table = rendered_text((folder / "tables" / "sentiment.md").read_text())
    methods = rendered_text((folder / "methods.md").read_text())
    methods_in_readme = rendered_text(readme.split("### Methods", 1)[1])
    for label in labels:
        assert label in table, (label, table)
        assert label in methods, (label, methods)
        assert label in methods_in_readme, (label, methods_in_readme)
    assert methods_in_readme.strip() in methods  # the same text in both
    methods_html = MarkdownIt("commonmark", {"html": True}).render((folder / "methods.md").read_text())
    assert not re.search(r"<(em|strong|code|a|b)\b", methods_html), methods_html  # plain text: no markup at all
