"""The difference between two payloads, as an edit's reviewer reads it (admin and Flower).

Both payloads are written as indented JSON with sorted keys, one field a line, and compared with
the standard library's ``difflib``: a unified diff, each line tagged so a page can colour it.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DiffLine:
    #: "added", "removed", "context" or "header" (a hunk's position line)
    kind: str
    text: str


def payload_text(payload: Any) -> list[str]:
    """A payload as the diff shows it: indented JSON, sorted keys, one line per field."""
    return json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False, default=str).splitlines()


def payload_diff(before: Any, after: Any) -> list[DiffLine]:
    """The lines of the unified diff from ``before`` to ``after`` (every line kept as context),
    without the file headers; empty when they are equal."""
    old, new = payload_text(before), payload_text(after)
    lines = difflib.unified_diff(old, new, lineterm="", n=max(len(old), len(new)))
    diff = []
    for line in lines:
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("@@"):
            diff.append(DiffLine("header", line))
        elif line.startswith("+"):
            diff.append(DiffLine("added", line))
        elif line.startswith("-"):
            diff.append(DiffLine("removed", line))
        else:
            diff.append(DiffLine("context", line))
    return diff
