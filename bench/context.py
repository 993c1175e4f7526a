"""What every scenario gets: the sizes to measure at, where logs go, the bench user, and a reset
between measurements."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.environment import empty_broker, ledger_clear
from bench.processes import api_token


@dataclass(frozen=True)
class Sizes:
    """How many jobs, samples and seconds each scenario measures."""

    drain_batched: int = 10_000
    #: a drain of 1,000 was over before raw Celery's start-up stopped deciding its figure
    drain_single: int = 5_000
    #: 200 messages of 100 jobs: a drain of 5,000 (50 messages for 32 threads) lasted 1.5 s, much of
    #: it the consumers' start and a last wave with half the threads idle, not the throughput
    drain_io: int = 20_000
    io_ms: float = 2
    enqueue_single: int = 2_000
    enqueue_block: int = 250
    enqueue_many: int = 10_000
    enqueue_many_call: int = 1_000
    api_batches: int = 10
    group_members: int = 10_000
    memory_small: int = 1_000
    memory_large: int = 100_000
    latency_samples: int = 50
    api_rate: float = 100
    api_seconds: float = 20
    backlog: int = 10_000
    critical_samples: int = 40
    cost_jobs: int = 1_000
    #: ops.account jobs run under their concurrency limit (scenario flow)
    flow_limited: int = 600
    #: ops.paced jobs run under their rate (scenario flow)
    flow_paced: int = 100
    #: user A's bulk jobs waiting while user B's are measured (scenario fairness)
    fair_backlog: int = 10_000
    #: user B's jobs measured, idle and under A's backlog (scenario fairness)
    fair_samples: int = 20
    #: jobs in the ledger searched (scenario search), and searches timed of each kind
    search_rows: int = 1_000_000
    search_samples: int = 9
    #: confirmed orders each sales report of the isolation scenario covers
    isolation_orders: int = 10_000
    #: critical jobs' starts measured in each phase of the isolation scenario (enough for a p99)
    isolation_critical_samples: int = 100
    #: jobs `make run` runs end to end, posted through the API in batches (scenario make_run)
    make_run_jobs: int = 3_000
    #: generated finished jobs in the ledger (scenario ledger_size), of which ledger_expired are past
    #: their retention
    ledger_rows: int = 10_000_000
    ledger_expired: int = 1_000_000
    #: job_enqueue calls timed, and no-op jobs drained in each of ledger_drains drains, on each
    #: ledger (scenario ledger_size): a median of drains long enough that the worker's switch to
    #: the queue and a burst of machine noise do not decide the figure
    ledger_enqueue: int = 2_000
    ledger_drain: int = 3_000
    ledger_drains: int = 3
    #: GET /api/jobs requests timed of each list (scenario ledger_size)
    ledger_api_samples: int = 30
    #: enqueues a second, one at a time, at rest and while retention runs, and how long at rest
    ledger_enqueue_rate: float = 20
    ledger_quiet_seconds: float = 30
    #: a retention still running after this long is stopped (its duration then extrapolated)
    ledger_retention_seconds: float = 900


#: `--smoke`: every scenario once, at sizes that only show it works
SMOKE = Sizes(
    drain_batched=400,
    drain_single=100,
    drain_io=400,
    enqueue_single=40,
    enqueue_block=20,
    enqueue_many=400,
    enqueue_many_call=200,
    api_batches=2,
    group_members=200,
    memory_small=100,
    memory_large=400,
    latency_samples=5,
    api_rate=50,
    api_seconds=1,
    backlog=200,
    critical_samples=5,
    cost_jobs=200,
    flow_limited=60,
    flow_paced=10,
    fair_backlog=200,
    fair_samples=3,
    search_rows=2_000,
    search_samples=3,
    isolation_orders=200,
    isolation_critical_samples=5,
    make_run_jobs=100,
    ledger_rows=3_000,
    ledger_expired=1_000,
    ledger_enqueue=40,
    ledger_drain=50,
    ledger_drains=1,
    ledger_api_samples=3,
    ledger_quiet_seconds=1,
    ledger_retention_seconds=60,
)


@dataclass
class Bench:
    sizes: Sizes
    log_dir: Path
    #: a Redis of its own where the platform's processes count their SQL statements
    counter_url: str
    #: the user the bench's jobs belong to (the API's bearer token is this user's)
    owner: Any
    smoke: bool = False
    _token: str | None = None

    def api_token(self) -> str:
        """A bearer token of the bench user, made once by the create_api_token command."""
        if self._token is None:
            self._token = api_token(self.owner.username)
        return self._token

    def reset(self) -> None:
        """Nothing waiting in Redis, nothing in the ledger: the next measurement starts clean."""
        empty_broker()
        ledger_clear()
