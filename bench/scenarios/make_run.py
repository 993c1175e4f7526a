"""`make run` end to end, as a newcomer runs it: jobs enqueued through POST /api/jobs/batch and
waited for until every one succeeded, on the embedded defaults (SQLite, the Procfile's workers),
against raw Celery's ``.delay()`` loop and drain measured in the same run.

Raw first: a raw worker in the Procfile's worker-default topology consumes while the bench sends
``make_run_jobs`` no-op tasks with ``.delay()`` one by one; done when the queue is empty and no
delivery is left unacknowledged. Then ours: `make run` in a fresh copy of the working tree, with
nothing exported but the ports, the bench's Redis and no API rate limit; once it is ready, the
bench posts the jobs in batches of the API's largest size and polls GET /api/queues until the
default queue counts them all succeeded. Each side's time runs from its first send to its last
success; `make run`'s start-up is not timed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench.context import Bench
from bench.figures import Results, ratio_at_least
from bench.jobs import drain_timeout, wait_raw_drained
from bench.processes import RAW, Topology, Workers
from tests.support.clone import bare_env, fresh_clone
from tests.support.processes import BIN_DIR, ManagedProcess, free_port, wait_until

#: the Procfile's worker-default: one prefork worker, WORKER_DEFAULT_CONCURRENCY processes
DEFAULT_WORKER = Topology("procfile-default", "prefork", int(os.environ.get("WORKER_DEFAULT_CONCURRENCY", 16)))
GOAL = ratio_at_least(0.8)
#: jobs a POST /api/jobs/batch carries (the API's largest batch)
BATCH = 1000


def raw_delay_and_drain(bench: Bench, jobs: int) -> float:
    from bench.raw_app import noop

    with Workers(RAW, DEFAULT_WORKER, queues=[RAW.queue], log_dir=bench.log_dir):
        start = time.perf_counter()
        for _ in range(jobs):
            noop.delay()
        wait_raw_drained(timeout=drain_timeout(jobs))
        seconds = time.perf_counter() - start
    bench.reset()
    return seconds


def start_make_run(clone: Path, log_dir: Path) -> tuple[ManagedProcess, str]:
    """`make run` in ``clone``, on this virtualenv as it is (-o: not reinstalled); its web's URL."""
    import requests

    venv = BIN_DIR.parent
    ports = {"WEB_PORT": free_port(), "FLOWER_PORT": free_port(), "MAIL_CATCHER_PORT": free_port()}
    env = bare_env(
        **{name: str(port) for name, port in ports.items()},
        REDIS_URL=os.environ["REDIS_URL"],
        API_RATE_LIMIT_PER_MINUTE="0",
    )
    argv = ["make", "-C", str(clone), "-o", f"{venv}/.installed", "run", f"VENV={venv}"]
    run = ManagedProcess(argv, env, "make run", log_path=log_dir / "make-run.log").start()
    web = f"http://127.0.0.1:{ports['WEB_PORT']}"

    def ready() -> bool:
        if not run.alive():
            raise SystemExit(f"make run exited:\n{run.log()[-3000:]}")
        try:
            return requests.get(f"{web}/readyz", timeout=2).ok
        except requests.RequestException:
            return False

    wait_until(ready, timeout=300, interval=0.5, what="make run's web to be ready")
    return run, web


def admin_token(clone: Path) -> str:
    """The README's `manage.py create_api_token admin`, in the clone."""
    made = subprocess.run(
        [str(BIN_DIR / "python"), "manage.py", "create_api_token", "admin"],
        cwd=clone,
        env=bare_env(REDIS_URL=os.environ["REDIS_URL"]),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if made.returncode:
        raise SystemExit(f"create_api_token failed in the clone:\n{made.stderr}")
    return made.stdout.strip().splitlines()[-1]


def api_batch_and_wait(web: str, token: str, jobs: int) -> float:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"

    def succeeded() -> int:
        queues = session.get(f"{web}/api/queues", timeout=30).json()
        return next(queue["succeeded_24h"] for queue in queues["queues"] if queue["queue"] == "default")

    before = succeeded()
    start = time.perf_counter()
    for first in range(0, jobs, BATCH):
        body = {"jobs": [{"task": "ops.noop"}] * min(BATCH, jobs - first)}
        answer = session.post(f"{web}/api/jobs/batch", json=body, timeout=60)
        if answer.status_code != 202:
            raise SystemExit(f"POST /api/jobs/batch answered {answer.status_code}: {answer.text[:500]}")
    wait_until(lambda: succeeded() - before >= jobs, timeout=drain_timeout(jobs), interval=0.25, what="every job")
    return time.perf_counter() - start


def run(bench: Bench, results: Results) -> None:
    jobs = bench.sizes.make_run_jobs
    raw_seconds = raw_delay_and_drain(bench, jobs)
    with tempfile.TemporaryDirectory(prefix="bench-make-run-") as directory:
        clone = fresh_clone(Path(directory) / "clone")
        make_run, web = start_make_run(clone, bench.log_dir)
        try:
            ours_seconds = api_batch_and_wait(web, admin_token(clone), jobs)
        finally:
            make_run.stop(signal.SIGINT, timeout=40, group=True)  # Ctrl-C, as a newcomer stops it

    bench.reset()
    figure = results.figure(
        "make_run.api_batch",
        f"`make run` end to end (SQLite): {jobs:,} no-op jobs by POST /api/jobs/batch until all succeeded, "
        f"vs raw Celery's .delay() loop and drain ({DEFAULT_WORKER.label})",
        "jobs/s",
        goal=GOAL,
    )
    figure.record(jobs / ours_seconds, jobs / raw_seconds, ours_seconds=ours_seconds, raw_seconds=raw_seconds)
    print(f"    make run: {jobs / ours_seconds:,.0f} jobs/s, raw .delay()+drain {jobs / raw_seconds:,.0f} jobs/s")
