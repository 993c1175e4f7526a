"""The README documents every environment variable the platform reads."""

import re

import celeryconfig  # noqa: F401 - importing it records the Celery settings' variables
from project.env import READ
from tests.support.processes import BASE_DIR

SOURCES = [
    "Procfile",
    "flowerconfig.py",
    "project/launcher.py",
    "project/localconfig.py",
    "tasks/management/commands/ensure_admin.py",
]
NAME = re.compile(r"""\$\{([A-Z][A-Z0-9_]+)|environ(?:\.get\(|\[)["']([A-Z][A-Z0-9_]+)""")


def test_every_environment_variable_is_in_the_readme_table():
    names = set(READ)
    for source in SOURCES:
        for match in NAME.finditer((BASE_DIR / source).read_text()):
            names.add(match.group(1) or match.group(2))
    table = (BASE_DIR / "README.md").read_text().split("## Environment variables", 1)[1]

    undocumented = sorted(name for name in names if f"| `{name}` |" not in table)

    assert len(names) > 15
    assert undocumented == []
