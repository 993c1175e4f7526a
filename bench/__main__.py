"""The benchmark suite of issue #8: the platform against raw Celery on the same machine.

    python -m bench [--runs N] [--only SCENARIO ...] [--smoke] [--out DIR]

Every scenario runs N times (default 5); in each run the raw-Celery counterpart is measured
first, then ours, with the same sizes and worker topology, and each figure is the median of
the runs. The drain of no-op jobs sent one a message has a second counterpart, Celery +
django-celery-results (bench/dcr_app.py), measured between the two. Real processes only: a
Redis the bench starts, `celery worker` processes, the web process from the Procfile; nothing is
mocked and nothing runs eagerly.

Writes latest.md, latest.json and PNG plots to bench/results/ (a full run), var/bench/ (--only)
or a temporary directory (--smoke: every scenario once, at tiny sizes). Worker and web logs go
to var/bench/logs/ (with --smoke, next to the results). See bench/environment.py for the
database and Redis it uses (BENCH_DATABASE_URL, BENCH_REDIS_URL), bench/context.py for the sizes
(--size NAME=VALUE changes one).

To see where a figure's time goes, profile a worker while a scenario runs (``py-spy record
--subprocesses --pid <worker pid> -o profile.svg``), or the bench process itself with pyinstrument
(``pyinstrument -m bench --only enqueue --runs 1``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

from bench.context import SMOKE, Bench, Sizes
from bench.environment import bench_environment
from bench.figures import Results
from bench.scenarios import SCENARIOS, scenario
from tests.support.processes import BASE_DIR, start_bundled_redis

RESULTS_DIR = BASE_DIR / "bench" / "results"
VAR_DIR = BASE_DIR / "var" / "bench"
BENCH_USER = "bench"


def bench_operator():
    """The bench's user: an operator (the ops.* tasks) with no rate or active-job cap, as a service
    account the batch API exists for is given in admin."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    from tasks.models import EnqueueLimits
    from tasks.platform.permissions import OPERATOR_PERMISSION

    owner, _ = get_user_model().objects.update_or_create(username=BENCH_USER, defaults={"is_staff": True})
    app_label, codename = OPERATOR_PERMISSION.split(".")
    owner.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    EnqueueLimits.objects.update_or_create(user=owner, defaults={"rate_per_minute": 0, "max_active_jobs": 0})
    return owner


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per figure, the median is reported (default 5)")
    parser.add_argument("--only", action="append", choices=list(SCENARIOS), help="run this scenario only (repeatable)")
    parser.add_argument("--smoke", action="store_true", help="every scenario once, at tiny sizes, into a temp dir")
    parser.add_argument("--out", type=Path, help="where the results go")
    parser.add_argument(
        "--size", action="append", default=[], metavar="NAME=VALUE", help="change a size (see bench/context.py)"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    runs = 1 if args.smoke else args.runs
    try:
        sizes = replace(SMOKE if args.smoke else Sizes(), **dict(size_setting(text) for text in args.size))
    except (TypeError, ValueError) as exc:
        parser.error(f"--size: {exc}")
    names = args.only or list(SCENARIOS)
    if args.out:
        out = args.out
    elif args.smoke:
        out = Path(tempfile.mkdtemp(prefix="bench-smoke-"))
    else:
        out = VAR_DIR if args.only else RESULTS_DIR
    log_dir = out / "logs" if args.smoke else VAR_DIR / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)

    started, load_at_start = time.monotonic(), os.getloadavg()[0]
    with bench_environment(sqlite_path=VAR_DIR / "bench.sqlite3") as environment:
        counter = start_bundled_redis()
        try:
            bench = Bench(sizes, log_dir, counter.url, bench_operator(), smoke=args.smoke)
            bench.reset()
            print(f"database {environment.database} ({environment.database_url}), redis {environment.redis}")
            results = Results()
            timings: dict[str, list[float]] = {}
            for name in names:
                run, finish = scenario(name)
                for number in range(1, runs + 1):
                    print(f"{name}: run {number} of {runs}", flush=True)
                    run_started = time.monotonic()
                    run(bench, results)
                    timings.setdefault(name, []).append(round(time.monotonic() - run_started, 1))
                    print(f"  ({timings[name][-1]:.0f} s)")
                if finish:
                    finish(bench, results)
        finally:
            counter.stop()
        details = describe(environment, sizes, runs, timings, load_at_start, time.monotonic() - started)
    write(out, results, details)


def size_setting(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    number = float(value)
    return name, int(number) if number.is_integer() else number


def describe(environment, sizes: Sizes, runs: int, timings: dict, load_at_start: float, seconds: float) -> dict:
    from importlib.metadata import version

    import celery
    import django
    import kombu

    from bench.processes import WORKER_FLAGS

    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average": {"start": load_at_start, "end": os.getloadavg()[0]},
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "django_celery_results": version("django-celery-results"),
        "django": django.get_version(),
        "database": environment.database,
        "redis": environment.redis,
        "worker_flags": WORKER_FLAGS,
        "runs": runs,
        "duration_seconds": round(seconds, 1),
        "seconds_per_run": timings,
        "sizes": asdict(sizes),
    }


def write(out: Path, results: Results, details: dict) -> None:
    from bench.plots import write_plots
    from bench.report import write_json, write_markdown

    plots = write_plots(out, results)
    write_json(out / "latest.json", results, details)
    write_markdown(out / "latest.md", results, details, plots)
    print(f"\nresults in {out}: latest.md, latest.json, {', '.join(plot.name for plot in plots)}")
    print((out / "latest.md").read_text().split("\n## ")[0])


if __name__ == "__main__":
    sys.exit(main())
