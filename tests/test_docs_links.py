"""Every relative Markdown link in README.md and docs/*.md points to a file (and heading) that exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def links(page: Path) -> list[str]:
    return [t for t in LINK.findall(FENCE.sub("", page.read_text())) if not re.match(r"[a-z]+:", t)]


def broken(page: Path) -> list[str]:
    bad = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target} (no heading #{anchor} in {dest.name})")
    return bad


def test_slug_matches_github():
    assert slug("The quantities") == "the-quantities"
    assert slug("How many devices: `batchscope plan`") == "how-many-devices-batchscope-plan"


def test_every_relative_link_resolves():
    assert len(pages()) > 5 and sum(len(links(p)) for p in pages()) > 20
    problems = {str(p.relative_to(ROOT)): broken(p) for p in pages()}
    assert not {k: v for k, v in problems.items() if v}


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](page.md#title) [gone](missing.md) [no heading](page.md#other)\n"
                    "```\n[in code](skipped.md)\n```\n[web](https://example.org)\n")
    assert broken(page) == ["missing.md (no such file)", "page.md#other (no heading #other in page.md)"]
