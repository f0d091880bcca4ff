"""The hand-written content of a lab website, read (never written) from a lab folder.

Layout, every part optional: ``posts/*.md`` (weekly posts), ``people/*.md``, ``projects/*.md`` (Markdown with
YAML front matter between ``---`` lines) and ``publications.bib`` (BibTeX). Every string returned is plain
text or safe HTML (``*_html``); the templates escape the plain text.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bibtexparser
import yaml
from bibtexparser import middlewares
from markdown_it import MarkdownIt
from pylatexenc.latex2text import LatexNodes2Text

from llamalab.config import LlamalabError


class ContentError(LlamalabError):
    """A post, person, project or publication that cannot be read; the message names the file and the fix."""


@dataclass
class Post:
    """A weekly post from ``posts/<slug>.md``."""

    slug: str
    title: str
    date: datetime.date
    authors: list[str]
    tags: list[str]
    summary: str
    runs_until: str  # the newest run this post covers (ISO time); if it lists no runs, `post new` starts after it
    runs: list[str] | None  # the run ids this post covers (`post new` writes them); None: it lists none
    body_html: str
    source: Path


@dataclass
class Person:
    """A lab member from ``people/<slug>.md``; the body is the bio."""

    slug: str
    name: str
    role: str
    url: str
    order: int
    bio_html: str


@dataclass
class Project:
    """A project from ``projects/<slug>.md``; ``tasks`` are llamalab task names."""

    slug: str
    title: str
    status: str
    tasks: list[str]
    people: list[str]
    summary: str
    body_html: str


@dataclass
class Publication:
    """An entry of ``publications.bib``, as plain text; ``url`` falls back to ``https://doi.org/<doi>``."""

    key: str
    entry_type: str
    title: str
    authors: list[str]  # display names, "First Last"
    year: str
    venue: str
    url: str
    bibtex: str  # the entry as written in publications.bib


# --- Markdown -------------------------------------------------------------------------------------------------


def _rewrite_href(href: str) -> str:
    """Relative links written for GitHub's repository view, made to work on the static site.

    ``a.md#s`` -> ``a.html#s``, ``dir/`` -> ``dir/index.html`` and a study file ``studies/NAME.yaml`` -> its page
    ``studies/NAME/index.html``; URLs with a scheme, ``/...`` and ``#...`` are kept.
    """
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or not parts.path or href.startswith(("/", "#")):
        return href
    path = parts.path
    if study := re.fullmatch(r"((?:\.\./)*)studies/([^/]+)\.yaml", path):
        path = f"{study.group(1)}studies/{study.group(2)}/index.html"
    elif path.endswith(".md"):
        path = path[: -len(".md")] + ".html"
    elif path.endswith("/"):
        path += "index.html"
    return parts._replace(path=path).geturl()


def _render_link_open(renderer: Any, tokens: list, idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    href = token.attrGet("href")
    if isinstance(href, str):
        token.attrSet("href", _rewrite_href(href))
    return renderer.renderToken(tokens, idx, options, env)


# Raw HTML off: tags in a post are shown as text. The default validateLink refuses javascript:/vbscript:/data: links.
_MD = MarkdownIt("commonmark", {"html": False}).enable("table")
_MD.add_render_rule("link_open", _render_link_open)


def render_markdown(text: str) -> str:
    """Markdown to safe HTML: raw HTML escaped, unsafe link schemes dropped, relative .md and dir/ links rewritten."""
    return _MD.render(text)


# --- Front matter ---------------------------------------------------------------------------------------------

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*(?:\r?\n|\Z)", re.DOTALL | re.MULTILINE)
_REQUIRED = object()
_EXAMPLES = {"title": "title: Week 48", "name": "name: Ada Lovelace", "date": "date: 2026-11-26"}


def split_front_matter(text: str, source: Path) -> tuple[dict, str]:
    """Split ``---``-fenced YAML front matter from the Markdown body; ``source`` only names the file in errors."""
    text = text.removeprefix("\ufeff")
    match = _FRONT_MATTER.match(text)
    if match is None:
        raise ContentError(
            f"{source}: no front matter: start the file with a '---' line, then lines like 'title: ...', then '---'"
        )
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError as e:
        raise ContentError(f"{source}: front matter is not valid YAML: {e}; quote values that contain ':'") from e
    except (ValueError, OverflowError) as e:  # YAML reads the text but cannot build the value: date: 2026-13-45
        raise ContentError(f"{source}: front matter holds a value that is not what it looks like ({e}): a date "
                           "must be a real one, written YYYY-MM-DD; quote anything else") from None
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise ContentError(f"{source}: front matter must be 'key: value' lines, not a {type(meta).__name__}")
    return meta, text[match.end() :]


def _check(meta: dict, schema: dict[str, tuple[type, Any]], source: Path) -> dict[str, Any]:
    """Validate front matter against ``{key: (type, default or _REQUIRED)}``; return every key with its value."""
    unknown = sorted(str(k) for k in meta if k not in schema)
    if unknown:
        raise ContentError(f"{source}: unknown front-matter key '{unknown[0]}'; allowed keys: {', '.join(schema)}")
    values = {}
    for key, (kind, default) in schema.items():
        value = meta.get(key)
        if value is None:
            if default is _REQUIRED:
                example = _EXAMPLES.get(key, f"{key}: ...")
                raise ContentError(f"{source}: front matter has no '{key}': add a line like '{example}'")
            values[key] = list(default) if isinstance(default, list) else default
        elif kind is datetime.date:
            values[key] = _as_date(value, key, source)
        elif kind is list:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(v, str | int | float) for v in items):
                raise ContentError(f"{source}: '{key}' must be a list of names, like '{key}: [a, b]'")
            values[key] = [str(v) for v in items]
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ContentError(f"{source}: '{key}' must be a whole number, like '{key}: 10', not {value!r}")
            values[key] = value
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            values[key] = str(value)
        else:
            raise ContentError(f"{source}: '{key}' must be a single line of text, not {value!r}")
    return values


def _as_date(value: Any, key: str, source: Path) -> datetime.date:
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    try:
        return datetime.date.fromisoformat(str(value).strip())
    except ValueError:
        raise ContentError(
            f"{source}: '{key}: {value}' is not a date: write it as YYYY-MM-DD, like '{key}: 2026-11-26'"
        ) from None


def _documents(root: Path, folder: str, schema: dict[str, tuple[type, Any]]) -> list[tuple[str, dict, str, Path]]:
    """``(slug, checked front matter, body, path)`` for each ``root/folder/*.md``, in name order."""
    docs = []
    for path in sorted((root / folder).glob("*.md")):
        if path.name.startswith(".") or not path.is_file():
            continue
        shown = path.relative_to(root)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ContentError(f"{shown}: not UTF-8 text ({e}); save it as UTF-8") from e
        meta, body = split_front_matter(text, shown)
        docs.append((path.stem, _check(meta, schema, shown), body, path))
    return docs


# --- Loaders --------------------------------------------------------------------------------------------------

_POST = {"title": (str, _REQUIRED), "date": (datetime.date, _REQUIRED)}
_POST |= {"authors": (list, []), "tags": (list, []), "summary": (str, ""), "runs_until": (str, "")}
_POST |= {"runs": (list, None)}  # None when absent: such a post covers the runs that ended before it
_PERSON = {"name": (str, _REQUIRED), "role": (str, ""), "url": (str, ""), "order": (int, 100)}
_PROJECT = {"title": (str, _REQUIRED), "status": (str, "active")}
_PROJECT |= {"tasks": (list, []), "people": (list, []), "summary": (str, "")}


def load_posts(root: Path) -> list[Post]:
    """The posts in ``root/posts``, newest first (date, then ``runs_until``, then slug, descending)."""
    posts = [
        Post(slug, **m, body_html=render_markdown(body), source=path)
        for slug, m, body, path in _documents(root, "posts", _POST)
    ]
    # On one day, a drafted post covering later runs is the newer one.
    return sorted(posts, key=lambda p: (p.date, p.runs_until, p.slug), reverse=True)


def load_people(root: Path) -> list[Person]:
    """The people in ``root/people``, by ``order``, then name."""
    people = [
        Person(slug, **m, bio_html=render_markdown(body)) for slug, m, body, _ in _documents(root, "people", _PERSON)
    ]
    return sorted(people, key=lambda p: (p.order, p.name.casefold(), p.slug))


def load_projects(root: Path) -> list[Project]:
    """The projects in ``root/projects``, by title."""
    projects = [
        Project(slug, **m, body_html=render_markdown(body))
        for slug, m, body, _ in _documents(root, "projects", _PROJECT)
    ]
    return sorted(projects, key=lambda p: (p.title.casefold(), p.slug))


# --- Publications ---------------------------------------------------------------------------------------------

_LATEX = LatexNodes2Text(math_mode="verbatim")  # keeps $x^2$ as written; {\"u} -> ü, {BERT} -> BERT


def _plain(latex: Any) -> str:
    """LaTeX field text to one line of plain text, protective braces removed."""
    return " ".join(_LATEX.latex_to_text(str(latex)).split())


def load_publications(root: Path) -> list[Publication]:
    """The entries of ``root/publications.bib``, newest year first, then by title."""
    path = root / "publications.bib"
    if not path.is_file():
        return []
    # Names are split on 'and' before decoding, so that {Barnes and Noble} stays one author. url and doi are
    # not LaTeX-decoded at all: a '%' in a URL would read as a comment.
    stack = [middlewares.SeparateCoAuthors(), middlewares.SplitNameParts(), middlewares.MergeNameParts(style="first")]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ContentError(f"publications.bib: not UTF-8 text ({e}); save it as UTF-8") from None
    library = bibtexparser.parse_string(text, append_middleware=stack)
    if library.failed_blocks:
        block = library.failed_blocks[0]
        reason = (getattr(block.error, "abort_reason", None) or str(block.error).splitlines()[0]).rstrip(". ")
        raise ContentError(
            f"publications.bib, line {(block.start_line or 0) + 1}: this entry cannot be read ({reason}); "
            "check its braces, the commas between fields and that its key is unique"
        )
    pubs = []
    for entry in library.entries:
        fields = {key.lower(): field.value for key, field in entry.fields_dict.items()}
        venue_key = next((k for k in ("journal", "booktitle", "publisher", "eprint") if fields.get(k)), None)
        venue = _plain(fields[venue_key]) if venue_key else ""
        url, doi = str(fields.get("url", "")).strip(), str(fields.get("doi", "")).strip()
        if not url and doi:
            url = doi if doi.startswith(("http://", "https://")) else f"https://doi.org/{doi}"
        pubs.append(
            Publication(
                key=entry.key,
                entry_type=entry.entry_type.lower(),
                title=_plain(fields.get("title", "")),
                authors=[_plain(name) for name in fields.get("author", [])],
                year=_plain(fields.get("year", "")),
                venue=venue,
                url=url,
                bibtex=entry.raw or "",
            )
        )
    pubs.sort(key=lambda p: (p.title.casefold(), p.key))
    return sorted(pubs, key=lambda p: p.year, reverse=True)
