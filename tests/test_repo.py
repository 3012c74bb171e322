"""The repository's own rules, checked with the suite (and so by CI):

- the test map in docs/development.md ("## Tests") names every test file (tests/test_*.py,
  tests/mpy/test_*.py, tests/bench/bench_*.py), and every test file it names exists, so a
  newcomer finds the test for a feature in one step;
- `ruff check .` passes, with the rules and the reasons for them in pyproject.toml's
  [tool.ruff].
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "development.md"
TEST_FILES = ("tests/test_*.py", "tests/mpy/test_*.py", "tests/bench/bench_*.py")


def map_section() -> str:
    """The "## Tests" section of docs/development.md."""
    text = GUIDE.read_text()
    start = text.index("\n## Tests\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def test_every_test_file_is_in_the_test_map():
    named = set(re.findall(r"`(tests/[\w/]+\.py)`", map_section()))
    files = {p.relative_to(ROOT).as_posix() for pattern in TEST_FILES for p in ROOT.glob(pattern)}
    missing = sorted(files - named)
    assert not missing, ("test files missing from the test map in docs/development.md "
                         "(## Tests): " + ", ".join(missing))
    gone = sorted(n for n in named if not (ROOT / n).exists())
    assert not gone, "the test map in docs/development.md names files that do not exist: " \
        + ", ".join(gone)


def test_ruff_check_passes():
    """`ruff check .` with the rules of pyproject.toml; ruff is pinned in the `test` extra
    (`make setup` installs it)."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise",
                           "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"ruff check . found problems:\n{proc.stdout}{proc.stderr}", pytrace=False)
