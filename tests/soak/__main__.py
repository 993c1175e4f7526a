"""python -m tests.soak [--seed N] [--duration S] [--short]: the randomized fault soak (root only).

The seed is printed first: the same seed replays the same faults, on the same hosts, at the same
offsets. ``--short`` injects every kind of fault once, in the seed's order (CI's version);
otherwise faults of random kinds follow each other for ``--duration`` seconds. Exits 0 when the
report finds nothing wrong, 1 when it does, 2 when this machine cannot make hosts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import requests

from tests.soak.cluster import WEB_PORT, Cluster, Service, host_roles
from tests.soak.network import Network, can_make_hosts
from tests.soak.services import SoakPostgres, SoakRedis
from tests.support.processes import BIN_DIR, wait_until

SCHEDULE_NAME = "soak-tick"
#: how long, after the load stops and every process is healthy, jobs may take to finish
SETTLE_SECONDS = 180


def soak_env(*, redis_url: str, database_url: str, web_address: str, soak_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        DJANGO_DEBUG="false",
        DJANGO_ALLOWED_HOSTS=f"{web_address},127.0.0.1,localhost",
        DJANGO_TASK_MODULES="tests.soak.tasks",
        SOAK_DIR=str(soak_dir),
        API_RATE_LIMIT_PER_MINUTE="100000",
        API_MAX_ACTIVE_JOBS="100000",
        PATH=os.pathsep.join([str(BIN_DIR), env.get("PATH", "")]),
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("DJANGO_SECRET_KEY", "soak-only-secret-key")
    # The shop's payments are not part of the soak: no sandbox, with DEBUG off as in production.
    env.update(
        PAYMENT_SANDBOX="false",
        PAYMENT_GATEWAY_URL="http://127.0.0.1:9/unused",
        PAYMENT_GATEWAY_API_KEY="soak-unused",
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        MAIL_CATCHER_DIR="",
    )
    return env


def prepare_database() -> str:
    """Migrate, and make the soak's operator, its token and the 2 s schedule; returns the token."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from tasks.platform.models import ApiToken

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_superuser("soak", "soak@localhost", None)
    every, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name=SCHEDULE_NAME, task="soak.tick", interval=every, kwargs="{}")
    return ApiToken.issue(user)[1]


def all_done(intents) -> bool:
    from django.db import close_old_connections

    from tasks.platform.models import Job
    from tasks.platform.models.jobs import FINISHED_STATES

    close_old_connections()
    pending = Job.objects.filter(idempotency_key__in=list(intents)).exclude(state__in=FINISHED_STATES)
    return not pending.exists()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--duration", type=float, default=600, help="seconds of load and faults (not with --short)")
    parser.add_argument("--short", action="store_true", help="every kind of fault once, in the seed's order")
    parser.add_argument("--report", type=Path, default=None, help="also write the report here, as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the soak's directory (logs, data)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    print(
        f"soak seed {seed} (replay: python -m tests.soak --seed {seed}{' --short' if args.short else ''})", flush=True
    )
    if why := can_make_hosts():
        print(f"the soak cannot run here: {why}", file=sys.stderr)
        return 2
    rng = random.Random(seed)
    soak_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    os.chmod(soak_dir, 0o755)  # noqa: S103 - PostgreSQL runs as its own user, below it
    (soak_dir / "effects").mkdir()
    network = Network(list(host_roles(1)))
    network.setup()
    redis_server, postgres = SoakRedis(soak_dir / "redis"), SoakPostgres(soak_dir / "postgres" / "data")
    cluster = None
    try:
        redis_server.start()
        postgres.start()
        web = network.hosts["web"]
        env = soak_env(
            redis_url=redis_server.url, database_url=postgres.url, web_address=web.address, soak_dir=soak_dir
        )
        os.environ.update(env)
        import django

        django.setup()
        token = prepare_database()
        cluster = Cluster(
            [
                Service(network.hosts[host], role, argv, env, soak_dir / f"{host}-{role}.log")
                for host, roles in host_roles(worker_concurrency=2).items()
                for role, argv in roles.items()
            ]
        )
        cluster.start()
        api_url = f"http://{web.address}:{WEB_PORT}/api"
        wait_until(lambda: _ready(web.address), timeout=120, what="the web host's /readyz")
        return _soak(args, seed, rng, soak_dir, network, redis_server, postgres, cluster, api_url, token)
    finally:
        if cluster is not None:
            cluster.stop()
        redis_server.stop()
        postgres.stop()
        network.teardown()
        print(f"logs and data: {soak_dir}" if args.keep else "", flush=True)
        if not args.keep:
            import shutil

            shutil.rmtree(soak_dir, ignore_errors=True)


def _ready(address: str) -> bool:
    try:
        return requests.get(f"http://{address}:{WEB_PORT}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _soak(args, seed, rng, soak_dir, network, redis_server, postgres, cluster, api_url, token) -> int:
    from tests.soak import report as soak_report
    from tests.soak.faults import KINDS, Faults
    from tests.soak.load import Load

    wait_until(lambda: _ticked(soak_dir), timeout=120, what="beat's first tick to run")
    since = time.time()
    load = Load(api_url, token, random.Random(rng.random()))
    load.start(single_every=0.25, batch_every=2, batch_size=10, workflow_every=3, poison_every=10)
    faults = Faults(cluster, network, redis_server, postgres, random.Random(rng.random()))
    started = time.monotonic()
    if args.short:
        plan = list(KINDS)
        rng.shuffle(plan)
        faults.run(plan, gap=(8, 14)).join()
        time.sleep(20)  # the load goes on after the last fault
    else:
        faults.run(None, gap=(10, 40))
        time.sleep(max(0.0, args.duration - (time.monotonic() - started)))
    faults.stop()
    load.stop()
    print(f"load and faults stopped after {time.monotonic() - started:.0f} s; settling", flush=True)
    wait_until(lambda: cluster.all_alive() and redis_server.answers() and _ready(network.hosts["web"].address),
               timeout=120, what="every process healthy")  # fmt: skip
    time.sleep(3)  # the load's last retries
    settled = _wait(lambda: all_done(load.intents), SETTLE_SECONDS)
    print(f"settled: {settled}", flush=True)
    report = soak_report.build(
        seed=seed, since=since, intents=load.intents, faults=faults.injected, soak_dir=soak_dir, refusals=load.refusals
    )
    print(report.table(), flush=True)
    if args.report:
        args.report.write_text(report.to_json())
    return 1 if report.failures else 0


def _ticked(soak_dir: Path) -> bool:
    log = soak_dir / "executions.jsonl"
    return log.exists() and '"tick/' in log.read_text()


def _wait(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the database may still be coming back
            if predicate():
                return True
        time.sleep(2)
    return False


if __name__ == "__main__":
    sys.exit(main())
