"""`run`, `run_sync` and `iter` keep pydantic-ai's typed signatures: checked with mypy on a sample module.

The package itself passes mypy too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).parent / "typing" / "dbos_agent_types.py"
PACKAGE = Path(__file__).parents[1] / "src" / "dbos_pydantic_ai"

# mypy on pydantic-ai takes 40 s alone and 90 s beside three other pytest workers: above the suite's default 120 s.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for both checks: the second reuses what the first learnt of pydantic-ai."""
    return tmp_path_factory.mktemp("mypy_cache")


def run_mypy(path: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache), "--follow-imports=silent", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_runs_are_typed_like_the_wrapped_agent(mypy_cache: Path) -> None:
    result = run_mypy(SAMPLE, mypy_cache)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_fails_on_a_wrong_type(tmp_path: Path, mypy_cache: Path) -> None:
    """The check above can fail: the same sample with one wrong expectation is an error."""
    wrong = tmp_path / "wrong_types.py"
    wrong.write_text(SAMPLE.read_text().replace("AgentRunResult[int]", "AgentRunResult[str]"))
    result = run_mypy(wrong, mypy_cache)
    assert result.returncode == 1
    assert 'Expression is of type "AgentRunResult[int]"' in result.stdout


def test_the_package_passes_mypy(mypy_cache: Path) -> None:
    result = run_mypy(PACKAGE, mypy_cache)
    assert result.returncode == 0, result.stdout + result.stderr
