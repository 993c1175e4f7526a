"""The architecture contract (pyproject.toml's [tool.importlinter]) holds: the layers, no import cycles,
the platform apart from the shop. `make lint` runs the same check."""

import subprocess
import sys
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_the_import_contracts_are_kept():
    result = subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--no-logo"],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    if result.returncode != 0 or " 0 broken." not in result.stdout:
        pytest.fail(f"lint-imports exited {result.returncode}:\n{result.stdout}{result.stderr}", pytrace=False)


def test_no_database_vendor_check_outside_the_engine():
    """Only the job engine picks code by database vendor (and migrations, which must); everything
    else asks Django's feature flags or stays portable."""
    allowed = (BASE_DIR / "tasks" / "platform" / "engine", BASE_DIR / "tasks" / "migrations")
    checks = [
        f"{path.relative_to(BASE_DIR)}:{number}: {line.strip()}"
        for root in (BASE_DIR / "tasks", BASE_DIR / "project")
        for path in root.rglob("*.py")
        if not path.is_relative_to(allowed[0]) and not path.is_relative_to(allowed[1]) and "tests" not in path.parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ".vendor" in line
    ]
    assert checks == []
