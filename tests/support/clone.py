"""A fresh copy of this working tree, and the bare environment a newcomer's terminal has: how a
test or the bench runs `make run` as a first-time user would."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support.processes import BASE_DIR


def fresh_clone(target: Path) -> Path:
    """The working tree's tracked and untracked-but-not-ignored files (no var/, no .venv), as a
    clone with these changes would have them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=BASE_DIR,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = BASE_DIR / name
        if not source.is_file():  # deleted in the working tree
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name)
    return target


def bare_env(**env: str) -> dict[str, str]:
    """An environment with none of the platform's settings: what a new terminal has."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8", **env}
