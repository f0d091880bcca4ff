"""Reading a built site: its pages and the internal links in them."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value and ((tag in ("a", "link") and name == "href") or (tag in ("img", "script") and name == "src")):
                self.links.append(value)


def pages(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def internal_links(page: Path) -> list[str]:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return [link for link in parser.links if not urlsplit(link).scheme and not link.startswith("#")]


def broken_links(site: Path) -> list[str]:
    """Every relative href/src that does not name an existing file (a folder is not enough: file:// shows no index)."""
    broken = []
    for page in pages(site):
        for link in internal_links(page):
            target = (page.parent / unquote(urlsplit(link).path)).resolve()
            if not target.is_file() or site.resolve() not in target.parents:
                broken.append(f"{page.relative_to(site)} -> {link}")
    return broken
