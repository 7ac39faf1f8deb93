"""Every example in the documentation runs as written: the fenced blocks marked `sh test` or
`python test` in README.md and docs/*.md are run in order, one page per fresh temporary directory
(so a page's later blocks can use what its earlier ones made), each block in its own process,
with this interpreter's `pcopy` first on PATH. Relative links in those pages must lead somewhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
# ```lang test  ...  ``` at the start of a line (a page may indent a block inside a list item).
BLOCK = re.compile(r"^[ \t]*```(\w+)([^\n]*)\n(.*?)^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL)
RUNNERS = {"sh": "sh", "bash": "sh", "python": "python"}
# Pages other helpers write, linked from README before they reach this branch.
PLANNED_PAGES = {"docs/progress.md", "docs/backups.md", "docs/benchmarks-slow.md", "docs/interruption.md"}
BLOCK_TIMEOUT_S = 60


def runnable_blocks(page: Path) -> list[tuple[str, str]]:
    """(runner, code) of each block whose info string says `test`, in page order."""
    out = []
    for lang, info, code in BLOCK.findall(page.read_text(encoding="utf-8")):
        if "test" in info.split() and lang in RUNNERS:
            out.append((RUNNERS[lang], code))
    return out


def pages_with_examples() -> list[Path]:
    return [page for page in PAGES if runnable_blocks(page)]


def test_the_docs_have_examples_to_run() -> None:
    names = {page.name for page in pages_with_examples()}
    assert {"README.md", "usage-and-output.md", "json.md", "backups-and-sync.md", "python-api.md"} <= names


@pytest.mark.parametrize("page", pages_with_examples(), ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run_as_written(page: Path, tmp_path: Path) -> None:
    blocks = runnable_blocks(page)
    if any(runner == "sh" and re.search(r"\bjq\b", code) for runner, code in blocks) and not shutil.which("jq"):
        pytest.skip("jq is not installed")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("COLUMNS", None)
    for number, (runner, code) in enumerate(blocks, 1):
        argv = (["bash", "-e", "-o", "pipefail", "-c", code] if runner == "sh"
                else [sys.executable, "-c", code])
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=BLOCK_TIMEOUT_S, check=False)
        where = (f"{page.relative_to(ROOT)}, runnable block {number}:\n{code}\n"
                 f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        assert proc.returncode == 0, where
        assert "Traceback (most recent call last)" not in proc.stderr, where


LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_somewhere(page: Path) -> None:
    missing = []
    for target, _anchor in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):
            continue  # a URL
        path = (page.parent / target).resolve()
        rel = os.path.relpath(path, ROOT)
        if not path.exists() and rel not in PLANNED_PAGES:
            missing.append(target)
    assert missing == [], f"{page.name}: links to {missing}"
