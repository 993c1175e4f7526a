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
