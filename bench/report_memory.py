"""A sales report's worker memory and time at 10,000 and 100,000 orders: memory must not grow with them.

    python -m bench.report_memory [--sizes 10000,100000] [--days 366]

Real processes only: Redis, a Celery worker in the Procfile's worker-bulk topology, and the real
``report_request`` service. For each size the bench fills the database up to that many confirmed
orders (one or two items each, spread evenly over the range), starts a fresh bulk worker (one
prefork child), and runs two reports in that child:

1. a warm-up report over a range without orders: the same imports, the same 366-row PDF, so its
   peak is the child's baseline;
2. the report over the orders.

Memory is the child's peak resident set size as the kernel keeps it (``ru_maxrss``, which the
task returns in its result), so no short peak between two samples is missed; a sampler also
reads the child's RSS with psutil every 20 ms as a cross-check. Growth = peak - baseline. Time
is the ledger's ``finished_at - started_at`` and the bench's own clock from the request to success.

Database and Redis as ``python -m bench`` chooses them (see bench/environment.py); figures go to
var/bench/report_memory.json. A separate script from the suite: it measures a report, not the
job machinery.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from bench.environment import bench_environment
from bench.processes import BULK_TOPOLOGY, OURS, Workers
from tests.support.processes import BASE_DIR, wait_until

OUT_DIR = BASE_DIR / "var" / "bench"
SEED_CHUNK = 5000
#: the range of the reports: a leap year, the longest range a report may cover
YEAR_FROM = date(2024, 1, 1)
#: the warm-up report's range: a year with no orders, same number of table rows
EMPTY_FROM = date(2020, 1, 1)


@contextlib.contextmanager
def explicit_created_at() -> Iterator[None]:
    """Let bulk_create keep the created_at the bench sets (auto_now_add would overwrite it)."""
    from tasks.models import Order

    field = Order._meta.get_field("created_at")
    field.auto_now_add = False
    try:
        yield
    finally:
        field.auto_now_add = True


def seed_orders(*, customer, products, first: int, count: int, spread: int, days: int) -> None:
    """Orders number ``first`` to ``first + count - 1`` of ``spread`` orders spread evenly over ``days`` days."""
    from tasks.models import Order, OrderItem

    start = datetime(YEAR_FROM.year, YEAR_FROM.month, YEAR_FROM.day, tzinfo=UTC)
    step = timedelta(days=days) / spread
    widget, gadget = products
    with explicit_created_at():
        for chunk_start in range(first, first + count, SEED_CHUNK):
            numbers = range(chunk_start, min(first + count, chunk_start + SEED_CHUNK))
            orders = []
            for n in numbers:
                units_a, units_b = 1 + n % 3, n % 2
                orders.append(
                    Order(
                        customer=customer,
                        email="bench@example.com",
                        payment_token="tok_ok",  # noqa: S106 - the sandbox gateway's test token
                        status=Order.Status.CONFIRMED,
                        total=widget.price * units_a + gadget.price * units_b,
                        created_at=start + step * n,
                    )
                )
            Order.objects.bulk_create(orders)
            items = []
            for n, order in zip(numbers, orders, strict=True):
                units_a, units_b = 1 + n % 3, n % 2
                items.append(OrderItem(order=order, product=widget, quantity=units_a, unit_price=widget.price))
                if units_b:
                    items.append(OrderItem(order=order, product=gadget, quantity=units_b, unit_price=gadget.price))
            OrderItem.objects.bulk_create(items)


class RssSampler:
    """Polls the worker's children (the prefork pool) for their resident set size."""

    def __init__(self, worker_pid: int, interval: float = 0.02) -> None:
        import psutil

        self.parent = psutil.Process(worker_pid)
        self.interval = interval
        self.max_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for child in self.parent.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    self.max_rss = max(self.max_rss, child.memory_info().rss)
            time.sleep(self.interval)


def run_report(owner, date_from: date, days: int, worker_pid: int) -> dict[str, Any]:
    from tasks.models import Job
    from tasks.platform.models.jobs import FINISHED_STATES
    from tasks.reports.services import report_request

    before = time.monotonic()
    with RssSampler(worker_pid) as sampler:
        report = report_request(owner=owner, date_from=date_from, days=days, origin="bench")
        job = wait_until(
            lambda: Job.objects.filter(pk=report.job_id, state__in=FINISHED_STATES).first(),
            timeout=900,
            interval=0.05,
            what=f"report job {report.job_id}",
        )
    wall = time.monotonic() - before
    if job.state != Job.State.SUCCEEDED:
        raise SystemExit(f"report job {job.id} ended {job.state}: {job.error}")
    return {
        "orders": job.result["orders"],
        "rows": job.result["rows"],
        "pid": job.result["pid"],
        "peak_rss_mib": job.result["peak_rss_kib"] / 1024,
        "sampled_max_rss_mib": sampler.max_rss / 2**20,
        "ledger_seconds": (job.finished_at - job.started_at).total_seconds(),
        "wall_seconds": wall,
    }


def measure(size: int, owner, days: int) -> dict[str, Any]:
    log_dir = OUT_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with Workers(OURS, BULK_TOPOLOGY, queues=["bulk"], log_dir=log_dir) as workers:
        warmup = run_report(owner, EMPTY_FROM, days, workers.processes[0].pid)
        loaded = run_report(owner, YEAR_FROM, days, workers.processes[0].pid)
    if warmup["pid"] != loaded["pid"]:
        raise SystemExit("the two reports ran in different worker children: the baseline does not apply")
    if loaded["orders"] != size:
        raise SystemExit(f"the report counted {loaded['orders']} orders, {size} were seeded")
    return {
        "orders": size,
        "rows": loaded["rows"],
        "baseline_peak_rss_mib": warmup["peak_rss_mib"],
        "peak_rss_mib": loaded["peak_rss_mib"],
        "growth_mib": loaded["peak_rss_mib"] - warmup["peak_rss_mib"],
        "sampled_max_rss_mib": loaded["sampled_max_rss_mib"],
        "ledger_seconds": loaded["ledger_seconds"],
        "wall_seconds": loaded["wall_seconds"],
        "orders_per_second": size / loaded["ledger_seconds"],
    }


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'orders':>8} {'rows':>5}  {'baseline MiB':>12} {'peak MiB':>9} {'growth MiB':>10}"
        f" {'sampled MiB':>11}  {'job s':>6} {'wall s':>6} {'orders/s':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['orders']:>8,} {r['rows']:>5}  {r['baseline_peak_rss_mib']:>12.1f} {r['peak_rss_mib']:>9.1f}"
            f" {r['growth_mib']:>10.1f} {r['sampled_max_rss_mib']:>11.1f}  {r['ledger_seconds']:>6.2f}"
            f" {r['wall_seconds']:>6.2f} {r['orders_per_second']:>9,.0f}"
        )
    print("(peak: the worker child's ru_maxrss after the report; baseline: after a warm-up report over a")
    print(" year without orders in the same child; sampled: psutil RSS every 20 ms during the report)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.report_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="order counts, ascending (default 10000,100000)")
    parser.add_argument("--days", type=int, default=366, help="days the reports cover (default 366, the most)")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    if sizes != sorted(sizes) or sizes[0] < 1 or not 1 <= args.days <= 366:
        parser.error("--sizes must be ascending and positive, --days 1 to 366")

    os.environ["MEDIA_ROOT"] = str(OUT_DIR / "media")  # the worker writes the PDFs here
    with bench_environment(OUT_DIR / "report_memory.sqlite3") as environment:
        from django.contrib.auth import get_user_model

        from tasks.models import Order, Product

        print(f"redis {environment.redis}, database {environment.database} ({environment.database_url})")

        owner, _ = get_user_model().objects.get_or_create(username="bench-reports")
        # A fresh SQLite file each run; on PostgreSQL, the orders of an earlier run go first.
        Order.objects.filter(customer=owner).delete()
        widget, _ = Product.objects.update_or_create(sku="BENCH-W", defaults={"name": "Widget", "price": Decimal("10")})
        gadget, _ = Product.objects.update_or_create(
            sku="BENCH-G", defaults={"name": "Gadget", "price": Decimal("2.5")}
        )

        results, seeded = [], 0
        for size in sizes:
            t0 = time.monotonic()
            seed_orders(
                customer=owner,
                products=(widget, gadget),
                first=seeded,
                count=size - seeded,
                spread=sizes[-1],
                days=args.days,
            )
            print(f"seeded {size - seeded:,} orders ({size:,} in all) in {time.monotonic() - t0:.1f}s")
            seeded = size
            print(f"report over {size:,} orders on a fresh bulk worker ({BULK_TOPOLOGY.label}):")
            results.append(measure(size, owner, args.days))

        print()
        print_table(results)
        report = {
            "at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "database": environment.database,
            "days": args.days,
            "results": results,
        }
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        (OUT_DIR / "report_memory.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {(OUT_DIR / 'report_memory.json').relative_to(BASE_DIR)}")


if __name__ == "__main__":
    sys.exit(main())
