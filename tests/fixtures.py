"""Fixtures that start the platform's real processes against the test database and Redis, for every
test: those under tests/ and each domain's own under tasks/<domain>/tests/ (conftest.py loads them)."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest
import redis
from celery import Celery
from django.conf import settings

from tests.support.browser import CHROMIUM
from tests.support.processes import BASE_DIR, BIN_DIR, ManagedProcess, wait_until

HOSTNAME = socket.gethostname()


@pytest.fixture(scope="session")
def database_url(django_db_setup, django_db_blocker) -> str:
    """A DATABASE_URL for the test database pytest-django created, for subprocesses."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    credentials = quote(db["USER"] or "") + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    return f"postgres://{credentials}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture(scope="session")
def process_env(database_url: str) -> dict[str, str]:
    """The environment of every platform process a test starts."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=database_url,
        REDIS_URL=settings.REDIS_URL,
        PATH=os.pathsep.join([str(BIN_DIR), os.environ.get("PATH", "")]),
        LOG_LEVEL="INFO",
    )
    return env


@pytest.fixture(autouse=True)
def fresh_pauses_snapshot() -> Iterator[None]:
    """Each test reads the pauses anew: a snapshot kept from another test's (rolled back) pause
    would hold this test's jobs (tasks.platform.engine.flow keeps one per process)."""
    from tasks.platform.engine import flow

    flow.forget_pauses()
    yield
    flow.forget_pauses()


@pytest.fixture
def broker() -> redis.Redis:
    """The test Redis, emptied of messages (queue bindings are kept: producers cache them)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    stale = [key for key in client.scan_iter() if not key.startswith(b"_kombu.binding")]
    if stale:
        client.delete(*stale)
    return client


def message_keys(broker: redis.Redis) -> list[bytes]:
    """The broker's message keys: not its queue bindings, nor the platform's own keys (rate
    windows, metric counts, heartbeats: ``platform:*``)."""
    return [key for key in broker.scan_iter() if not key.startswith((b"_kombu.binding", b"platform:"))]


def worker_argv(queue: str, node: str, concurrency: int = 1, pool: str = "prefork") -> list[str]:
    return [
        str(BIN_DIR / "celery"), "-A", "project", "worker", "-Q", queue, "-n", node, "--pool", pool,
        "--concurrency", str(concurrency), "--loglevel", "INFO", "--without-mingle", "--without-gossip",
    ]  # fmt: skip


def wait_for_worker(node: str, broker_url: str, timeout: float = 30) -> None:
    # An app of its own: control replies are read on the app's default connection, so pinging a
    # worker on another Redis needs an app whose broker is that Redis.
    probe = Celery("probe", set_as_current=False)
    probe.config_from_object("celeryconfig")
    probe.conf.broker_url = broker_url
    try:
        wait_until(lambda: probe.control.ping(destination=[node], timeout=0.5), timeout=timeout, what=f"worker {node}")
    finally:
        probe.close()


@pytest.fixture
def start_worker(process_env: dict[str, str], broker: redis.Redis) -> Iterator[Callable[..., ManagedProcess]]:
    """Start a real worker process for a queue; every one is stopped at teardown."""
    started: list[ManagedProcess] = []

    def start(
        queue: str, *, name: str | None = None, concurrency: int = 1, pool: str = "prefork", env: dict | None = None
    ) -> ManagedProcess:
        node = f"{name or queue + '-test'}@{HOSTNAME}"
        environment = {**process_env, **(env or {})}
        process = ManagedProcess(worker_argv(queue, node, concurrency, pool), environment, node).start()
        started.append(process)
        wait_for_worker(node, environment["REDIS_URL"])
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def wait_for_job() -> Callable:
    from tasks.models import Job

    def wait(job_id, *states: str, timeout: float = 30) -> Job:
        return wait_until(
            lambda: Job.objects.filter(pk=job_id, state__in=states).first(),
            timeout=timeout,
            what=f"job {job_id} to reach {states}",
        )

    return wait


@pytest.fixture(scope="session")
def static_files(process_env: dict[str, str]) -> None:
    """Collected static files, as `make run` has them (admin and login pages need the manifest)."""
    argv = [str(BIN_DIR / "python"), "manage.py", "collectstatic", "--noinput", "--verbosity", "0"]
    subprocess.run(argv, cwd=BASE_DIR, env=process_env, check=True, timeout=120)


def launch_web(env: dict[str, str]) -> tuple[ManagedProcess, str]:
    """The ASGI web process (as the Procfile runs it) on a free port, once it answers; returns it
    and its base URL. The caller stops it."""
    from tests.support.processes import free_port

    port = free_port()
    argv = [str(BIN_DIR / "uvicorn"), "project.asgi:application", "--port", str(port)]
    process = ManagedProcess(argv, env, f"web:{port}").start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{base}/healthz"), timeout=30, what=f"web on port {port}")
    except AssertionError:
        process.stop()
        raise
    return process, base


@pytest.fixture
def start_web(process_env: dict[str, str], static_files: None) -> Iterator[Callable[..., tuple[ManagedProcess, str]]]:
    """Start the ASGI web process (as the Procfile does) on a free port; returns it and its base URL."""
    started: list[ManagedProcess] = []

    def start(env: dict | None = None) -> tuple[ManagedProcess, str]:
        process, base = launch_web({**process_env, **(env or {})})
        started.append(process)
        return process, base

    yield start
    for process in started:
        process.stop()


def _answers(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.fixture
def start_flower(process_env, broker, tmp_path) -> Iterator[Callable[..., tuple[ManagedProcess, str]]]:
    """Start a real Flower process with the platform's extension; ``(process, base URL)``."""
    from tests.support.flower import launch_flower

    started: list[ManagedProcess] = []

    def start(env: dict | None = None) -> tuple[ManagedProcess, str]:
        process, base = launch_flower(process_env, tmp_path, env)
        started.append(process)
        return process, base

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_relay(process_env: dict[str, str]) -> Iterator[Callable[..., ManagedProcess]]:
    """Start the relay process (`manage.py relay_jobs`, as the Procfile does)."""
    started: list[ManagedProcess] = []

    def start(*args: str, env: dict | None = None) -> ManagedProcess:
        argv = [str(BIN_DIR / "python"), "manage.py", "relay_jobs", *args]
        process = ManagedProcess(argv, {**process_env, **(env or {})}, "relay").start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def own_redis() -> Iterator:
    """A Redis of the test's own, on a free port, that the test may stop and start again."""
    from tests.support.processes import start_bundled_redis

    server = start_bundled_redis()
    yield server
    server.process.stop()


def bearer(user) -> dict[str, str]:
    """Django test-client headers carrying a fresh API token of ``user``."""
    from tasks.models import ApiToken

    _, token = ApiToken.issue(user)
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def create_operator(username: str, **fields):
    """An operator (tasks.platform.permissions): a staff user who may add jobs, so may enqueue the ``ops.*``
    tasks on any queue and priority, and who sees only their own jobs (no view permission)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    operator = get_user_model().objects.create_user(username, is_staff=True, **fields)
    operator.user_permissions.add(Permission.objects.get(content_type__app_label="tasks", codename="add_job"))
    return operator


def grant(user, *codenames: str):
    """``user`` with these permissions of the tasks app added (e.g. "view_job"), fetched afresh so
    that Django's permission cache sees them."""
    from django.contrib.auth.models import Permission

    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="tasks", codename__in=codenames))
    return type(user).objects.get(pk=user.pk)


@pytest.fixture
def user():
    """The API client of most tests: an operator, so it may enqueue the ops.* tasks it drives."""
    return create_operator("dev", password="unused-pass-123")


@pytest.fixture
def auth(user) -> dict[str, str]:
    return bearer(user)


@pytest.fixture
def smtp_server() -> Iterator:
    """A real SMTP server on a free port; ``.env`` points a worker at it, ``.inbox`` has the mail."""
    from tests.support.smtp import start_smtp_server

    server, controller = start_smtp_server()
    yield server
    controller.stop()


@pytest.fixture(scope="module")
def chromium() -> str:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium. Install it with `make chromium` "
            "(as root), or: sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium",
            pytrace=False,
        )
    return str(CHROMIUM)
