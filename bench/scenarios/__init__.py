"""The scenarios `python -m bench` runs, in order: name -> (one run, what to do after the last run).

Scenario modules import Django models, so they are imported only once Django is set up.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

#: name -> (module, run function, finishing function or None)
SCENARIOS: dict[str, tuple[str, str, str | None]] = {
    "drain_noop": ("drain", "run_noop", None),
    "drain_io": ("drain", "run_io", "finish_io"),
    "enqueue": ("enqueue", "run", None),
    "group": ("group", "run", None),
    "memory": ("memory", "run", None),
    "latency": ("latency", "run", None),
    "costs": ("costs", "run", None),
    "flow": ("flow", "run", None),
    "fairness": ("fairness", "run", None),
    "search": ("search", "run", None),
    "isolation": ("isolation", "run", None),
    "make_run": ("make_run", "run", None),
    "ledger_size": ("ledger_size", "run", None),
}


def scenario(name: str) -> tuple[Callable, Callable | None]:
    module_name, run, finish = SCENARIOS[name]
    module = import_module(f"bench.scenarios.{module_name}")
    return getattr(module, run), getattr(module, finish) if finish else None
