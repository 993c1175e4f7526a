"""Enqueue throughput against a raw ``.delay()`` loop, with no worker consuming.

Each side runs in alternating blocks (raw, then ours), so a burst of machine noise hits both:

- ``job_enqueue`` one at a time, each in its own transaction (autocommit, as a view does);
- ``job_enqueue_many``, a call per block;
- ``POST /api/jobs/batch`` to the web process started from the Procfile, a request per block.

Ours' blocks end when the calls return: the engine has then written, published and marked every
job, so no write of theirs spills into the raw block after them.
"""

from __future__ import annotations

import json
import time

from bench.context import Bench
from bench.figures import Results, ratio_at_least
from bench.jobs import NOOP, ours_enqueue, ours_enqueue_many, raw_delay
from bench.processes import start_web

WARM_UP = 20


class Stopwatch:
    """Seconds spent in the timed blocks, added up."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def time(self, call) -> None:
        start = time.perf_counter()
        call()
        self.seconds += time.perf_counter() - start


def run(bench: Bench, results: Results) -> None:
    sizes, owner = bench.sizes, bench.owner
    # Imports, connections and queue declarations of both paths, before anything is timed.
    raw_delay(WARM_UP)
    for _ in range(WARM_UP):
        ours_enqueue(owner)
    ours_enqueue_many(WARM_UP * 10, owner)

    raw, ours = Stopwatch(), Stopwatch()
    for start in range(0, sizes.enqueue_single, sizes.enqueue_block):
        block = min(sizes.enqueue_block, sizes.enqueue_single - start)
        raw.time(lambda block=block: raw_delay(block))
        ours.time(lambda block=block: [ours_enqueue(owner) for _ in range(block)])
    record(results, "single", "job_enqueue, one job a transaction", sizes.enqueue_single, ours, raw, 0.6)

    raw, ours = Stopwatch(), Stopwatch()
    call_size = sizes.enqueue_many_call
    for start in range(0, sizes.enqueue_many, call_size):
        block = min(call_size, sizes.enqueue_many - start)
        raw.time(lambda block=block: raw_delay(block))
        ours.time(lambda block=block: ours_enqueue_many(block, owner, call_size=block))
    record(results, "many", f"job_enqueue_many, {call_size:,} jobs a call", sizes.enqueue_many, ours, raw, 10)

    web, base_url = start_web(bench.log_dir)
    try:
        raw, ours = Stopwatch(), Stopwatch()
        post = batch_poster(base_url, bench.api_token(), call_size)
        post()  # warm-up: the connection, the first request's imports
        for _ in range(sizes.api_batches):
            raw.time(lambda: raw_delay(call_size))
            ours.time(post)
        jobs = sizes.api_batches * call_size
        record(results, "api_batch", f"POST /api/jobs/batch, {call_size:,} jobs a request", jobs, ours, raw, 10)
    finally:
        web.stop()
    bench.reset()


def batch_poster(base_url: str, token: str, size: int):
    import requests

    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    body = json.dumps({"jobs": [{"task": NOOP}] * size})

    def post() -> None:
        response = session.post(f"{base_url}/api/jobs/batch", data=body, timeout=60)
        if response.status_code != 202 or len(response.json()["jobs"]) != size:
            raise SystemExit(f"POST /api/jobs/batch answered {response.status_code}: {response.text[:500]}")

    return post


def record(results: Results, key: str, what: str, jobs: int, ours: Stopwatch, raw: Stopwatch, goal: float) -> None:
    figure = results.figure(
        f"enqueue.{key}", f"Enqueue throughput: {what}, vs a .delay() loop", "jobs/s", goal=ratio_at_least(goal)
    )
    ours_rate, raw_rate = jobs / ours.seconds, jobs / raw.seconds
    figure.record(ours_rate, raw_rate, jobs=jobs, ours_seconds=ours.seconds, raw_seconds=raw.seconds)
    print(f"    {key}: ours {ours_rate:,.0f}/s, raw {raw_rate:,.0f}/s")
