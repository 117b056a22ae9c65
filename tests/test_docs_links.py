"""Every relative link and #anchor in README.md and docs/*.md leads somewhere that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~)")
# [text](target) and ![alt](target); a target ends at whitespace (a title may follow) or ")".
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`[^`]*`")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks: a link inside one is an example, not a link."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower-cased, punctuation but `-` and `_`
    dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"\*\*|__(?=\S)|(?<=\S)__", "", text)  # bold marks; snake_case stays
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, ... as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(page.read_text(encoding="utf-8")):
        heading = HEADING.match(line)
        if heading is None:
            continue
        base = slug(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    targets = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        targets += LINK.findall(INLINE_CODE.sub("", line))
    return targets


def broken_links(page: Path) -> list[str]:
    """Each relative link of `page` whose file, or whose #anchor in a Markdown file, is not
    there, with why."""
    broken = []
    for target in links(page):
        if EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target}: no such file {destination}")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading with anchor #{anchor} in {destination.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_readme_links_every_docs_page() -> None:
    linked = {(REPO / target.partition("#")[0]).resolve() for target in links(REPO / "README.md")}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Behind a login", "behind-a-login"),
        (
            "A `/prompt` that would stop the server is refused",
            "a-prompt-that-would-stop-the-server-is-refused",
        ),
        ("Quick start (60 seconds)", "quick-start-60-seconds"),
        ("The answer before the executor", "the-answer-before-the-executor"),
        ("`shard_index` and **bold**", "shard_index-and-bold"),
        ("See [the docs](docs/x.md) now", "see-the-docs-now"),
        ("Kept: ratios, 1.5 µs", "kept-ratios-15-µs"),
    ],
    ids=["plain", "code-and-slash", "parens", "words", "snake-and-bold", "link", "unicode"],
)
def test_anchor_slugs_follow_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_a_broken_link_or_anchor_is_reported(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "there.md").write_text("# Title\n\n## Part\n\n## Part\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/there.md#part-1) [ok](#top) [gone](docs/gone.md) [bad](docs/there.md#nope)\n"
        "[web](https://example.com/#x) `[code](docs/not-a-link.md)`\n"
        "```\n[example](docs/in-a-fence.md)\n```\n# Top\n",
        encoding="utf-8",
    )
    assert [entry.split(":")[0] for entry in broken_links(page)] == [
        "docs/gone.md",
        "docs/there.md#nope",
    ]
