"""The documentation: ``mkdocs build --strict`` builds docs/ (a broken link or anchor fails it), and every link of the
README to a file of the repository points to a file and a heading that exist."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmflow import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
README_MAX_LINES = 300


def _mkdocs_build(project: Path, site: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False)


def slug(heading: str) -> str:
    """The anchor GitHub and mkdocs' ``toc`` give a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    found, fenced = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.add(slug(line.lstrip("#")))
    return found


def broken_links(markdown: Path) -> list[str]:
    """The relative links of ``markdown`` whose file, or whose heading in that file, does not exist."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", markdown.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (markdown.parent / path) if path else markdown
        if not file.is_file():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(target)
    return broken


def test_the_docs_site_builds_with_every_link_and_anchor_found(tmp_path: Path):
    built = _mkdocs_build(PROJECT_ROOT, tmp_path / "site")
    assert built.returncode == 0, built.stderr[-3000:]
    pages = {p.parent.name for p in (tmp_path / "site").rglob("index.html")}
    assert {"serving", "speed", "real-model", "run-anywhere", "development"} <= pages


def test_a_broken_anchor_fails_the_docs_build(tmp_path: Path):
    project = tmp_path / "project"
    shutil.copytree(PROJECT_ROOT / "docs", project / "docs")
    shutil.copy(PROJECT_ROOT / "mkdocs.yml", project)
    page = project / "docs" / "index.md"
    page.write_text(page.read_text() + "\nSee [nowhere](serving.md#no-such-heading).\n")
    built = _mkdocs_build(project, tmp_path / "site")
    assert built.returncode != 0
    assert "no-such-heading" in built.stderr


def test_the_readme_is_a_short_guide_whose_links_all_resolve():
    assert len(README.read_text().splitlines()) < README_MAX_LINES
    assert broken_links(README) == []


@pytest.mark.parametrize("target", ["docs/nope.md", "docs/serving.md#nope"])
def test_the_readme_link_check_finds_a_missing_file_or_heading(tmp_path: Path, target: str):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "serving.md").write_text("# Serving\n\n## Real heading\n")
    page = tmp_path / "README.md"
    page.write_text(f"[ok](docs/serving.md#real-heading) and [bad]({target})\n")
    assert broken_links(page) == [target]
