"""The documentation site builds strictly (with the docs requirements installed; skipped otherwise)."""

import importlib.util
import subprocess
import sys

import pytest

from tests.common import ROOT

needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="the docs requirements are not installed (make test and make docs install them)",
)


@needs_mkdocs
@pytest.mark.slow
def test_docs_build_strictly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT / "docs", capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "api" / "index.html").is_file()


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "docs" / "mkdocs.yml").read_text()
    pages = sorted(p.name for p in (ROOT / "docs" / "pages").glob("*.md"))
    assert pages and all(f": {page}" in nav for page in pages)
