"""The benchmark suite runs end to end: `python -m bench --smoke` measures every scenario once, at
tiny sizes, and writes its table, its figures and its plots."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support.processes import BASE_DIR, BIN_DIR

#: a figure of every scenario, each of which must have come out as a number
EXPECTED_FIGURES = {
    "drain_noop.batched.prefork-c2",
    "drain_noop.single.prefork-c2",
    # the second counterpart: Celery + django-celery-results, its task states in the database
    "drain_noop.single_dcr.prefork-c2",
    "drain_io.recommended",
    "enqueue.single",
    "enqueue.many",
    "enqueue.api_batch",
    "group.callback",
    "memory.rss",
    "latency.enqueue_start_p50",
    "latency.api_p50",
    "latency.api_p99",
    "latency.critical_p95",
    "costs.redis_single",
    "costs.redis_batched",
    "costs.db_single",
    "costs.db_batched",
    "flow.limit_running",
    "flow.limit_drain",
    "flow.rate",
    "flow.rate_busiest_second",
    "flow.limit_cost",
    "fairness.b_start_p95",
    "fairness.b_start_p50",
    "search.payload_p50",
    "search.error_p50",
    "isolation.post_p99",
    "isolation.get_p99",
    "isolation.critical_p99",
    "make_run.api_batch",
}


# A smoke run takes about three minutes on an idle 2-core machine (`make run`'s start-up is a minute
# of it); the limit leaves room for a busy one.
@pytest.mark.timeout(480)
def test_smoke_run_writes_every_figure_and_plot(tmp_path):
    out = tmp_path / "results"
    env = {key: value for key, value in os.environ.items() if key != "BENCH_REDIS_URL"}
    # A database of its own, never the test database (the bench empties the ledger between
    # measurements); without BENCH_REDIS_URL the bench starts a Redis of its own, not the tests'.
    env["BENCH_DATABASE_URL"] = f"sqlite:///{tmp_path / 'bench.sqlite3'}"
    argv = [str(BIN_DIR / "python"), "-m", "bench", "--smoke", "--out", str(out)]
    done = subprocess.run(argv, cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=470, check=False)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"

    figures = json.loads((out / "latest.json").read_text())["figures"]
    assert {figure["key"] for figure in figures} >= EXPECTED_FIGURES
    versus = next(figure for figure in figures if figure["key"] == "drain_noop.single_dcr.prefork-c2")
    assert versus["baseline"] == "Celery + django-celery-results", versus
    # the same runs of ours as the figure against raw Celery; its own drain timed from its TaskResult rows
    single = next(figure for figure in figures if figure["key"] == "drain_noop.single.prefork-c2")
    assert versus["ours"]["runs"] == single["ours"]["runs"], (versus, single)
    assert all(run["dcr_seconds"] > 0 for run in versus["details"]), versus
    for figure in figures:
        assert isinstance(figure["ours"]["median"], int | float), figure
        if figure["baseline"] is not None:
            assert isinstance(figure["raw"]["median"], int | float), figure
            assert figure["ratio"] is not None, figure

    table = (out / "latest.md").read_text()
    for figure in figures:
        assert f"| {figure['label']} ({figure['unit']}) |" in table
    for plot in ("throughput.png", "latency.png"):
        data = (out / plot).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, plot
