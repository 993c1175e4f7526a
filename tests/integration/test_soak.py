"""The fault soak's short version (tests/soak, `make soak` for the long one): five hosts in network
namespaces, a Redis and a PostgreSQL of its own, a steady load, and every kind of fault once in a
seeded order. Nothing may be lost, only poison jobs may die, every effect run twice must have
been applied once, no schedule tick may fire twice, and every fault must be recovered from within
a minute."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.soak.faults import KINDS
from tests.soak.network import can_make_hosts
from tests.support.processes import BASE_DIR

#: CI's seed; SOAK_SEED=<n> replays another one
SEED = int(os.environ.get("SOAK_SEED", "25"))

pytestmark = pytest.mark.skipif(can_make_hosts() is not None, reason=f"the soak cannot run here: {can_make_hosts()}")


@pytest.mark.timeout(1200)
def test_every_fault_once_loses_nothing(tmp_path):
    report_path = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, "-m", "tests.soak", "--short", "--seed", str(SEED), "--report", str(report_path)],
        cwd=BASE_DIR,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=1100,
    )
    print(run.stdout[-6000:], run.stderr[-3000:])
    assert report_path.exists(), f"the soak ended without a report (exit {run.returncode})"
    report = json.loads(report_path.read_text())

    assert report["failures"] == []
    assert report["counts"]["lost"] == 0
    assert report["counts"]["dead (other)"] == 0
    assert report["counts"]["succeeded"] > 500
    assert report["counts"]["dead (designed to die)"] > 0
    assert sorted(fault["kind"] for fault in report["faults"]) == sorted(KINDS)
    assert all(seconds is not None and seconds <= 60 for seconds in report["recovery"].values())
    assert report["ticks"]["fired_twice"] == 0 and report["ticks"]["missing_unexplained"] == 0
    assert run.returncode == 0
