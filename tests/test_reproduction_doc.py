"""docs/reproduction.md states the facts the code cites: its sections exist, its reference
numbers are those asd.evaluate prints, and nothing cites the absent DESIGN.md any more."""

from __future__ import annotations

import re

import asd.evaluate as ev

CITED = re.compile(r"reproduction\.md(?:\]\([^)]*\))?,? \"([^\"]+)\"")
# where the code, the configs and the docs live (README.md is read as well)
SOURCES = ("asd", "runners", "configs", "docs", "bench", "tests", "notebooks")


def _texts(repo):
    files = [repo / "README.md", repo / "config.yml"]
    for folder in SOURCES:
        files += [p for p in (repo / folder).rglob("*") if p.suffix in (".py", ".md", ".yml")]
    return {p: p.read_text() for p in files if p.is_file()}


def _headings(repo) -> set[str]:
    text = (repo / "docs" / "reproduction.md").read_text()
    return {line[3:].strip() for line in text.splitlines() if line.startswith("## ")}


def test_every_cited_section_exists(repo):
    headings = _headings(repo)
    cited = {
        (path.relative_to(repo), name)
        for path, text in _texts(repo).items()
        for name in CITED.findall(text)
    }
    assert cited, "nothing cites docs/reproduction.md by section"
    missing = sorted(str(c) for c in cited if c[1] not in headings)
    assert not missing, f"cited sections that docs/reproduction.md lacks: {missing}"


def test_nothing_cites_design_md(repo):
    this = repo / "tests" / "test_reproduction_doc.py"
    citing = sorted(
        str(path.relative_to(repo))
        for path, text in _texts(repo).items()
        if path != this and "DESIGN.md" in text
    )
    assert not citing, f"these cite DESIGN.md, which is not in the repository: {citing}"


def test_published_numbers_match_the_doc(repo):
    """The "Reference numbers" table of docs/reproduction.md is what asd.evaluate prints."""
    text = (repo / "docs" / "reproduction.md").read_text()
    section = text.split("## Reference numbers", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in ev.PUBLISHED["report"]:
            rows[cells[0]] = [tuple(float(v) for v in c.split(" / ")) for c in cells[1:]]
    assert set(rows) == set(ev.PUBLISHED["report"])
    for machine, (ae, mobilenet, report) in rows.items():
        assert ev.PUBLISHED["AE baseline"][machine] == ae
        assert ev.PUBLISHED["MobileNetV2 baseline"][machine] == mobilenet
        assert ev.PUBLISHED["report"][machine] == report
